# cython: language_level=3
"""A WebSocket connection as a process: its life as one state machine.

``RelayListener`` is picows' listener; it hands every frame to its
``Connection``, the process that owns the client. Client messages are made by
the connection's FrameReader (frames.pyx) and pushed straight into the
target's mailbox; ``ws.send`` / ``ws.close`` / ``ws.control`` sent to the
connection are handled inside the sender's ``process.send``, with no task
switch. Output goes through the service's Writer (writer.pyx).

The states (writer.pxd, ConnState), in the order they are lived, and what
moves a connection between them (LEGAL below is the same table)::

    PREPARED --upgrade (connected)--> OPEN <--room (_resume)-- PAUSED
                                       |  --target full (pause)-->  |
                                       +-------------+--------------+
                                                     |
        begin_close (our close frame first):         |  end_input (nothing the client sends
        ws.close, target exit, stall, ping           |  counts any more): its close frame,
        timeout, slow consumer, shutdown,            |  a frame we fail on (fail), or picows
        terminate                                    |  failed the socket (wire_failed)
                  +----------------------------------+---------------------+
                  v                                                        v
               CLOSING --its close frame (the answer), a frame we fail on--> DISCONNECTING
                  |                                                        |
                  | socket gone (disconnected): the close or ping          | socket gone
                  | timeout, picows or the peer dropped it                 | (disconnected)
                  +-------------------------> CLOSED <---------------------+

``Connection._enter`` is the one place a state changes; it refuses (with
RuntimeError) any move not in the table. One place stops reading for
backpressure (``pause``), one resumes it (``_resume``), one starts closing
with our close frame first (``begin_close``), one stops acting on what the
client sends (``end_input``), and one ends the connection (``disconnected``;
``kill`` ends the process earlier, as a terminate must). When
``disconnected`` comes while still OPEN or PAUSED, the socket went without a
close handshake of ours: picows failed it or the peer vanished, and
``wire_failed`` moves it to DISCONNECTING first.

The flags beside the state, and where they mean something:

- ``joined`` (ws.join sent, ws.leave owed): OPEN always; PAUSED unless
  ``bp.join_due``; CLOSING and DISCONNECTING unless the target exited or never
  had room for ws.join; read at the process's end (``on_exit``).
- ``bp.join_due`` (ws.join still owed): PAUSED only; ``_resume`` sends it.
- ``bp.resume_scheduled`` (a ``_resume`` is queued): set in PAUSED only; the
  queued ``_resume`` does nothing if the connection left PAUSED meanwhile.
- ``reading`` (the transport reads; mirrors pause/resume_reading): on in OPEN
  and CLOSING; off in PAUSED, but on again while a ping's pong is awaited
  and fewer than HOLD_READ_LIMIT bytes are held.
- ``awaiting_pong``: OPEN and PAUSED (the sweep skips every other state).
- ``remote_target`` (the target is another node's): whenever ``target`` is
  not None.
- ``leave_reason`` / ``leave_code``: set once, as closing begins (OPEN or
  PAUSED to CLOSING or DISCONNECTING); the reason of ws.leave and of the EXIT.

Bounds (docs/configuration.md, WSRELAY_STALL_TIMEOUT): a paused connection stops reading; frames picows had
already read (and, while it waits for the pong of a ping, at most
HOLD_READ_LIMIT more) are held as they came and acted on, in order, when the
target makes room. A fragmented message is one buffer of its bytes
(frames.pyx). Output is counted by the Writer.
"""

import logging

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy

from picows.picows cimport WSListener, WSTransport, WSFrame, WSCloseCode

from .frames cimport (RSV1, FrameReader, Problem, parse_close_payload, problem_code, problem_text,
                      valid_received_close_code)
from .mailbox cimport RoomWaiter
from .message cimport Message, new_message
from .picows_private cimport release_upgrade, wire
from .pid cimport Pid
from .relayspec cimport RelaySpec, parse_control
from .remote cimport RemoteProcess
from .runtime cimport Node, Process
from .stats cimport Counters, LimitedLog
from .writer cimport STATE_COUNT, ConnState, Output, Writer, relaying

from .vocab import EXIT, NORMAL, SHUTDOWN

# Why a connection ended (docs/guide.md, "Topics the target receives"): the reason of its target's ws.leave,
# and of its EXIT but for a terminate(), whose EXIT carries the given reason.
CLIENT_CLOSED = "client_closed"
CONNECTION_LOST = "connection_lost"
SERVER_CLOSED = "server_closed"
TARGET_EXITED = "target_exited"
TRANSFERRED = "transferred"
TIMEOUT = "timeout"
PROTOCOL_ERROR = "protocol_error"
MESSAGE_TOO_BIG = "message_too_big"
SLOW_CONSUMER = "slow_consumer"
TARGET_STALLED = "target_stalled"

