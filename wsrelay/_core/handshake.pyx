# cython: language_level=3
"""The first bytes of every connection: its HTTP request, read under bounds
before picows sees it.

A HandshakeGuard is the protocol of every accepted socket until the request
head (request line, headers, blank line) is complete: then it hands the
socket and the bytes read so far to a picows protocol (made by
picows_private.server_protocol_factory), which upgrades or answers as usual. What the guard adds (SPEC §6):

- a head over ``max_head`` bytes is answered ``431 Request Header Fields Too
  Large`` (picows alone would drop the socket without a word);
- a client that has not sent its whole head within the handshake timeout is
  dropped, so half-open handshakes hold a socket and a small buffer for at
  most that long, and cost established connections nothing;
- every refusal is counted, by reason, for /metrics;
- the socket's receive buffer is set (WSRELAY_SOCKET_RECEIVE_BUFFER), which
  bounds the read buffer picows grows for a client that floods;
- a GET of one of ``routes`` (a path) is answered here, by a coroutine, for
  an answer that has to wait for something (the machine's /metrics, gathered
  from every worker over the bus): picows' request handling cannot wait.
"""

import asyncio
import logging
from http import HTTPStatus
from socket import SOL_SOCKET, SO_RCVBUF

cdef enum:
    FIRST_BUFFER = 2048

# Seconds a refused client may go on sending before its socket is dropped.
cdef double LINGER = 2.0

cdef bytes _431_BODY = b"431 Request Header Fields Too Large: the request line and headers exceed %d bytes\n"


cdef class Handshakes:
    """The handshakes of one service: their bounds, and their counts."""

    def __init__(self, loop, make_protocol, *, double timeout, Py_ssize_t max_head=16384,
                 Py_ssize_t receive_buffer=0, dict routes=None):
        if timeout <= 0:
            raise ValueError("the handshake timeout must be greater than 0")
        if max_head < 1024:
            raise ValueError("the request head limit must be at least 1024 bytes")
        self.loop = loop
        self.make_protocol = make_protocol
        self.timeout = timeout
        self.max_head = max_head
        self.receive_buffer = receive_buffer
        self.routes = routes or {}
        self.pending = 0
        self.failures = {}

    def protocol(self):
        """A protocol for a newly accepted socket (loop.create_server's factory)."""
        cdef HandshakeGuard guard = HandshakeGuard.__new__(HandshakeGuard)
        guard.owner = self
        return guard

    def failed(self, str reason not None):
        """Count a refused handshake (the middleware's refusals come here too)."""
        self.count_failure(reason)

    cdef int count_failure(self, str reason) except -1:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        return 0


cdef class _GuardBase:
    pass


cdef class HandshakeGuard(_GuardBase, asyncio.BufferedProtocol):
    cdef Handshakes owner
    cdef object transport
    cdef bytearray buffer
    cdef Py_ssize_t used
    cdef object timer
    cdef bint active
    # Answered with an error: what the client still sends is read and
    # dropped until it closes (a lingering close), so that the answer is not
    # lost to the reset that closing on unread bytes would send.
    cdef bint refused

    def connection_made(self, transport):
        if self.owner.receive_buffer:
            # The kernel's receive buffer caps what one read hands picows, so
            # its read buffer (which doubles whenever a read fills it) stays
            # near twice this, or twice the largest frame, for a client that
            # floods as for one that does not.
            transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_RCVBUF, self.owner.receive_buffer)
        self.transport = transport
        self.buffer = bytearray(FIRST_BUFFER)
        self.used = 0
        self.active = True
        self.owner.pending += 1
        self.timer = self.owner.loop.call_later(self.owner.timeout, self._timeout)

    def get_buffer(self, Py_ssize_t sizehint):
        cdef Py_ssize_t size = len(self.buffer)
        if self.refused:
            return memoryview(self.buffer)
        if self.used == size:
            self.buffer.extend(bytes(min(size, self.owner.max_head - size)))
        return memoryview(self.buffer)[self.used:]

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef Py_ssize_t start = self.used - 3 if self.used > 3 else 0
        if self.refused:
            return
        self.used += nbytes
        if self.buffer.find(b"\r\n\r\n", start, self.used) >= 0:
            self._upgrade()
        elif self.used >= self.owner.max_head:
            self._refuse()

    def eof_received(self):
        # The client closed its side before finishing its request: close ours.
        return False

    def connection_lost(self, exc):
        self._finish()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    cdef _finish(self):
        if self.active:
            self.active = False
            self.owner.pending -= 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _timeout(self):
        self.timer = None
        if self.refused:
            self.transport.abort()
        elif self.active:
            self.owner.count_failure("handshake_timeout")
            self._finish()
            self.transport.abort()

    async def _answer(self, route, str query):
        """The response of an async route: (status, content type, body)."""
        transport = self.transport
        try:
            status, content_type, body = await route(query)
        except Exception as exc:
            logging.getLogger("wsrelay.gateway").exception("async route failed")
            status, content_type, body = 500, "text/plain; charset=utf-8", f"500 Internal Server Error: {exc}\n".encode()
        if transport.is_closing():
            return
        transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                        % (status, HTTPStatus(status).phrase.encode(), content_type.encode(), len(body)) + body)
        transport.close()
        self.transport = None

    cdef _refuse(self):
        self.owner.count_failure("headers_too_large")
        self._finish()
        body = _431_BODY % self.owner.max_head
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        self.transport.write_eof()
        self.refused = True
        self.timer = self.owner.loop.call_later(LINGER, self._timeout)

    cdef _upgrade(self):
        cdef Py_ssize_t fed = 0, n
        self._finish()
        transport = self.transport
        if self.owner.routes:
            line = bytes(self.buffer[:self.buffer.find(b"\r\n")]).split(b" ")
            if len(line) == 3 and line[0] == b"GET":
                path, _, query = line[1].partition(b"?")
                route = self.owner.routes.get(path)
                if route is not None:
                    self.refused = True  # nothing more is read from it
                    self.owner.loop.create_task(self._answer(route, query.decode("latin-1")))
                    return
        data = memoryview(self.buffer)[:self.used]
        protocol = self.owner.make_protocol(transport)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        while fed < self.used and not transport.is_closing():
            space = protocol.get_buffer(-1)
            n = min(len(space), self.used - fed)
            space[:n] = data[fed:fed + n]
            fed += n
            protocol.buffer_updated(n)
        data.release()
        self.buffer = None
        self.transport = None
