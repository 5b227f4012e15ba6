from picows.picows cimport WSListener, WSTransport, WSFrame, WSMsgType

from .pid cimport Pid
from .message cimport Message
from .runtime cimport Process, Node


cdef class RelayOptions:
    """What every connection of one gateway service shares."""
    cdef readonly Node node
    cdef readonly str host
    cdef readonly Py_ssize_t max_message_size
    cdef readonly Py_ssize_t write_buffer_limit
    cdef readonly double close_timeout
    cdef readonly set connections
    cdef object loop
    cdef object _empty_waiter
    # Connections with frames queued, in the order they are to be written;
    # dirty[flush_pos:] are still to be written.
    cdef list dirty
    cdef Py_ssize_t flush_pos
    cdef bint flush_scheduled


cdef class Connection(Process):
    cdef RelayOptions options
    cdef WSTransport transport
    cdef Process target
    cdef str message_topic
    cdef object metadata
    cdef double heartbeat_interval
    cdef object heartbeat_handle
    cdef bint heartbeat_pending
    cdef double started_at
    cdef Py_ssize_t message_count
    # Fragment reassembly: the opcode of the message in progress (0: none),
    # its decoded pieces, and up to 3 bytes of a UTF-8 sequence cut by a frame.
    cdef int frag_opcode
    cdef list frag_parts
    cdef bytes frag_tail
    cdef Py_ssize_t frag_size
    # Messages for the target that found its mailbox full, in order.
    cdef object pending
    cdef bint paused
    # The transport's unsent bytes are over the write-buffer limit.
    cdef bint write_backlog
    cdef bint closing
    # No more client frames are acted on: a close frame arrived, or the
    # connection was failed (frames picows already parsed are dropped).
    cdef bint input_closed
    cdef object close_timer
    cdef str leave_reason
    cdef object leave_code
    # Idle ping bookkeeping: frames seen, and what the last sweep saw.
    cdef Py_ssize_t rx_seq
    cdef Py_ssize_t seen_seq
    cdef double idle_since
    cdef double ping_sent_at
    cdef bint awaiting_pong
    # The member sets of the Groups this connection belongs to.
    cdef list groups
    # Buffers queued for this loop iteration's flush (a large frame is two),
    # the payload bytes and the frames they make.
    cdef list outbox
    cdef Py_ssize_t outbox_bytes
    cdef Py_ssize_t outbox_frames

    cdef int connected(self, WSTransport transport) except -1
    cdef int on_frame(self, WSFrame frame) except -1
    cdef int disconnected(self) except -1
    cdef int relay(self, object data, bint is_text, Py_ssize_t nbytes) except -1
    cdef bint backlogged(self) except -1
    cdef int push(self, Message msg) except -1
    cdef int pause(self) except -1
    cdef int flush_pending_force(self) except -1
    cdef int fragment(self, WSFrame frame) except -1
    cdef int stop_input(self) except -1
    cdef int wire_failed(self) except -1
    cdef int close_frame(self, WSFrame frame) except -1
    cdef int fail(self, int code, str text, str reason) except -1
    cdef int close(self, int code, bytes text, str reason) except -1
    cdef int send_close(self, object code, bytes text) except -1
    cdef int ws_send(self, object payload) except -1
    cdef bint offer(self, object frame, Py_ssize_t size) except -1
    cdef int queue(self, object frame, Py_ssize_t size) except -1
    cdef int flush(self) except -1
    cdef int ws_close(self, object payload) except -1
    cdef int ws_control(self, object payload) except -1
    cdef int watch(self, Process target) except -1
    cdef int unwatch(self) except -1
    cdef int join(self) except -1
    cdef int leave(self, str reason, object code) except -1
    cdef dict base_payload(self)
    cdef int stop_heartbeat(self) except -1
    cdef int schedule_heartbeat(self) except -1


cdef bytes encode_frame(int opcode, const char* data, Py_ssize_t size)
cdef object encode_send(object payload, Py_ssize_t* size)
cdef int check_send_payload(object payload) except -1


cdef class RelayListener(WSListener):
    cdef Connection conn
