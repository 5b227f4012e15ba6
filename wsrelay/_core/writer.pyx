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
"""

cimport cython
import logging

from .stats cimport Counters, LimitedLog

cdef enum:
    # Connections written per flush callback.
    FLUSH_SLICE = 256
    # Written entries are cut from the front of the dirty list once there are
    # this many and they are at least half of it.
    COMPACT_AFTER = 4096

cdef LimitedLog _log = LimitedLog("wsrelay.relay")


cdef class Writer:
    """The flush scheduler of one gateway service."""

    def __init__(self, loop, Counters counters not None, Py_ssize_t limit):
        if limit < 1:
            raise ValueError("the write buffer limit must be at least 1")
        self.loop = loop
        self.counters = counters
        self.limit = limit
        self.dirty = []
        self.flush_pos = 0
        self.scheduled = False

    cdef int schedule(self, Output output) except -1:
        self.dirty.append(output)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _flush(self):
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


cdef class Output(Process):
    """A process that writes to a client socket (a relay connection)."""

    cdef bint offer(self, object frame, Py_ssize_t size) except -1:
        """Queue a frame (from frames.encode_send) unless the connection is
        closing or a slow consumer, in which case it is counted as dropped;
        whether it was queued."""
        if self.state >= ConnState.CLOSING or self.transport is None:
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
        self.unsent = self.transport.underlying_transport.get_write_buffer_size()
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
        transport = self.transport
        if transport is not None and not transport.is_close_frame_sent and not transport.is_disconnected:
            try:
                if len(frames) == 1:
                    transport.underlying_transport.write(frames[0])
                else:
                    transport.underlying_transport.writelines(frames)
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