cdef enum:
    # Room for a control frame (at most 125 bytes of payload) and its header.
    CONTROL_FRAME_BUFFER = 160
    # Bytes of client frames a paused connection may read and hold while it
    # waits for the pong of a ping.
    HOLD_READ_LIMIT = 65536
    # A held frame: flags byte and 4-byte length before the payload.
    RECORD_HEADER = 5

cdef enum:
    OP_CONTINUATION = 0x0
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA

cdef LimitedLog _log = LimitedLog("wsrelay.relay")

# The states' names, in ConnState's order.
STATES = ("prepared", "open", "paused", "closing", "disconnecting", "closed")

# Where each state may go: bit n of an entry is ConnState n. The one table of
# a connection's life (the diagram above draws it); Connection._enter checks
# every move against it.
cdef unsigned int LEGAL[STATE_COUNT]
LEGAL[<int>ConnState.PREPARED] = 1 << ConnState.OPEN
LEGAL[<int>ConnState.OPEN] = (1 << ConnState.PAUSED) | (1 << ConnState.CLOSING) | (1 << ConnState.DISCONNECTING)
LEGAL[<int>ConnState.PAUSED] = (1 << ConnState.OPEN) | (1 << ConnState.CLOSING) | (1 << ConnState.DISCONNECTING)
LEGAL[<int>ConnState.CLOSING] = (1 << ConnState.DISCONNECTING) | (1 << ConnState.CLOSED)
LEGAL[<int>ConnState.DISCONNECTING] = 1 << ConnState.CLOSED
LEGAL[<int>ConnState.CLOSED] = 0


def _legal_moves():
    """Test hook: LEGAL as {state: the states it may move to}, by name."""
    return {STATES[a]: {STATES[b] for b in range(STATE_COUNT) if LEGAL[a] >> b & 1} for a in range(STATE_COUNT)}


def _enter_for_test(Connection conn not None, str to not None):
    """Test hook: move ``conn`` (one made by Connection.__new__, with no
    socket) to the state named ``to`` through Connection._enter; the name of
    the state it is in afterwards."""
    cdef int index = STATES.index(to)
    conn._enter(<ConnState>index)
    return conn.state_name


cdef class RelayService:
    """What the connections of one gateway service share: their limits, their
    Writer, the set of them, and the sweep that pings idle clients and closes
    connections whose target is stuck."""

    def __init__(self, Node node not None, str host not None, loop, *, Py_ssize_t max_message_size,
                 Py_ssize_t write_buffer_limit, double close_timeout, double stall_timeout=0.0,
                 double ping_interval=0.0, double ping_timeout=0.0, bint compression=False,
                 Py_ssize_t compression_min_size=128):
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        if close_timeout <= 0:
            raise ValueError("close_timeout must be greater than 0")
        if ping_interval > 0 and ping_timeout <= 0:
            raise ValueError("ping_timeout must be greater than 0 while ping_interval is set")
        self.node = node
        self.host = host
        self.loop = loop
        self.writer = Writer(loop, node.counters, write_buffer_limit, compression_min_size)
        self.max_message_size = max_message_size
        self.compression = compression
        self.close_timeout = close_timeout
        self.stall_timeout = stall_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connections = set()
        cdef double shortest = 0.0
        for period in (ping_interval, ping_timeout, stall_timeout):
            if period > 0 and (shortest == 0.0 or period < shortest):
                shortest = period
        self._tick = max(0.05, shortest / 4) if shortest > 0 else 0.0

    @property
    def write_buffer_limit(self):
        return self.writer.limit

    def start(self):
        """Start the sweep (when pings or the stall timeout are on)."""
        if self._tick > 0 and self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(self._tick, self._sweep)

    def stop(self):
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def _sweep(self):
        cdef double now = self.loop.time()
        cdef object item
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        try:
            for item in list(self.connections):
                try:
                    (<Connection?>item).sweep(now)
                except Exception as exc:
                    # One connection's failure must not stop the pings and
                    # stall checks of the others, nor the sweeps to come.
                    self.node.bookkeeping_error("sweep", f"sweeping {item!r}", exc)
        finally:
            self._sweep_handle = self.loop.call_later(self._tick, self._sweep)

    def wait_empty(self):
        """A future done when no connection is left."""
        waiter = self.loop.create_future()
        if not self.connections:
            waiter.set_result(None)
        else:
            self._empty_waiter = waiter
        return waiter

    cdef int forget(self, Connection conn) except -1:
        self.connections.discard(conn)
        if not self.connections and self._empty_waiter is not None:
            waiter = self._empty_waiter
            self._empty_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return 0

    def shutdown(self):
        """Close every connection with 1001 (reason ``shutdown``)."""
        cdef Connection conn
        self.stop()
        for conn in list(self.connections):
            conn.begin_close(1001, b"server shutting down", SHUTDOWN)

    def abort_all(self):
        cdef Connection conn
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.disconnect(False)


