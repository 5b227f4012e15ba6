# cython: language_level=3
"""The errors the core raises on purpose. wsrelay.errors re-exports them
beside the Python layer's own, so users import every one from one place."""


class WsrelayError(Exception):
    """Base class of wsrelay's own errors."""


class MailboxFull(WsrelayError):
    """The destination's mailbox is at capacity; the message was not queued.

    Raised by ``process.send`` so the sender can back off, retry or shed load:
    a bounded mailbox never drops an ordinary message silently.
    """

    def __init__(self, pid, capacity):
        super().__init__(f"mailbox of {pid} is full ({capacity} messages); message not queued")
        self.pid = pid
        self.capacity = capacity


class NoTransport(LookupError, WsrelayError):
    """A PID names another node and this node has joined no cluster."""

    def __init__(self, pid):
        super().__init__(
            f"{pid} belongs to node {getattr(pid, 'node', None)!r}, and this node is in no cluster "
            f"(see wsrelay.join_cluster)"
        )
        self.pid = pid


class RelaySettingsError(ValueError, WsrelayError):
    """Relay settings (an ``X-WS-Relay`` header or a ``ws.control``) that
    cannot be used; the message names the field."""


class RelayHeaderError(RelaySettingsError):
    """The ``X-WS-Relay`` header set by a handler cannot be used."""


class WrongThread(RuntimeError, WsrelayError):
    """The runtime was called from a thread other than the one running the
    gateway's event loop."""


class MessageTooBig(WsrelayError):
    """Inflating a compressed message would exceed its size limit (close code 1009)."""


class CorruptMessage(WsrelayError):
    """A compressed payload is not a valid DEFLATE stream."""


class CallError(WsrelayError):
    """A ``process.call`` that ended without a reply: the callee ended first
    (``reason`` is its exit reason, ``error`` the exception it raised, if
    any), was not alive (``noproc``), or its node was lost (``noconnection``).
    """

    def __init__(self, pid, reason, error=None):
        super().__init__(f"call to {pid} got no reply: {reason}")
        self.pid = pid
        self.reason = reason
        self.error = error
