# cython: language_level=3
"""The relay's per-connection path: a WebSocket connection as a process.

``RelayListener`` is the picows listener; it hands every frame to its
``Connection``, the process that owns the client. Client messages are
reassembled, validated and pushed straight into the target's mailbox; the
``ws.send`` / ``ws.close`` / ``ws.control`` topics sent to the connection are
handled inside the sender's ``process.send`` call, with no task switch.
"""

import logging
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8, PyUnicode_DecodeUTF8Stateful
from libc.string cimport memcpy

from picows.picows cimport MemoryBuffer, WSListener, WSTransport, WSFrame, WSMsgType, WSCloseCode

from .pid cimport Pid, to_pid
from .message cimport Message, new_message
from .mailbox cimport Mailbox
from .runtime cimport Process, Node
from .stats cimport Counters

from wsrelay.units import parse_duration

cdef object _log = logging.getLogger("wsrelay.relay")

# Reasons a connection ends (SPEC §4.3).
CLIENT_CLOSED = "client_closed"
CONNECTION_LOST = "connection_lost"
SERVER_CLOSED = "server_closed"
TARGET_EXITED = "target_exited"
TRANSFERRED = "transferred"
SHUTDOWN = "shutdown"
TIMEOUT = "timeout"
PROTOCOL_ERROR = "protocol_error"
MESSAGE_TOO_BIG = "message_too_big"
SLOW_CONSUMER = "slow_consumer"

DEF MAX_CLOSE_REASON = 123
# Room for a control frame (at most 125 bytes of payload) and its header.
DEF CONTROL_FRAME_BUFFER = 160


# A bytes payload larger than this is not copied: its frame is queued as two
# buffers, the header and the caller's bytes object, for one writev().
DEF COPY_LIMIT = 4096
# Connections written per flush callback. A fan-out to a large room is written
# in slices with the loop polling for I/O between them, so the loop never
# stalls for a whole fan-out, and messages that arrive meanwhile join the
# frames still queued for the rest of the room (one writev for both).
DEF FLUSH_SLICE = 256


cdef inline Py_ssize_t _header_size(Py_ssize_t size):
    return 2 if size < 126 else (4 if size < 65536 else 10)


cdef void _write_header(unsigned char* out, int opcode, Py_ssize_t size):
    cdef int i
    out[0] = 0x80 | opcode
    if size < 126:
        out[1] = <unsigned char>size
    elif size < 65536:
        out[1] = 126
        out[2] = <unsigned char>(size >> 8)
        out[3] = <unsigned char>(size & 0xFF)
    else:
        out[1] = 127
        for i in range(8):
            out[2 + i] = <unsigned char>((<unsigned long long>size >> (56 - 8 * i)) & 0xFF)


cdef bytes encode_frame(int opcode, const char* data, Py_ssize_t size):
    """A complete server frame (unmasked, FIN set): header and payload in one
    bytes object, so it can be queued for any number of connections."""
    cdef Py_ssize_t header = _header_size(size)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + size)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
    _write_header(out, opcode, size)
    memcpy(out + header, data, size)
    return frame


cdef object encode_send(object payload, Py_ssize_t* size):
    """The frame for a ``ws.send`` payload: one bytes object, or for a large
    bytes payload a (header, payload) tuple that shares the caller's bytes.
    ValueError when the payload is malformed. CPython keeps a str's UTF-8
    form (an ASCII str is its own), so a str sent to many connections is
    encoded once."""
    cdef int opcode = check_send_payload(payload)
    cdef const char* data
    cdef bytes header
    value = (<dict>payload)["data"]
    if opcode == WSMsgType.TEXT:
        data = PyUnicode_AsUTF8AndSize(<str>value, size)
        return encode_frame(opcode, data, size[0])
    if type(value) is not bytes:
        value = bytes(value)
    size[0] = PyBytes_GET_SIZE(<bytes>value)
    if size[0] <= COPY_LIMIT:
        return encode_frame(opcode, PyBytes_AS_STRING(<bytes>value), size[0])
    header = PyBytes_FromStringAndSize(NULL, _header_size(size[0]))
    _write_header(<unsigned char*>PyBytes_AS_STRING(header), opcode, size[0])
    return (header, value)


