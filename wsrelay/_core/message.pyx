# cython: language_level=3
"""What a mailbox holds: a topic, a payload and the sender's PID (and, for
a call's request, the address its reply goes to)."""

cimport cython

from .pid cimport Pid


@cython.freelist(1024)
cdef class Message:
    def __init__(self, str topic not None, object payload=None, Pid sender=None):
        self.topic = topic
        self.payload = payload
        self.sender = sender

    def __repr__(self):
        return f"Message(topic={self.topic!r}, payload={self.payload!r}, sender={self.sender!s})"

    def reply(self, value):
        """Answer the call this message is (``process.call``) with ``value``:
        True when it went to a caller still waiting (or to its node); False,
        counted, when that call had already ended (a timeout, a second reply).
        ValueError when the message is not a call."""
        if self.reply_to is None:
            raise ValueError(f"msg.reply(): message {self.topic!r} from {self.sender} is not a call "
                             f"(it was sent with process.send, not process.call): there is nobody to reply to")
        if _replier == NULL:
            raise RuntimeError("msg.reply(): the process runtime (wsrelay._core.runtime) is not loaded")
        return _replier(self, value)


cdef Message new_message(str topic, object payload, Pid sender):
    cdef Message m = Message.__new__(Message)
    m.topic = topic
    m.payload = payload
    m.sender = sender
    return m


cdef Message new_request(str topic, object payload, Pid sender, Pid reply_to):
    cdef Message m = new_message(topic, payload, sender)
    m.reply_to = reply_to
    return m


cdef Replier _replier = NULL


cdef int set_replier(Replier replier) except -1:
    global _replier
    _replier = replier
    return 0
