# cython: language_level=3
"""Where wsrelay relies on more of picows than its public API promises.

The C-level reliances (a transport's private write buffer, its readonly
upgrade request and response, frames written beside picows' own) are inline
functions in picows_private.pxd; this module holds the one made from Python:
picows' server protocol, built the way ``ws_create_server`` builds it, so
that the handshake guard (handshake.pyx) can hand it a socket whose request
head it has already read. Checked against the picows CHECKED_AGAINST names;
tests/test_picows_private.py fails, naming the reliance, when an upgrade
breaks one.
"""

import functools

from picows import WSAutoPingStrategy
from picows.picows import WSProtocol

from picows.picows cimport WSTransport

# The picows release every reliance here was last checked against.
CHECKED_AGAINST = "2.3.1"


def server_protocol_factory(listener_factory, logger, handshake_timeout, max_frame_size, read_buffer_size):
    """A factory of server-side picows protocols (no argument), each
    answering its upgrade request with ``listener_factory``. The public
    ``ws_create_server`` makes the listening socket itself, which would
    leave no room for the handshake guard."""
    return functools.partial(ServerProtocols(logger, handshake_timeout, max_frame_size, read_buffer_size),
                             listener_factory)


cdef class ServerProtocols:
    """Makes the server-side picows protocols of one service:
    ``protocols(listener_factory)``, a protocol that answers its upgrade
    request with ``listener_factory``, built the way ``ws_create_server``
    builds it.

    ``WSProtocol`` is not public and its constructor takes its 15 arguments
    by position (in CHECKED_AGAINST: host_port, ws_path, is_client_side,
    ws_listener_factory, logger, disconnect_on_exception,
    websocket_handshake_timeout, enable_auto_ping, auto_ping_idle_timeout,
    auto_ping_reply_timeout, auto_ping_strategy, enable_auto_pong,
    max_frame_size, extra_headers, read_buffer_init_size): they are passed
    here, with no partial of them built and called for each protocol."""

    cdef object logger
    cdef object handshake_timeout
    cdef object max_frame_size
    cdef object read_buffer_size

    def __init__(self, logger, handshake_timeout, max_frame_size, read_buffer_size):
        self.logger = logger
        self.handshake_timeout = handshake_timeout
        self.max_frame_size = max_frame_size
        self.read_buffer_size = read_buffer_size

    def __call__(self, listener_factory):
        return WSProtocol(
            None, None, False,  # host:port and path (a client's), is_client_side
            listener_factory,
            self.logger,
            True,  # disconnect_on_exception
            self.handshake_timeout,
            False, 20, 20, _PING_WHEN_IDLE,  # auto-ping off: the relay's sweep pings
            False,  # auto-pong off: the relay answers pings itself, after its RSV check
            self.max_frame_size,
            None,  # extra headers (a client's)
            self.read_buffer_size,
        )


cdef object _PING_WHEN_IDLE = WSAutoPingStrategy.PING_WHEN_IDLE


# -- test hooks: the inline functions of picows_private.pxd, seen from Python -------


def _release_upgrade(WSTransport transport not None, Py_ssize_t write_buffer):
    release_upgrade(transport, write_buffer)


def _write_buffer_capacity(WSTransport transport not None):
    """The capacity of the transport's private write buffer, in bytes."""
    return transport._write_buffer.capacity