cdef inline bint _valid_received_close_code(int code):
    # RFC 6455 §7.4 plus the IANA registry (1012 service restart, 1013 try
    # again later, 1014 bad gateway). Never on the wire: 1004 (reserved), 1005
    # (no status), 1006 (abnormal closure), 1015 (TLS failure).
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef inline bint _valid_sent_close_code(object code):
    return type(code) is int and (
        (1000 <= code <= 1003) or (1007 <= code <= 1009) or (1011 <= code <= 1014) or (3000 <= code <= 4999))


cdef bytes _close_reason_bytes(object reason):
    """UTF-8 of ``reason``, cut at a character boundary to fit a close frame."""
    cdef bytes data
    cdef Py_ssize_t end
    if reason is None:
        return b""
    if not isinstance(reason, str):
        raise ValueError(f"ws.close reason must be a str, got {type(reason).__name__}")
    data = (<str>reason).encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return data
    end = MAX_CLOSE_REASON
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


cdef int check_send_payload(object payload) except -1:
    """The opcode a ``ws.send`` payload asks for; ValueError when malformed."""
    if type(payload) is not dict:
        raise ValueError("ws.send payload must be a dict {'type': 'text' | 'binary', 'data': ...}, "
                         f"got {type(payload).__name__}")
    kind = (<dict>payload).get("type")
    data = (<dict>payload).get("data")
    if kind == "text":
        if type(data) is not str:
            raise ValueError(f"ws.send of type 'text' needs str data, got {type(data).__name__}")
        return WSMsgType.TEXT
    if kind == "binary":
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"ws.send of type 'binary' needs bytes data, got {type(data).__name__}")
        return WSMsgType.BINARY
    raise ValueError(f"ws.send type must be 'text' or 'binary', got {kind!r}")


cdef class RelayOptions:
    def __init__(self, Node node not None, str host not None, Py_ssize_t max_message_size,
                 Py_ssize_t write_buffer_limit, double close_timeout, loop):
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        self.node = node
        self.host = host
        self.max_message_size = max_message_size
        self.write_buffer_limit = write_buffer_limit
        self.close_timeout = close_timeout
        self.connections = set()
        self.loop = loop
        self.dirty = []
        self.flush_pos = 0
        self.flush_scheduled = False

    def _flush(self):
        """Write coalescing: a connection's frames are queued during a loop
        iteration and written with one writev() after the iteration's
        callbacks. A broadcast of k messages to n subscribers costs n system
        calls, not k × n. Up to FLUSH_SLICE connections are written per call;
        the rest wait for the next loop iteration, behind nothing that was
        queued later."""
        cdef Connection conn
        cdef list dirty = self.dirty
        cdef Py_ssize_t pos = self.flush_pos
        cdef Py_ssize_t end = len(dirty)
        if end - pos > FLUSH_SLICE:
            end = pos + FLUSH_SLICE
        try:
            while pos < end:
                conn = <Connection>dirty[pos]
                pos += 1
                conn.flush()
        finally:
            if pos < len(dirty):
                if pos >= 4096 and pos * 2 >= len(dirty):
                    del dirty[:pos]
                    pos = 0
                self.flush_pos = pos
                self.loop.call_soon(self._flush)
            else:
                dirty.clear()
                self.flush_pos = 0
                self.flush_scheduled = False

    def sweep_idle(self, double now, double ping_interval, double ping_timeout):
        """Ping connections silent for ``ping_interval`` seconds; close those
        whose ping went unanswered for ``ping_timeout`` (reason ``timeout``)."""
        cdef Connection conn
        for conn in list(self.connections):
            if conn.closing or conn.transport is None:
                continue
            if conn.rx_seq != conn.seen_seq:
                conn.seen_seq = conn.rx_seq
                conn.idle_since = now
                conn.awaiting_pong = False
            elif conn.awaiting_pong:
                if now - conn.ping_sent_at >= ping_timeout:
                    conn.close(1001, b"ping timeout", TIMEOUT)
                    conn.transport.disconnect(False)
            elif now - conn.idle_since >= ping_interval:
                conn.transport.send_ping(b"wsrelay")
                conn.awaiting_pong = True
                conn.ping_sent_at = now

    def wait_empty(self):
        """A future done when no connection is left."""
        waiter = self.loop.create_future()
        if not self.connections:
            waiter.set_result(None)
        else:
            self._empty_waiter = waiter
        return waiter

    def shutdown(self):
        """Close every connection with 1001 (reason ``shutdown``)."""
        cdef Connection conn
        for conn in list(self.connections):
            conn.close(1001, b"server shutting down", SHUTDOWN)

    def abort_all(self):
        cdef Connection conn
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.disconnect(False)


