# cython: language_level=3
"""The output side of connections: frames queued per connection and written
once per loop iteration, and the bytes each connection has not yet sent.

Write coalescing: a connection's frames are queued during a loop iteration
and written with one writev() after the iteration's callbacks, so a broadcast
of k messages to n subscribers costs n system calls, not k x n. A fan-out to a
large room is written in slices, with the loop polling for I/O between them,
so the loop never stalls for a whole fan-out.

Output accounting: what a connection has queued here and what its transport
still buffers count together toward WSRELAY_WRITE_BUFFER_LIMIT. A frame to be
queued while more than the limit is unsent makes the connection a slow
consumer (it is closed with 1008): one message larger than the limit alone
goes out, a client that does not read what it was sent before does not.
The bytes counted are those of the frames' payloads as written: for a
compressed message, its compressed size.

Compression (permessage-deflate): a ``ws.send`` to a connection that
negotiated it is compressed when the message is at least
WSRELAY_COMPRESSION_MIN_SIZE bytes. A fan-out (FanOut) builds the frame once
uncompressed for the members that did not negotiate it, and compresses it
once (per server window size agreed, normally one) for those that did, each
only when a member first needs it.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
import logging

from .deflate cimport DeflateParams
from .frames cimport encode_data_frame, encode_deflated_frame, encode_send, encode_send_deflated, send_data
from .picows_private cimport wire
from .stats cimport Counters, LimitedLog

cdef enum:
    # Connections written per flush callback.
    FLUSH_SLICE = 256
    # Written entries are cut from the front of the dirty list once there are
    # this many and they are at least half of it.
    COMPACT_AFTER = 4096

cdef LimitedLog _log = LimitedLog("wsrelay.relay")

# While held (hold_flushes), the writers whose flush was scheduled, in order.
cdef bint _holding = False
cdef list _held = []


cdef int hold_flushes() except -1:
    """Until release_flushes, a writer's flush is not a loop callback: the
    server API publishes the requests of one read, then writes the frames
    they queued (still one writev per connection for all of them) before
    its answers, without the loop iteration a callback costs."""
    global _holding
    _holding = True
    return 0


cdef int release_flushes() except -1:
    """Run the flushes scheduled since hold_flushes (each writes its first
    slice now, and schedules the rest as usual)."""
    global _holding
    cdef Py_ssize_t i
    _holding = False
    if not _held:
        return 0
    held = _held[:]
    _held.clear()
    for i in range(len(held)):
        try:
            (<Writer>held[i]).flush_slice()
        except BaseException:
            # Those after it still flush, in a callback as they would have.
            for writer in held[i + 1:]:
                (<Writer>writer).loop.call_soon((<Writer>writer)._flush)
            raise
    return 0


cdef class Writer:
    """The flush scheduler of one gateway service."""

    def __init__(self, loop, Counters counters not None, Py_ssize_t limit, Py_ssize_t compression_min_size=128):
        if limit < 1:
            raise ValueError("the write buffer limit must be at least 1")
        if compression_min_size < 0:
            raise ValueError("the compression threshold must not be negative")
        self.loop = loop
        self.counters = counters
        self.limit = limit
        self.compression_min_size = compression_min_size
        self.dirty = []
        self.flush_pos = 0
        self.scheduled = False

    cdef int schedule(self, Output output) except -1:
        self.dirty.append(output)
        if not self.scheduled:
            self.scheduled = True
            if _holding:
                _held.append(self)
            else:
                self.loop.call_soon(self._flush)
        return 0

    def _flush(self):
        """The loop's callback: flush_slice."""
        self.flush_slice()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int flush_slice(self) except -1:
        """Write up to FLUSH_SLICE connections; the rest wait for the next
        loop iteration, behind nothing that was queued later."""
        cdef Output output
        cdef list dirty = self.dirty
        cdef Py_ssize_t pos = self.flush_pos
        cdef Py_ssize_t end = len(dirty)
        if end - pos > FLUSH_SLICE:
            end = pos + FLUSH_SLICE
        try:
            while pos < end:
                output = <Output>dirty[pos]
                pos += 1
                output.flush()
        finally:
            if pos < len(dirty):
                if pos >= COMPACT_AFTER and pos * 2 >= len(dirty):
                    del dirty[:pos]
                    pos = 0
                self.flush_pos = pos
                self.loop.call_soon(self._flush)
            else:
                dirty.clear()
                self.flush_pos = 0
                self.scheduled = False
        return 0


