from picows.picows cimport WSTransport

from .deflate cimport DeflateParams
from .runtime cimport Process
from .stats cimport Counters


# A connection's life, in the order it is lived: ``state >= CLOSING`` means
# closing has begun. relay.pyx holds the table of the moves between them and
# the one place that makes them (Connection._enter); nothing else assigns
# ``Output.state``. A new Output is PREPARED (0).
cdef enum ConnState:
    PREPARED = 0        # made by the middleware; the upgrade has not completed
    OPEN = 1            # relaying both ways
    PAUSED = 2          # its target is full: client frames are held, reading stopped
    CLOSING = 3         # our close frame is sent; the client's frames still count, until its close frame
    DISCONNECTING = 4   # nothing the client sends counts any more; the socket is being closed
    CLOSED = 5          # the socket is gone

cdef enum:
    STATE_COUNT = ConnState.CLOSED + 1


cdef inline bint relaying(ConnState state) noexcept:
    """OPEN or PAUSED: the connection relays both ways; no close has begun."""
    return state == ConnState.OPEN or state == ConnState.PAUSED


cdef class Writer:
    cdef object loop
    cdef Counters counters
    cdef readonly Py_ssize_t limit
    # Messages shorter than this go out uncompressed (WSRELAY_COMPRESSION_MIN_SIZE).
    cdef readonly Py_ssize_t compression_min_size
    # Outputs with frames queued, in the order they are to be written;
    # dirty[flush_pos:] are still to be written.
    cdef list dirty
    cdef Py_ssize_t flush_pos
    cdef bint scheduled
    cdef int schedule(self, Output output) except -1
    cdef int flush_slice(self) except -1


# The flushes scheduled between these two are run by release_flushes rather
# than in a callback of the next loop iteration (the server API's read path).
cdef int hold_flushes() except -1
cdef int release_flushes() except -1


cdef class Output(Process):
    cdef Writer writer
    cdef WSTransport transport
    cdef ConnState state
    # Buffers queued for this loop iteration's flush (a large frame is two),
    # their payload bytes and the frames they make.
    cdef list outbox
    cdef Py_ssize_t outbox_bytes
    cdef Py_ssize_t outbox_frames
    # The transport's unsent bytes when last asked, plus what was written
    # since: never less than the truth, so the limit is only ever checked
    # against the transport when this estimate says it may be crossed.
    cdef Py_ssize_t unsent
    # What permessage-deflate the client agreed to (shared by every
    # connection that agreed the same), or None: uncompressed.
    cdef DeflateParams deflate

    cdef bint send(self, object payload) except -1
    cdef bint offer(self, object frame, Py_ssize_t size) except -1
    cdef int queue(self, object frame, Py_ssize_t size) except -1
    cdef int flush(self) except -1
    cdef bint backlogged(self) except -1
    cdef int on_slow_consumer(self) except -1


cdef class FanOut:
    cdef int opcode
    cdef object owner
    cdef const char* data
    cdef Py_ssize_t size
    cdef object plain
    cdef Py_ssize_t plain_size
    cdef object deflated
    cdef int deflated_bits
    cdef Py_ssize_t deflated_size
    cdef dict other_windows
    cdef bint offer_to(self, Output output) except -1
    cdef object plain_frame(self, Py_ssize_t* size)
    cdef object _deflated_for(self, int window_bits, Py_ssize_t* size)


cdef FanOut fan_out(object payload)
cdef FanOut fan_out_text(bytes utf8)
