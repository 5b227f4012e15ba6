from picows.picows cimport WSListener, WSTransport, WSFrame

from .frames cimport FrameReader, Problem
from .mailbox cimport RoomWaiter
from .runtime cimport Process, Node
from .writer cimport ConnState, Output, Writer


cdef class RelayService:
    cdef readonly Node node
    cdef readonly str host
    cdef readonly Writer writer
    cdef readonly Py_ssize_t max_message_size
    # WSRELAY_COMPRESSION: permessage-deflate offers are accepted.
    cdef readonly bint compression
    cdef readonly double close_timeout
    cdef readonly double stall_timeout
    cdef readonly double ping_interval
    cdef readonly double ping_timeout
    cdef readonly set connections
    cdef object loop
    cdef object _empty_waiter
    cdef object _sweep_handle
    cdef double _tick
    cdef int forget(self, Connection conn) except -1


cdef class Backpressure(RoomWaiter):
    cdef Connection conn
    # Client frames read while paused, not yet acted on: records of a flags
    # byte (FIN, RSV, opcode), a 4-byte length and the payload.
    cdef bytearray held
    cdef Py_ssize_t held_pos
    # PAUSED only: the target is still owed its ws.join.
    cdef bint join_due
    # A _resume is queued (set in PAUSED; it does nothing once out of PAUSED).
    cdef bint resume_scheduled
    # When the sweep last saw the target take a message, and how many it
    # had taken then.
    cdef double since
    cdef unsigned long long mark

    cdef int hold(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size) except -1
    cdef Py_ssize_t held_bytes(self) noexcept
    cdef Py_ssize_t drop_held(self) except -1
    cdef int withdraw(self) except -1


cdef class Connection(Output):
    cdef RelayService service
    cdef Process target
    cdef str message_topic
    cdef object metadata
    cdef double heartbeat_interval
    cdef object heartbeat_handle
    cdef double started_at
    cdef Py_ssize_t message_count
    # Made on the first data frame: an idle connection has none.
    cdef FrameReader reader
    # Made on the first pause.
    cdef Backpressure bp
    # The flags beside the state, and the states they mean something in, are
    # listed at the top of relay.pyx.
    # The target has had ws.join (and so will get ws.leave).
    cdef bint joined
    # The transport reads (what pause_reading/resume_reading last said).
    cdef bint reading
    cdef object close_timer
    # Set once, as closing begins: the reason of ws.leave and of the EXIT.
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
    # The handler's grant ({name: info}) until the connection opens, then
    # the channels it is subscribed to (channels.pyx); None when it has none.
    cdef dict channels
    # Until the connection opens: the positions its client asked to recover
    # from ({name: (epoch, offset)}, only channels granted), or None.
    cdef dict recover
    # the user its handler authenticated (X-WS-Relay "user"), or None.
    cdef readonly str user
    # The target is on another node: messages sent to it and not yet
    # acknowledged, and all acknowledged so far.
    cdef bint remote_target
    cdef Py_ssize_t unacked
    cdef unsigned long long credited

    cdef int _enter(self, ConnState to) except -1
    cdef int connected(self, WSTransport transport) except -1
    cdef int disconnected(self) except -1
    cdef int on_frame(self, WSFrame frame) except -1
    cdef int handle(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size) except -1
    cdef int relay(self, object data, Py_ssize_t nbytes) except -1
    cdef int close_frame(self, const char* data, Py_ssize_t size) except -1
    cdef int pause(self) except -1
    cdef int set_reading(self, bint on) except -1
    cdef int replay(self) except -1
    cdef int begin_close(self, int code, bytes text, str reason) except -1
    cdef int send_close(self, int code, bytes text) except -1
    cdef int fail(self, Problem problem) except -1
    cdef int wire_failed(self) except -1
    cdef int end_input(self) except -1
    cdef int sweep(self, double now) except -1
    cdef bint push_join(self) except -1
    cdef bint deliver_join(self) except -1
    cdef int leave(self, str reason, object code) except -1
    cdef int transfer(self, Process new_target, str topic, object metadata) except -1
    cdef bint control(self, object payload) except -1
    cdef int watch(self, Process target) except -1
    cdef int unwatch(self) except -1
    cdef int stop_heartbeat(self) except -1
    cdef int schedule_heartbeat(self) except -1
    cdef int count_dropped(self, Py_ssize_t count, str reason) except -1
    cdef bint target_full(self) except -1
    cdef bint send_remote(self, str topic, dict payload, bint counted) except -1
    cdef unsigned long long progress(self) noexcept


cdef class RelayListener(WSListener):
    cdef Connection conn