cdef class Output(Process):
    """A process that writes to a client socket (a relay connection)."""

    @property
    def deflate_params(self):
        """The permessage-deflate parameters agreed in the upgrade, or None."""
        return self.deflate

    @deflate_params.setter
    def deflate_params(self, DeflateParams params):
        # Both directions change meaning with it: only before the first frame.
        if self.state != ConnState.PREPARED:
            raise RuntimeError("permessage-deflate is agreed in the upgrade, before the connection opens")
        self.deflate = params

    cdef bint send(self, object payload) except -1:
        """Queue a ``ws.send`` payload's frame (compressed when agreed and
        the message is large enough); whether it was queued."""
        cdef Py_ssize_t size = 0
        if self.deflate is None:
            return self.offer(encode_send(payload, &size), size)
        return self.offer(encode_send_deflated(payload, self.deflate.server_max_window_bits,
                                               self.writer.compression_min_size, &size), size)

    cdef bint offer(self, object frame, Py_ssize_t size) except -1:
        """Queue a frame (from frames.encode_send) unless the connection is
        closing or a slow consumer, in which case it is counted as dropped;
        whether it was queued."""
        if not relaying(self.state):
            self.writer.counters.frames_dropped_closing += 1
            return False
        if self.unsent + self.outbox_bytes > self.writer.limit and self.backlogged():
            self.writer.counters.frames_dropped_slow_consumer += 1
            self.on_slow_consumer()
            return False
        self.queue(frame, size)
        return True

    cdef bint backlogged(self) except -1:
        """Whether more than the limit is unsent, asking the transport."""
        self.unsent = wire(self.transport).get_write_buffer_size()
        return self.unsent + self.outbox_bytes > self.writer.limit

    cdef int queue(self, object frame, Py_ssize_t size) except -1:
        """Queue a frame for this loop iteration's flush, in order; nothing
        checked (control frames of the close handshake come this way too)."""
        self.outbox_bytes += size
        self.outbox_frames += 1
        if self.outbox is not None:
            if type(frame) is tuple:
                self.outbox.extend(<tuple>frame)
            else:
                self.outbox.append(frame)
            return 0
        self.outbox = list(<tuple>frame) if type(frame) is tuple else [frame]
        self.writer.schedule(self)
        return 0

    cdef int flush(self) except -1:
        """Write the queued frames, all in one writev()."""
        cdef list frames = self.outbox
        cdef Counters counters = self.writer.counters
        cdef Py_ssize_t nbytes = self.outbox_bytes
        cdef Py_ssize_t nframes = self.outbox_frames
        if frames is None:
            return 0
        self.outbox = None
        self.outbox_bytes = 0
        self.outbox_frames = 0
        cdef WSTransport transport = self.transport
        if transport is not None and not transport.is_close_frame_sent and not transport.is_disconnected:
            try:
                if len(frames) == 1:
                    wire(transport).write(frames[0])
                else:
                    wire(transport).writelines(frames)
            except Exception as exc:
                counters.frames_dropped_unwritten += nframes
                if _log.allow("write_failed"):
                    _log.write(logging.WARNING, f"{self.pid}: {nframes} queued frame(s) not written: {exc!r}")
                return 0
            counters.ws_messages_out += nframes
            counters.ws_bytes_out += nbytes
            self.unsent += nbytes
            return 0
        # The connection went away (or picows closed it) since they were queued.
        counters.frames_dropped_unwritten += nframes
        return 0

    cdef int on_slow_consumer(self) except -1:
        return 0


cdef class FanOut:
    """One ``ws.send`` payload on its way to many connections: its frame
    built once uncompressed and once compressed per server window size,
    each when a member first needs it (no compression when no member agreed
    to it)."""

    cdef bint offer_to(self, Output output) except -1:
        """Queue the frame that suits ``output``; whether it was queued."""
        cdef DeflateParams params = output.deflate
        cdef Py_ssize_t size = 0
        if params is None or self.size < output.writer.compression_min_size:
            frame = self.plain_frame(&size)
        else:
            frame = self._deflated_for(params.server_max_window_bits, &size)
        return output.offer(frame, size)

    cdef object plain_frame(self, Py_ssize_t* size):
        """The uncompressed frame, built on first use."""
        if self.plain is None:
            self.plain = encode_data_frame(self.opcode, self.owner, self.data, self.size, &self.plain_size)
        size[0] = self.plain_size
        return self.plain

    cdef object _deflated_for(self, int window_bits, Py_ssize_t* size):
        if self.deflated is None:
            self.deflated = encode_deflated_frame(self.opcode, self.data, self.size, window_bits,
                                                  &self.deflated_size)
            self.deflated_bits = window_bits
        if window_bits == self.deflated_bits:
            size[0] = self.deflated_size
            return self.deflated
        # A client that asked for a smaller window: rare, so a dict.
        if self.other_windows is None:
            self.other_windows = {}
        found = self.other_windows.get(window_bits)
        if found is None:
            frame = encode_deflated_frame(self.opcode, self.data, self.size, window_bits, size)
            self.other_windows[window_bits] = (frame, size[0])
            return frame
        size[0] = (<tuple>found)[1]
        return (<tuple>found)[0]


cdef FanOut fan_out_text(bytes utf8):
    """A FanOut for a text message already encoded (valid UTF-8, as
    orjson writes it): the same frame as ``fan_out`` of its str, without
    the payload's dict or the str."""
    cdef FanOut out = FanOut.__new__(FanOut)
    out.owner = utf8
    out.opcode = 0x1  # OP_TEXT
    out.data = PyBytes_AS_STRING(utf8)
    out.size = PyBytes_GET_SIZE(utf8)
    return out


cdef FanOut fan_out(object payload):
    """A FanOut for a ``ws.send`` payload; ValueError when it is malformed."""
    cdef FanOut out = FanOut.__new__(FanOut)
    out.owner = send_data(payload, &out.opcode, &out.data, &out.size)
    return out