cdef class Backpressure(RoomWaiter):
    """A paused connection's side of the mailbox bound (docs/guide.md, "A full mailbox"): it waits for room in
    its target's mailbox (registered there as a RoomWaiter, withdrawn when
    the target exits, the connection ends or moves to another target), keeps
    the client frames read meanwhile, and tells a slow target from a stuck
    one."""

    cdef int on_room(self) except -1:
        if not self.resume_scheduled:
            self.resume_scheduled = True
            self.conn.loop.call_soon(self.conn._resume)
        return 0

    cdef int hold(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size) except -1:
        cdef Py_ssize_t used
        cdef unsigned char* out
        if self.held is None:
            self.held = bytearray()
            self.held_pos = 0
        used = PyByteArray_GET_SIZE(self.held)
        PyByteArray_Resize(self.held, used + RECORD_HEADER + size)
        out = <unsigned char*>PyByteArray_AS_STRING(self.held) + used
        out[0] = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
        out[1] = <unsigned char>(size >> 24)
        out[2] = <unsigned char>(size >> 16)
        out[3] = <unsigned char>(size >> 8)
        out[4] = <unsigned char>size
        memcpy(out + RECORD_HEADER, data, size)
        return 0

    cdef Py_ssize_t held_bytes(self) noexcept:
        return 0 if self.held is None else PyByteArray_GET_SIZE(self.held) - self.held_pos

    cdef Py_ssize_t drop_held(self) except -1:
        """Forget the held frames; how many client messages they completed."""
        cdef Py_ssize_t pos = self.held_pos, end, size, messages = 0
        cdef const unsigned char* data
        if self.held is None:
            return 0
        data = <const unsigned char*>PyByteArray_AS_STRING(self.held)
        end = PyByteArray_GET_SIZE(self.held)
        while pos < end:
            size = (data[pos + 1] << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
            if data[pos] & 0x80 and (data[pos] & 0xF) != OP_CLOSE:
                messages += 1
            pos += RECORD_HEADER + size
        self.held = None
        self.held_pos = 0
        return messages

    cdef int withdraw(self) except -1:
        if self.waiting_on is not None:
            self.waiting_on.withdraw(self)
        return 0


# Set by channels.pyx, which comes after this module: subscribe a connection
# to the channels its handler granted (and know it by its user), and take it
# out of all of its channels.
cdef object _grant_channels = None
cdef object _leave_channels = None


def set_channel_hooks(grant, leave):
    global _grant_channels, _leave_channels
    _grant_channels = grant
    _leave_channels = leave


cdef class Connection(Output):
    """A client connection as a process. Created by the relay middleware."""

    @staticmethod
    def prepare(RelayService service not None, RelaySpec spec not None, dict recover=None):
        """A connection for the spec's target, attached when the upgrade
        completes; ``recover``: the positions its client named
        ({channel: (epoch, offset)}), of which those of granted channels
        are kept. ProcessLookupError when the target is not alive,
        ValueError when it is a connection."""
        cdef Process target = _find_target(service.node, spec.target_pid)
        if target is None:
            raise ProcessLookupError(f"target process {spec.target_pid} is not alive")
        if isinstance(target, Connection):
            raise ValueError(f"target_pid {spec.target_pid} is a WebSocket connection; the target must be a process")
        cdef Connection conn = Connection.__new__(Connection)
        conn.service = service
        conn.writer = service.writer
        conn.loop = service.loop
        conn.target = target
        conn.message_topic = spec.message_topic
        conn.metadata = spec.metadata
        conn.heartbeat_interval = spec.heartbeat_interval
        conn.channels = spec.channels
        conn.user = spec.user
        if recover and spec.channels:
            conn.recover = {name: position for name, position in recover.items() if name in spec.channels} or None
        conn.remote_target = isinstance(target, RemoteProcess)
        return conn

    @property
    def state_name(self):
        return STATES[<int>self.state]

    # -- lifecycle -------------------------------------------------------------------

    cdef int _enter(self, ConnState to) except -1:
        """The one place a connection changes state, checked against LEGAL.
        A move the table does not have is a bug here: it is refused, loudly
        (RuntimeError, which picows, the loop or the sender logs), before
        anything of it is done, rather than run the connection on in a state
        its code did not plan for."""
        if not LEGAL[<int>self.state] & (<unsigned int>1 << <int>to):
            raise RuntimeError(f"{self!r}: no move from {STATES[<int>self.state]} to {STATES[<int>to]} "
                               "in a connection's life")
        self.state = to
        return 0

    cdef int connected(self, WSTransport transport) except -1:
        cdef RelayService service = self.service
        cdef Node node = service.node
        self.transport = transport
        # Messages to a connection are handled as they are sent: no mailbox.
        node.attach(self, node.new_pid(service.host), False)
        node.counters.connections_opened += 1
        service.connections.add(self)
        self._enter(ConnState.OPEN)
        self.reading = True
        self.started_at = self.loop.time()
        self.idle_since = self.started_at
        release_upgrade(transport, CONTROL_FRAME_BUFFER)
        wire(transport).set_write_buffer_limits(
            high=service.writer.limit, low=service.writer.limit // 2)
        if not self.target.alive:
            # It ended between the handler and the upgrade.
            normal = self.target.exit_reason == NORMAL
            self.target = None
            self.channels = None
            self.recover = None
            self.begin_close(1000 if normal else 1011, b"" if normal else b"target process failed",
                             TARGET_EXITED)
            return 0
        if self.channels is not None or self.user is not None:
            # Subscribed before the target hears of it (docs/guide.md, "Channels").
            _grant_channels(self)
        self.watch(self.target)
        self.deliver_join()
        self.schedule_heartbeat()
        return 0

    cdef int disconnected(self) except -1:
        """The socket is gone: the one place a connection ends."""
        cdef Node node = self.service.node
        if relaying(self.state):
            # picows itself failed the connection (a frame it could not parse)
            # or the peer vanished: the close frame it sent tells which.
            self.wire_failed()
        self._enter(ConnState.CLOSED)
        if self.reader is not None:
            self.reader.reset()
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.stop_heartbeat()
        if self.bp is not None:
            self.bp.withdraw()
            self.count_dropped(self.bp.drop_held(), CONNECTION_LOST)
        self.service.forget(self)
        node.counters.connections_closed += 1
        if self.alive:
            node.finish(self, self.leave_reason, None)
        self.transport = None
        return 0

    cdef int watch(self, Process target) except -1:
        """Monitor ``target``: one way when it is local (a connection only
        ever watches its target, so it keeps no set of its own); the full
        way for another node's, whose node must be told."""
        if self.remote_target:
            return self.service.node.add_monitor(self, target)
        if target.monitored_by is None:
            target.monitored_by = set()
        target.monitored_by.add(self)
        return 0

    cdef int unwatch(self) except -1:
        if self.target is None:
            return 0
        if self.remote_target:
            return self.service.node.remove_monitor(self, self.target)
        if self.target.monitored_by is not None:
            self.target.monitored_by.discard(self)
        return 0

    cdef int on_exit(self, str reason, object error) except -1:
        if self.groups is not None:
            for members in self.groups:
                (<set>members).discard(self)
            self.groups = None
        if self.channels is not None or self.user is not None:
            _leave_channels(self)
        if self.target is not None and self.target.alive:
            self.unwatch()
            if self.joined:
                self.leave(self.leave_reason or reason, self.leave_code)
        self.target = None
        return 0

    cdef int kill(self, str reason, object error) except -1:
        """terminate() or a link: close the connection and end the process
        now, with ``reason``; the close handshake finishes on its own."""
        if self.transport is None:
            self.service.node.finish(self, reason, error)
            return 0
        if error is None:
            self.begin_close(1000, b"", SERVER_CLOSED)
        else:
            self.begin_close(1011, b"linked process failed", SERVER_CLOSED)
        if self.alive:
            self.service.node.finish(self, reason, error)
        return 0

    # -- client -> target -------------------------------------------------------------

    cdef int on_frame(self, WSFrame frame) except -1:
        cdef int opcode = <int>frame.msg_type
        cdef int rsv = (frame.rsv1 << 2) | (frame.rsv2 << 1) | frame.rsv3
        if self.state >= ConnState.DISCONNECTING:
            # picows hands over every frame it parsed from one read, also those
            # after the client's close frame or after one we failed on: the
            # client said its last word, or the connection is being dropped.
            return 0
        if self.transport.is_close_frame_sent and relaying(self.state):
            # picows failed the connection on a frame it could not parse. It
            # parses one frame ahead, so the frame before the bad one comes
            # after its close frame: last of its read, with the bad bytes
            # behind it. That one is the client's and is acted on; anything
            # later (e.g. the client's answer to that close) is not: the
            # connection is DISCONNECTING as it acts on that one.
            self.wire_failed()
            if not (frame.last_in_buffer and frame.tail_size > 0):
                return 0
        self.rx_seq += 1
        if opcode == OP_PING or opcode == OP_PONG:
            if rsv:
                return self.fail(Problem.RESERVED_BITS)
            if opcode == OP_PING and self.state < ConnState.CLOSING:
                # picows' auto-pong is off (it answers before any RSV check).
                # A pong is output too: a client that pings and never reads
                # is a slow consumer like any other.
                self.unsent += frame.payload_size + 2
                if self.unsent + self.outbox_bytes > self.writer.limit and self.backlogged():
                    return self.on_slow_consumer()
                self.transport.send_pong(frame.get_payload_as_bytes())
            return 0
        if self.state == ConnState.PAUSED:
            self.bp.hold(opcode, frame.fin, rsv, frame.payload_ptr, frame.payload_size)
            if self.reading and self.bp.held_bytes() > HOLD_READ_LIMIT:
                self.set_reading(False)
            return 0
        if self.handle(opcode, frame.fin, rsv, frame.payload_ptr, frame.payload_size):
            self.bp.hold(opcode, frame.fin, rsv, frame.payload_ptr, frame.payload_size)
        return 0

    cdef int handle(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size) except -1:
        """Act on a client data or close frame, in order; 1 when the
        connection paused on it instead (the caller holds it)."""
        cdef Problem problem = Problem.OK
        cdef Py_ssize_t nbytes = 0
        if opcode == OP_CLOSE:
            if rsv:
                return self.fail(Problem.RESERVED_BITS)
            return self.close_frame(data, size)
        if self.reader is None:
            self.reader = FrameReader.__new__(FrameReader)
            self.reader.limit = self.service.max_message_size
            self.reader.deflate = self.deflate is not None
        if (fin and (not rsv or (rsv == RSV1 and self.reader.deflate)) and self.state == ConnState.OPEN
                and self.target is not None and self.target_full()):
            # This frame completes a message the target has no room for.
            self.pause()
            return 1
        message = self.reader.read(opcode, fin, rsv, data, size, &nbytes, &problem)
        if problem != Problem.OK:
            return self.fail(problem)
        if message is not None:
            self.relay(message, nbytes)
        return 0

    cdef int relay(self, object data, Py_ssize_t nbytes) except -1:
        cdef Counters counters = self.service.node.counters
        self.message_count += 1
        if self.target is None:
            return self.count_dropped(1, "target_gone")
        payload = {"client_pid": self.pid, "type": "text" if type(data) is str else "binary",
                   "data": data, "metadata": self.metadata}
        if self.remote_target:
            if not self.send_remote(self.message_topic, payload, True):
                return self.count_dropped(1, "target_gone")
        elif not self.target.mailbox.push(new_message(self.message_topic, payload, self.pid)):
            # Closing: the connection is not paused any more.
            return self.count_dropped(1, "closing")
        counters.messages_sent += 1
        counters.ws_messages_in += 1
        counters.ws_bytes_in += nbytes
        return 0

    cdef int count_dropped(self, Py_ssize_t count, str reason) except -1:
        """Client messages not delivered: counted, and logged (rate-limited)."""
        cdef Counters counters = self.service.node.counters
        if count <= 0:
            return 0
        if reason == "target_gone":
            counters.client_messages_dropped_target_gone += count
        elif reason == CONNECTION_LOST:
            counters.client_messages_dropped_connection_lost += count
        else:
            counters.client_messages_dropped_closing += count
        if _log.allow("dropped_" + reason):
            _log.write(logging.WARNING, f"{self.pid}: {count} client message(s) not delivered ({reason})")
        return 0

    cdef bint push_join(self) except -1:
        """ws.join to the target, if it has room."""
        cdef dict payload = {"client_pid": self.pid, "metadata": self.metadata}
        if self.remote_target:
            if self.target_full():
                return False
            # Not sent: its node is down, and the monitor says so at once.
            self.send_remote("ws.join", payload, True)
        elif not self.target.mailbox.push(new_message("ws.join", payload, self.pid)):
            return False
        self.service.node.counters.messages_sent += 1
        self.joined = True
        if self.bp is not None:
            self.bp.join_due = False
        return True

    cdef bint deliver_join(self) except -1:
        """ws.join to the target now, or pause until it has room."""
        if self.push_join():
            return True
        self.pause()
        self.bp.join_due = True
        return False

    cdef int leave(self, str reason, object code) except -1:
        # One per connection that joined: bounded, so it may pass a full mailbox.
        cdef dict payload = {"client_pid": self.pid, "metadata": self.metadata, "reason": reason, "code": code}
        if self.remote_target:
            self.send_remote("ws.leave", payload, False)
        else:
            self.target.mailbox.push_force(new_message("ws.leave", payload, self.pid))
        self.joined = False
        return 0

    cdef bint target_full(self) except -1:
        """Whether the target can take no more now: its mailbox is full, or,
        on another node, as many messages as a mailbox holds are not yet
        acknowledged."""
        if self.remote_target:
            return self.unacked >= self.service.node.mailbox_capacity
        return self.target.mailbox.full()

    cdef bint send_remote(self, str topic, dict payload, bint counted) except -1:
        """A message to a target on another node; ``counted`` ones wait for
        its node's acknowledgement (credit)."""
        if not (<RemoteProcess>self.target).relay(self.pid, topic, payload):
            return False
        if counted:
            self.unacked += 1
        return True

    cdef int credit(self, Py_ssize_t count) except -1:
        """The target's node put ``count`` more of our messages in its mailbox."""
        self.unacked -= count
        self.credited += count
        if (self.state == ConnState.PAUSED and self.remote_target
                and self.unacked <= self.service.node.mailbox_capacity // 2):
            self.bp.on_room()
        return 0

    # -- backpressure ------------------------------------------------------------------

    cdef int pause(self) except -1:
        """The one place a connection stops for backpressure."""
        cdef Backpressure bp = self.bp
        self._enter(ConnState.PAUSED)
        if bp is None:
            bp = self.bp = Backpressure.__new__(Backpressure)
            bp.conn = self
        self.service.node.counters.relay_backpressure_pauses += 1
        bp.since = self.loop.time()
        bp.mark = self.progress()
        self.set_reading(False)
        if not self.remote_target:
            self.target.mailbox.wait_for_room(bp)
        return 0

    cdef unsigned long long progress(self) noexcept:
        """What the target has taken so far, of everyone's messages (local)
        or of ours (another node's, as its acknowledgements say)."""
        if self.remote_target:
            return self.credited
        return self.target.mailbox.taken

    def _resume(self):
        """The one place a paused connection goes on: its target has room."""
        cdef Backpressure bp = self.bp
        bp.resume_scheduled = False
        if self.state != ConnState.PAUSED or self.target is None:
            return
        bp.withdraw()
        self._enter(ConnState.OPEN)
        if bp.join_due and not self.deliver_join():
            return
        self.replay()
        if self.state == ConnState.OPEN:
            self.set_reading(True)

    cdef int replay(self) except -1:
        """Act on the held client frames, in order, until the connection
        pauses again or stops taking input."""
        cdef Backpressure bp = self.bp
        cdef bytearray held = bp.held
        cdef const unsigned char* record
        cdef Py_ssize_t size
        if held is None:
            return 0
        while (bp.held is held and bp.held_pos < PyByteArray_GET_SIZE(held)
               and self.state < ConnState.DISCONNECTING):
            record = <const unsigned char*>PyByteArray_AS_STRING(held) + bp.held_pos
            size = (record[1] << 24) | (record[2] << 16) | (record[3] << 8) | record[4]
            if self.handle(record[0] & 0xF, record[0] >> 7, (record[0] >> 4) & 0x7,
                           <const char*>record + RECORD_HEADER, size):
                return 0
            if bp.held is held:
                bp.held_pos += RECORD_HEADER + size
        if bp.held is held:
            bp.held = None
            bp.held_pos = 0
        return 0

    cdef int set_reading(self, bint on) except -1:
        if on == self.reading or self.transport is None:
            return 0
        self.reading = on
        if on:
            wire(self.transport).resume_reading()
        else:
            wire(self.transport).pause_reading()
        return 0

    # -- closing -----------------------------------------------------------------------

    cdef int begin_close(self, int code, bytes text, str reason) except -1:
        """The one place a close starts with our close frame (OPEN or PAUSED
        -> CLOSING): the close frame goes out after what was queued, held
        client frames are acted on (delivered where the target has room,
        counted as dropped where not), and reading resumes to hear the
        client's answer, for at most the close timeout."""
        cdef ConnState before = self.state
        if not relaying(before):
            return 0
        self._enter(ConnState.CLOSING)
        self.leave_reason = reason
        self.leave_code = code
        self.send_close(code, text)
        if before == ConnState.PAUSED:
            self.bp.withdraw()
            self.replay()
        if self.transport is not None:
            self.set_reading(True)
        return 0

    cdef int send_close(self, int code, bytes text) except -1:
        """Our close frame, after what was queued; the close timeout starts."""
        self.stop_heartbeat()
        self.flush()
        self.transport.send_close(<WSCloseCode>code, text)
        self.close_timer = self.loop.call_later(self.service.close_timeout, self._close_timeout)
        return 0

    def _close_timeout(self):
        self.close_timer = None
        if self.transport is not None:
            self.transport.disconnect(False)

    cdef int close_frame(self, const char* data, Py_ssize_t size) except -1:
        """The client's close frame: the last frame it sends (RFC 6455 §5.5.1).
        picows has already refused a 1-byte payload, a code it does not know
        and a reason that is not UTF-8; the codes it knows but a peer must not
        send (0, 1005, 1006, 1015...) are refused here."""
        cdef int code = 0
        cdef ConnState before = self.state
        if size >= 2:
            code = ((<const unsigned char*>data)[0] << 8) | (<const unsigned char*>data)[1]
            if not valid_received_close_code(code):
                return self.fail(Problem.INVALID_CLOSE_CODE)
        self.end_input()
        if relaying(before):
            self.leave_reason = CLIENT_CLOSED
            self.leave_code = code if size >= 2 else None
            # Echo the client's code (RFC 6455 §5.5.1); a close without one is
            # answered with 1000, as picows always writes a 2-byte code.
            self.send_close(code if size >= 2 else 1000, b"")
            self.set_reading(True)
        # Either way the handshake is complete; the server closes the TCP
        # connection first (RFC 6455 §7.1.1).
        self.transport.disconnect()
        return 0

    cdef int fail(self, Problem problem) except -1:
        """Fail the connection (RFC 6455 §7.1.7): close frame, then the socket.
        Nothing more the client sent is acted on."""
        cdef int code = problem_code(problem)
        cdef ConnState before = self.state
        self.end_input()
        if relaying(before):
            if _log.allow("protocol_error"):
                _log.write(logging.INFO, f"closing {self.pid} with {code}: {problem_text(problem)}")
            self.leave_reason = MESSAGE_TOO_BIG if code == 1009 else PROTOCOL_ERROR
            self.leave_code = code
            self.send_close(code, problem_text(problem).encode())
            self.set_reading(True)
        self.transport.disconnect()
        return 0

    cdef int wire_failed(self) except -1:
        """picows sent a close frame of its own: a frame it could not parse
        (1002, 1007, 1009), or an exception in this listener (1011); or the
        socket went without one. OPEN or PAUSED -> DISCONNECTING, with the
        reason that close frame gives."""
        cdef object handshake = self.transport.close_handshake
        cdef object sent = None if handshake is None else handshake.sent
        self.end_input()
        self.stop_heartbeat()
        if sent is not None and sent.code == WSCloseCode.MESSAGE_TOO_BIG:
            self.leave_reason, self.leave_code = MESSAGE_TOO_BIG, 1009
        elif sent is not None and sent.code in (WSCloseCode.PROTOCOL_ERROR, WSCloseCode.INVALID_TEXT):
            self.leave_reason, self.leave_code = PROTOCOL_ERROR, int(sent.code)
        else:
            self.leave_reason = CONNECTION_LOST
        return 0

    cdef int end_input(self) except -1:
        """The one way into DISCONNECTING: act on no more client frames; the
        message in progress and the held frames are forgotten (held messages
        counted as dropped). Already DISCONNECTING when the frame picows
        parsed before failing the socket is a close frame or one we fail."""
        if self.state != ConnState.DISCONNECTING:
            self._enter(ConnState.DISCONNECTING)
        if self.reader is not None:
            self.reader.reset()
        if self.bp is not None:
            self.bp.withdraw()
            self.count_dropped(self.bp.drop_held(), "closing")
        return 0

    cdef int on_slow_consumer(self) except -1:
        if self.state < ConnState.CLOSING:
            self.service.node.counters.slow_consumer_closes += 1
            if _log.allow("slow_consumer"):
                _log.write(logging.WARNING, f"closing {self.pid}: more than {self.writer.limit} bytes unsent "
                                            "(slow consumer)")
            self.begin_close(1008, b"slow consumer", SLOW_CONSUMER)
        return 0

    # -- the sweep: idle pings and stuck targets -------------------------------------------

    cdef int sweep(self, double now) except -1:
        cdef RelayService service = self.service
        cdef Backpressure bp = self.bp
        cdef unsigned long long taken
        if not relaying(self.state):
            return 0
        if self.state == ConnState.PAUSED and service.stall_timeout > 0:
            taken = self.progress()
            if taken != bp.mark:
                bp.mark = taken
                bp.since = now
            elif now - bp.since >= service.stall_timeout:
                service.node.counters.target_stalled_closes += 1
                if _log.allow("target_stalled"):
                    _log.write(logging.WARNING, f"closing {self.pid} with 1013: its target {self.target.pid} "
                                                f"took nothing for {service.stall_timeout:g} s")
                return self.begin_close(1013, b"target stalled", TARGET_STALLED)
        if service.ping_interval <= 0:
            return 0
        if self.rx_seq != self.seen_seq:
            self.seen_seq = self.rx_seq
            self.idle_since = now
            self.awaiting_pong = False
        elif self.awaiting_pong:
            if now - self.ping_sent_at >= service.ping_timeout:
                service.node.counters.ping_timeouts += 1
                self.begin_close(1001, b"ping timeout", TIMEOUT)
                if self.transport is not None:
                    self.transport.disconnect(False)
        elif now - self.idle_since >= service.ping_interval:
            self.transport.send_ping(b"wsrelay")
            self.awaiting_pong = True
            self.ping_sent_at = now
            if self.state == ConnState.PAUSED and bp.held_bytes() < HOLD_READ_LIMIT:
                # Read again, to hear the pong (frames that come with it are held).
                self.set_reading(True)
        return 0

    # -- heartbeats -----------------------------------------------------------------------

    cdef int stop_heartbeat(self) except -1:
        if self.heartbeat_handle is not None:
            self.heartbeat_handle.cancel()
            self.heartbeat_handle = None
        return 0

    cdef int schedule_heartbeat(self) except -1:
        self.stop_heartbeat()
        if self.heartbeat_interval > 0 and self.state < ConnState.CLOSING:
            self.heartbeat_handle = self.loop.call_later(self.heartbeat_interval, self._heartbeat)
        return 0

    def _heartbeat(self):
        self.heartbeat_handle = None
        if not self.alive or self.target is None or self.state >= ConnState.CLOSING:
            return
        if self.state == ConnState.PAUSED or self.target_full():
            # The target has not caught up: the next heartbeat will say it all.
            self.service.node.counters.heartbeats_skipped += 1
        else:
            payload = {"client_pid": self.pid, "uptime": self.loop.time() - self.started_at,
                       "message_count": self.message_count, "metadata": self.metadata}
            if self.remote_target:
                self.send_remote("ws.heartbeat", payload, True)
            else:
                self.target.mailbox.push(new_message("ws.heartbeat", payload, self.pid))
                self.service.node.counters.messages_sent += 1
        self.schedule_heartbeat()

    # -- anyone -> connection -------------------------------------------------------------

    cdef bint deliver(self, str topic, object payload, Pid sender) except -1:
        cdef int code = 0
        if topic == "ws.send":
            return self.send(payload)
        if topic == "ws.close":
            text = parse_close_payload(payload, &code)
            if not relaying(self.state):
                return False
            self.begin_close(code, text, SERVER_CLOSED)
            return True
        if topic == "ws.control":
            return self.control(payload)
        raise ValueError(f"{self.pid} is a WebSocket connection: it accepts 'ws.send', 'ws.close' "
                         f"and 'ws.control', not {topic!r}")

    cdef int signal(self, Message msg) except -1:
        if msg.topic != EXIT or self.target is None or msg.sender != self.target.pid:
            return 0
        # The target ended: the client is told, and what it sent meanwhile
        # has nowhere to go (counted as dropped).
        self.target = None
        self.joined = False
        if self.bp is not None:
            self.bp.withdraw()
        if (<dict>msg.payload)["reason"] == NORMAL:
            return self.begin_close(1000, b"", TARGET_EXITED)
        return self.begin_close(1011, b"target process failed", TARGET_EXITED)

    cdef bint control(self, object payload) except -1:
        cdef dict changes = parse_control(payload)
        cdef Process new_target = self.target
        if "target_pid" in changes:
            new_target = _find_target(self.service.node, changes["target_pid"])
            if isinstance(new_target, Connection):
                raise ValueError(f"ws.control target_pid {changes['target_pid']} is a WebSocket connection, "
                                 "not a process")
            if new_target is None:
                if _log.allow("control_dead_target"):
                    _log.write(logging.WARNING, f"ws.control for {self.pid}: target {changes['target_pid']} is "
                                                f"not alive; the connection stays with "
                                                f"{None if self.target is None else self.target.pid}")
                return True
        if self.target is None or self.state >= ConnState.CLOSING:
            return True
        topic = changes.get("message_topic", self.message_topic)
        metadata = changes.get("metadata", self.metadata)
        if new_target is not self.target:
            self.transfer(new_target, topic, metadata)
        else:
            self.message_topic = topic
            self.metadata = metadata
        if "heartbeat_interval" in changes and changes["heartbeat_interval"] != self.heartbeat_interval:
            self.heartbeat_interval = changes["heartbeat_interval"]
            self.schedule_heartbeat()
        return True

    cdef int transfer(self, Process new_target, str topic, object metadata) except -1:
        """Move to ``new_target``: the old one gets ws.leave (if it had
        ws.join), the new one ws.join and then every client message not yet
        delivered."""
        if self.bp is not None:
            self.bp.withdraw()
        if self.joined:
            self.leave(TRANSFERRED, None)
        self.unwatch()
        self.target = new_target
        self.remote_target = isinstance(new_target, RemoteProcess)
        self.unacked = 0
        self.message_topic = topic
        self.metadata = metadata
        self.watch(new_target)
        if self.state == ConnState.PAUSED:
            # ws.join now if it fits (a target that sees its mailbox empty
            # may end: this one will not, with a ws.join queued); the frames
            # held for the old target follow when the connection resumes.
            self.bp.join_due = not self.push_join()
            self.bp.on_room()
        else:
            self.deliver_join()
        return 0


cdef Process _find_target(Node node, Pid pid):
    """The process ``pid`` names for a relay: a live local one, another
    node's whose node is up (as a RemoteProcess), or None."""
    cdef Process target = node.lookup(pid)
    if target is not None or pid.node == node.name or node.remote is None:
        return target
    return node.remote.reachable(pid)


cdef class RelayListener(WSListener):
    """picows' view of a relay connection; every callback goes to the process."""

    def __cinit__(self, Connection conn not None):
        self.conn = conn

    @property
    def connection(self):
        return self.conn

    cpdef on_ws_connected(self, WSTransport transport):
        self.conn.connected(transport)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        self.conn.on_frame(frame)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.conn.disconnected()

    cpdef pause_writing(self):
        # The transport's buffer crossed its high mark: note it for the limit.
        self.conn.unsent = wire(self.conn.transport).get_write_buffer_size()

    cpdef resume_writing(self):
        self.conn.unsent = wire(self.conn.transport).get_write_buffer_size()
