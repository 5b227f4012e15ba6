# cython: language_level=3
"""What a mailbox holds: a topic, a payload and the sender's PID."""

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


cdef Message new_message(str topic, object payload, Pid sender):
    cdef Message m = Message.__new__(Message)
    m.topic = topic
    m.payload = payload
    m.sender = sender
    return m