cdef class Connection(Process):
    """A client connection as a process. Created by the relay middleware."""

    @staticmethod
    def prepare(RelayOptions options not None, Pid target_pid not None, str message_topic not None,
                object metadata, double heartbeat_interval):
        """A connection for a target, to be attached when the upgrade completes."""
        cdef Node node = options.node
        cdef Process target = node.lookup(target_pid)
        if target is None:
            raise ProcessLookupError(f"target process {target_pid} is not alive")
        if isinstance(target, Connection):
            raise ValueError(f"target_pid {target_pid} is a WebSocket connection; the target must be a process")
        cdef Connection conn = Connection.__new__(Connection)
        conn.options = options
        conn.target = target
        conn.message_topic = message_topic
        conn.metadata = metadata
        conn.heartbeat_interval = heartbeat_interval
        conn.frag_opcode = 0
        return conn

    # -- lifecycle --------------------------------------------------------------

    cdef int connected(self, WSTransport transport) except -1:
        cdef RelayOptions options = self.options
        cdef Node node = options.node
        self.transport = transport
        self.loop = options.loop
        # Messages to a connection are handled as they are sent: no mailbox.
        node.attach(self, node.new_pid(options.host), False)
        node.counters.connections_opened += 1
        options.connections.add(self)
        self.started_at = options.loop.time()
        self.idle_since = self.started_at
        # Per-connection memory (docs/performance.md): the upgrade request and
        # response are not needed once upgraded, and frames are written from
        # our own buffer, so picows' 1 KiB write buffer only ever holds control
        # frames.
        transport.request = None
        transport.response = None
        transport._write_buffer = MemoryBuffer(CONTROL_FRAME_BUFFER)
        transport.underlying_transport.set_write_buffer_limits(
            high=options.write_buffer_limit, low=options.write_buffer_limit // 2)
        if self.target is None or not self.target.alive:
            self.target = None
            self.close(1011, b"target process is gone", TARGET_EXITED)
            return 0
        self.watch(self.target)
        self.join()
        self.schedule_heartbeat()
        return 0

    cdef int disconnected(self) except -1:
        cdef RelayOptions options = self.options
        self.stop_input()
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.stop_heartbeat()
        if self.leave_reason is None:
            # picows itself failed the connection (a frame it could not parse)
            # or the peer vanished: the close frame it sent tells which.
            self.wire_failed()
        options.connections.discard(self)
        options.node.counters.connections_closed += 1
        if not options.connections and options._empty_waiter is not None:
            waiter = options._empty_waiter
            options._empty_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self.alive:
            options.node.finish(self, self.leave_reason, None)
        self.transport = None
        return 0

    cdef int watch(self, Process target) except -1:
        """Monitor ``target`` (one way: a connection only ever watches its
        target, so it keeps no set of its own)."""
        if target.monitored_by is None:
            target.monitored_by = set()
        target.monitored_by.add(self)
        return 0

    cdef int unwatch(self) except -1:
        if self.target is not None and self.target.monitored_by is not None:
            self.target.monitored_by.discard(self)
        return 0

    cdef int on_exit(self, str reason, object error) except -1:
        if self.groups is not None:
            for members in self.groups:
                (<set>members).discard(self)
            self.groups = None
        if self.target is not None and self.target.alive:
            self.unwatch()
            self.flush_pending_force()
            self.leave(reason, self.leave_code)
        self.target = None
        self.pending = None
        return 0

    cdef int kill(self, str reason, object error) except -1:
        """terminate() or a link: close the connection; the process ends
        when the socket does."""
        if self.transport is None:
            self.node.finish(self, reason, error)
            return 0
        if reason == "normal" or error is None:
            self.close(1000, b"", SERVER_CLOSED)
        else:
            self.close(1011, b"linked process failed", SERVER_CLOSED)
        return 0

    # -- client -> target ----------------------------------------------------------

    cdef int on_frame(self, WSFrame frame) except -1:
        cdef WSMsgType op = frame.msg_type
        cdef Py_ssize_t size = frame.payload_size
        if self.input_closed:
            # picows hands over every frame it parsed from one read, also those
            # after the client's close frame or after one we failed on: the
            # client said its last word, or the connection is being dropped.
            return 0
        if self.transport.is_close_frame_sent and not self.closing:
            # picows failed the connection on a frame it could not parse. It
            # parses one frame ahead, so the frame before the bad one comes
            # after its close frame: last of its read, with the bad bytes
            # behind it. That one is the client's and is acted on; anything
            # later (e.g. the client's answer to that close) is not.
            self.wire_failed()
            if not (frame.last_in_buffer and frame.tail_size > 0):
                return 0
        self.rx_seq += 1
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            return self.fail(1002, "reserved bits set without a negotiated extension", PROTOCOL_ERROR)
        if op == WSMsgType.TEXT or op == WSMsgType.BINARY:
            if self.frag_opcode != 0:
                return self.fail(1002, "new message started before the fragmented one ended", PROTOCOL_ERROR)
            if not frame.fin:
                self.frag_opcode = op
                self.frag_parts = []
                self.frag_tail = None
                self.frag_size = 0
                return self.fragment(frame)
            if size > self.options.max_message_size:
                return self.fail(1009, "message too big", MESSAGE_TOO_BIG)
            if op == WSMsgType.TEXT:
                try:
                    text = PyUnicode_DecodeUTF8(frame.payload_ptr, size, NULL)
                except UnicodeDecodeError:
                    return self.fail(1007, "invalid UTF-8 in text message", PROTOCOL_ERROR)
                return self.relay(text, True, size)
            return self.relay(frame.get_payload_as_bytes(), False, size)
        if op == WSMsgType.CONTINUATION:
            if self.frag_opcode == 0:
                return self.fail(1002, "continuation frame without a message in progress", PROTOCOL_ERROR)
            return self.fragment(frame)
        if op == WSMsgType.CLOSE:
            return self.close_frame(frame)
        if op == WSMsgType.PING:
            # Only seen with picows' auto-pong off (it answers pings before
            # they reach a listener, RSV bits unchecked): answer it here.
            self.transport.send_pong(frame.get_payload_as_bytes())
        # A PONG needs nothing beyond rx_seq.
        return 0

    cdef int fragment(self, WSFrame frame) except -1:
        cdef Py_ssize_t consumed = 0
        cdef Py_ssize_t size = frame.payload_size
        cdef Py_ssize_t total
        cdef bytes chunk
        cdef bint is_text = self.frag_opcode == WSMsgType.TEXT
        self.frag_size += size
        if self.frag_size > self.options.max_message_size:
            return self.fail(1009, "message too big", MESSAGE_TOO_BIG)
        if is_text:
            # Decode each fragment as it arrives, so invalid UTF-8 fails the
            # connection at the first bad frame, not at the end.
            try:
                if self.frag_tail:
                    chunk = self.frag_tail + frame.get_payload_as_bytes()
                    piece = PyUnicode_DecodeUTF8Stateful(PyBytes_AS_STRING(chunk), len(chunk), NULL, &consumed)
                    self.frag_tail = chunk[consumed:]
                else:
                    piece = PyUnicode_DecodeUTF8Stateful(frame.payload_ptr, size, NULL, &consumed)
                    self.frag_tail = PyBytes_FromStringAndSize(frame.payload_ptr + consumed, size - consumed)
            except UnicodeDecodeError:
                return self.fail(1007, "invalid UTF-8 in text message", PROTOCOL_ERROR)
            self.frag_parts.append(piece)
        else:
            self.frag_parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return 0
        parts = self.frag_parts
        total = self.frag_size
        self.frag_parts = None
        self.frag_opcode = 0
        self.frag_size = 0
        if is_text:
            if self.frag_tail:
                self.frag_tail = None
                return self.fail(1007, "text message ends inside a UTF-8 sequence", PROTOCOL_ERROR)
            self.frag_tail = None
            return self.relay("".join(parts), True, total)
        return self.relay(b"".join(parts), False, total)

    cdef dict base_payload(self):
        return {"client_pid": self.pid, "metadata": self.metadata}

    cdef int relay(self, object data, bint is_text, Py_ssize_t nbytes) except -1:
        if self.target is None:
            return 0
        self.message_count += 1
        counters = self.options.node.counters
        counters.ws_messages_in += 1
        counters.ws_bytes_in += nbytes
        payload = {"client_pid": self.pid, "type": "text" if is_text else "binary",
                   "data": data, "metadata": self.metadata}
        return self.push(new_message(self.message_topic, payload, self.pid))

    cdef int push(self, Message msg) except -1:
        """Queue ``msg`` for the target; when its mailbox is full, hold it and
        stop reading from the client until the target makes room."""
        if self.pending:
            self.pending.append(msg)
            return 0
        if self.target.mailbox.push(msg):
            self.options.node.counters.messages_sent += 1
            return 0
        self.pending = deque()
        self.pending.append(msg)
        self.pause()
        return 0

    cdef int pause(self) except -1:
        if self.paused:
            return 0
        self.paused = True
        self.options.node.counters.relay_backpressure_pauses += 1
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()
        self.target.mailbox.add_room_waiter(self._room)
        return 0

    def _room(self):
        """The target's mailbox drained: deliver what was held, then read again."""
        cdef Mailbox mailbox
        cdef Message msg
        self.paused = False
        if not self.alive or self.target is None or self.pending is None:
            return
        mailbox = self.target.mailbox
        while self.pending:
            msg = self.pending[0]
            if not mailbox.push(msg):
                self.paused = True
                mailbox.add_room_waiter(self._room)
                return
            self.pending.popleft()
            self.options.node.counters.messages_sent += 1
            if msg.topic == "ws.heartbeat":
                self.heartbeat_pending = False
        self.pending = None
        if self.transport is not None:
            self.transport.underlying_transport.resume_reading()

    cdef int flush_pending_force(self) except -1:
        """Deliver held messages past the bound: they were read from the
        client already, and a connection that ends or moves must not lose them."""
        cdef Message msg
        if not self.pending:
            return 0
        while self.pending:
            msg = self.pending.popleft()
            self.target.mailbox.push_force(msg)
        self.pending = None
        self.heartbeat_pending = False
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closing:
                self.transport.underlying_transport.resume_reading()
        return 0

    cdef int join(self) except -1:
        return self.push(new_message("ws.join", self.base_payload(), self.pid))

    cdef int leave(self, str reason, object code) except -1:
        payload = self.base_payload()
        payload["reason"] = reason
        payload["code"] = code
        # One per connection: bounded, so it may pass a full mailbox.
        self.target.mailbox.push_force(new_message("ws.leave", payload, self.pid))
        return 0

    cdef int stop_heartbeat(self) except -1:
        if self.heartbeat_handle is not None:
            self.heartbeat_handle.cancel()
            self.heartbeat_handle = None
        return 0

    cdef int schedule_heartbeat(self) except -1:
        self.stop_heartbeat()
        if self.heartbeat_interval > 0 and not self.closing:
            self.heartbeat_handle = self.loop.call_later(self.heartbeat_interval, self._heartbeat)
        return 0

    def _heartbeat(self):
        self.heartbeat_handle = None
        if not self.alive or self.target is None or self.closing:
            return
        if self.heartbeat_pending:
            # The target has not taken the last one yet: one held is enough.
            self.options.node.counters.heartbeats_coalesced += 1
        else:
            payload = self.base_payload()
            payload["uptime"] = self.loop.time() - self.started_at
            payload["message_count"] = self.message_count
            if self.pending:
                self.heartbeat_pending = True
            self.push(new_message("ws.heartbeat", payload, self.pid))
        self.schedule_heartbeat()

    # -- closing --------------------------------------------------------------------

    cdef int close_frame(self, WSFrame frame) except -1:
        """The client's close frame: the last frame it sends (RFC 6455 §5.5.1).
        picows has already refused a 1-byte payload, a code it does not know
        and a reason that is not UTF-8; the codes it knows but a peer must not
        send (0, 1005, 1006, 1015...) are refused here."""
        cdef object code = None
        if frame.payload_size >= 2:
            code = int(frame.get_close_code())
            if not _valid_received_close_code(code):
                return self.fail(1002, f"invalid close code {code}", PROTOCOL_ERROR)
        self.stop_input()
        if self.closing:
            # The client's answer to our close: the handshake is complete.
            self.transport.disconnect()
            return 0
        self.leave_reason = CLIENT_CLOSED
        self.leave_code = code
        self.closing = True
        self.stop_heartbeat()
        # Echo the client's code (RFC 6455 §5.5.1); a close without one is
        # answered with 1000, as picows always writes a 2-byte code.
        self.send_close(code if code is not None else 1000, b"")
        # The server closes the TCP connection first (RFC 6455 §7.1.1).
        self.transport.disconnect()
        return 0

    cdef int wire_failed(self) except -1:
        """picows sent a close frame of its own: a frame it could not parse
        (1002, 1007, 1009), or an exception in this listener (1011). The
        connection is closing; its reason comes from that close frame."""
        cdef object handshake = self.transport.close_handshake
        cdef object sent = None if handshake is None else handshake.sent
        self.closing = True
        self.stop_input()
        self.stop_heartbeat()
        if self.leave_reason is not None:
            return 0
        if sent is not None and sent.code == WSCloseCode.MESSAGE_TOO_BIG:
            self.leave_reason, self.leave_code = MESSAGE_TOO_BIG, 1009
        elif sent is not None and sent.code in (WSCloseCode.PROTOCOL_ERROR, WSCloseCode.INVALID_TEXT):
            self.leave_reason, self.leave_code = PROTOCOL_ERROR, int(sent.code)
        else:
            self.leave_reason = CONNECTION_LOST
        return 0

    cdef int stop_input(self) except -1:
        """Act on no more client frames, and forget a fragmented message in
        progress."""
        self.input_closed = True
        self.frag_opcode = 0
        self.frag_parts = None
        self.frag_tail = None
        self.frag_size = 0
        return 0

    cdef int send_close(self, object code, bytes text) except -1:
        # What was queued before the close goes out before it.
        self.flush()
        self.transport.send_close(<WSCloseCode>(<int>code), text)
        return 0

    cdef int close(self, int code, bytes text, str reason) except -1:
        """Start the close handshake; the socket is dropped when the client
        answers, or after the close timeout."""
        if self.closing or self.transport is None:
            return 0
        self.closing = True
        if self.leave_reason is None:
            self.leave_reason = reason
            self.leave_code = code
        self.stop_heartbeat()
        self.send_close(code, text)
        self.close_timer = self.loop.call_later(self.options.close_timeout, self._close_timeout)
        return 0

    def _close_timeout(self):
        self.close_timer = None
        if self.transport is not None:
            self.transport.disconnect(False)

    cdef int fail(self, int code, str text, str reason) except -1:
        """Fail the connection (RFC 6455 §7.1.7): close frame, then the socket.
        Nothing more the client sent is acted on."""
        self.stop_input()
        if self.transport is None:
            return 0
        if not self.closing:
            self.closing = True
            if self.leave_reason is None:
                self.leave_reason = reason
                self.leave_code = code
            self.stop_heartbeat()
            _log.info("closing %s with %d: %s", self.pid, code, text)
            self.send_close(code, _close_reason_bytes(text))
        self.transport.disconnect()
        return 0

    cdef bint backlogged(self) except -1:
        """True, and the connection closing with 1008, when a frame is to be
        written while more than the write-buffer limit is still unsent. One
        message larger than the limit alone goes out; a client that does not
        read what it was sent before is a slow consumer."""
        if not self.write_backlog:
            return False
        if not self.closing and self.transport is not None:
            self.options.node.counters.slow_consumer_closes += 1
            _log.warning("closing %s: more than %d bytes unsent (slow consumer)",
                         self.pid, self.options.write_buffer_limit)
            self.close(1008, b"slow consumer", SLOW_CONSUMER)
        return True

    # -- anyone -> connection --------------------------------------------------------------

    cdef bint deliver(self, str topic, object payload, Pid sender) except -1:
        if topic == "ws.send":
            return self.ws_send(payload)
        if topic == "ws.close":
            return self.ws_close(payload)
        if topic == "ws.control":
            return self.ws_control(payload)
        raise ValueError(f"{self.pid} is a WebSocket connection: it accepts 'ws.send', 'ws.close' "
                         f"and 'ws.control', not {topic!r}")

    cdef int signal(self, Message msg) except -1:
        if msg.topic != "@exit" or self.target is None or msg.sender != self.target.pid:
            return 0
        self.target = None
        self.pending = None
        if (<dict>msg.payload)["reason"] == "normal":
            self.close(1000, b"", TARGET_EXITED)
        else:
            self.close(1011, b"target process failed", TARGET_EXITED)
        return 0

    cdef int ws_send(self, object payload) except -1:
        cdef Py_ssize_t size = 0
        frame = encode_send(payload, &size)
        return self.offer(frame, size)

    cdef bint offer(self, object frame, Py_ssize_t size) except -1:
        """Queue a frame unless the connection is closing or a slow consumer
        (then it is counted as dropped); whether it was queued."""
        if self.closing or self.transport is None or self.backlogged():
            self.options.node.counters.ws_frames_dropped_closing += 1
            return False
        self.queue(frame, size)
        return True

    cdef int queue(self, object frame, Py_ssize_t size) except -1:
        """Queue a frame (from encode_send) for this loop iteration's flush,
        in order."""
        cdef RelayOptions options = self.options
        cdef Counters counters = options.node.counters
        counters.ws_messages_out += 1
        counters.ws_bytes_out += size
        self.outbox_bytes += size
        self.outbox_frames += 1
        if self.outbox is not None:
            if type(frame) is tuple:
                self.outbox.extend(<tuple>frame)
            else:
                self.outbox.append(frame)
            return 0
        self.outbox = list(<tuple>frame) if type(frame) is tuple else [frame]
        options.dirty.append(self)
        if not options.flush_scheduled:
            options.flush_scheduled = True
            options.loop.call_soon(options._flush)
        return 0

    cdef int flush(self) except -1:
        """Write the queued frames, all in one writev()."""
        cdef list frames = self.outbox
        cdef Counters counters
        if frames is None:
            return 0
        self.outbox = None
        transport = self.transport
        if transport is not None and not transport.is_close_frame_sent and not transport.is_disconnected:
            try:
                if len(frames) == 1:
                    transport.underlying_transport.write(frames[0])
                else:
                    transport.underlying_transport.writelines(frames)
                self.outbox_bytes = 0
                self.outbox_frames = 0
                return 0
            except Exception as exc:
                _log.debug("%s: queued frames not written: %s", self.pid, exc)
        # The connection went away (or picows closed it) since they were queued.
        counters = self.options.node.counters
        counters.ws_frames_dropped_closing += self.outbox_frames
        counters.ws_messages_out -= self.outbox_frames
        counters.ws_bytes_out -= self.outbox_bytes
        self.outbox_bytes = 0
        self.outbox_frames = 0
        return 0

    cdef int ws_close(self, object payload) except -1:
        code = 1000
        reason = None
        if payload is not None:
            if type(payload) is not dict:
                raise ValueError(f"ws.close payload must be a dict {{'code': int, 'reason': str}} or None, "
                                 f"got {type(payload).__name__}")
            code = (<dict>payload).get("code", 1000)
            reason = (<dict>payload).get("reason")
            if code is None:
                code = 1000
        if not _valid_sent_close_code(code):
            raise ValueError(f"ws.close code {code!r} is not one a server may send "
                             "(1000-1003, 1007-1009, 1011-1014, 3000-4999)")
        text = _close_reason_bytes(reason)
        if self.closing or self.transport is None:
            return False
        self.close(code, text, SERVER_CLOSED)
        return True

    cdef int ws_control(self, object payload) except -1:
        if type(payload) is not dict:
            raise ValueError(f"ws.control payload must be a dict, got {type(payload).__name__}")
        unknown = set(payload) - {"target_pid", "message_topic", "metadata", "heartbeat_interval"}
        if unknown:
            raise ValueError(f"ws.control does not know the field(s) {sorted(unknown)}")
        topic = payload.get("message_topic", self.message_topic)
        if type(topic) is not str or not topic or topic[0] == "@":
            raise ValueError(f"ws.control message_topic must be a non-empty str not starting with '@', got {topic!r}")
        metadata = payload.get("metadata", self.metadata)
        if type(metadata) is not dict:
            raise ValueError(f"ws.control metadata must be a dict, got {type(metadata).__name__}")
        interval = self.heartbeat_interval
        if "heartbeat_interval" in payload:
            interval = parse_heartbeat(payload["heartbeat_interval"])
        cdef Process new_target = self.target
        if payload.get("target_pid") is not None:
            new_pid = to_pid(payload["target_pid"])
            new_target = self.options.node.lookup(new_pid)
            if isinstance(new_target, Connection):
                raise ValueError(f"ws.control target_pid {new_pid} is a WebSocket connection, not a process")
            if new_target is None:
                _log.warning("ws.control for %s: target %s is not alive; the connection stays with %s",
                             self.pid, new_pid, None if self.target is None else self.target.pid)
                return True
        if self.target is None or self.closing:
            return True
        if new_target is not self.target:
            self.flush_pending_force()
            self.leave(TRANSFERRED, None)
            self.unwatch()
            self.target = new_target
            self.watch(new_target)
            self.message_topic = topic
            self.metadata = metadata
            self.join()
        else:
            self.message_topic = topic
            self.metadata = metadata
        if interval != self.heartbeat_interval:
            self.heartbeat_interval = interval
            self.schedule_heartbeat()
        return True


def parse_heartbeat(value):
    """Seconds between heartbeats from a relay field: a duration like "30s",
    a number of seconds, or None (no heartbeat). ValueError otherwise."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"heartbeat_interval must be a duration like '30s', got {type(value).__name__}")
    seconds = parse_duration(value)
    if seconds < 0.01:
        raise ValueError(f"heartbeat_interval {value!r} is too short (at least 10ms)")
    return seconds


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
        self.conn.write_backlog = True

    cpdef resume_writing(self):
        self.conn.write_backlog = False
