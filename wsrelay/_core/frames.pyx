# cython: language_level=3
"""WebSocket frames, the wire side of a connection, as pure functions: no
sockets, no processes. What a client's data frames amount to (a message, a
fragment kept for later, or a problem that fails the connection), and the
frames the server writes.

A fragmented message is kept in one growing buffer whatever its frames look
like, so its memory is that of its bytes: a message in a million 1-byte
fragments costs what it would in one frame. A message may have at most as
many frames as the size limit has bytes, so an endless run of empty
continuation frames ends, as any over-long message does, with 1009.

permessage-deflate (RFC 7692, deflate.pyx): on a connection that negotiated
it, RSV1 on the first frame of a message marks it compressed. Its fragments
are inflated as they come, the size limit counted on the inflated bytes (a
small frame that would inflate past it fails with 1009 having inflated at
most the limit), text validated as it is inflated; the target gets the same
message as if it had come uncompressed. Data that is not valid DEFLATE fails
the connection with 1007: the frames were well formed, their payload is not
what the message's type says (RFC 6455 §7.4.1). Outgoing messages are
compressed whole, once, by the worker's compressor, and sent with RSV1.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from picows.picows cimport WSFrame

from .deflate cimport Inflater, acquire_inflater, compress_buffer, inflate_buffer, release_inflater
from .includes.capi cimport _PyBytes_Resize

from .errors import CorruptMessage, MessageTooBig

cdef enum:
    # The buffer of a fragmented message starts at this, then grows by a
    # quarter, so it is never more than a quarter larger than the message.
    FIRST_CAPACITY = 1024

cdef enum:
    OP_CONTINUATION = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA
    # RSV1 in a frame's first byte: the message is compressed.
    RSV1_BIT = 0x40


# -- client frames -> messages -------------------------------------------------------


cdef int problem_code(Problem problem) noexcept:
    if problem == Problem.TOO_BIG:
        return 1009
    if problem == Problem.INVALID_UTF8 or problem == Problem.UTF8_CUT or problem == Problem.CORRUPT_DEFLATE:
        return 1007
    return 1002


cdef str problem_text(Problem problem):
    if problem == Problem.RESERVED_BITS:
        return "reserved bits set without a negotiated extension"
    if problem == Problem.NEW_MESSAGE_INSIDE_FRAGMENTED:
        return "new message started before the fragmented one ended"
    if problem == Problem.CONTINUATION_WITHOUT_MESSAGE:
        return "continuation frame without a message in progress"
    if problem == Problem.TOO_BIG:
        return "message too big"
    if problem == Problem.INVALID_UTF8:
        return "invalid UTF-8 in text message"
    if problem == Problem.UTF8_CUT:
        return "text message ends inside a UTF-8 sequence"
    if problem == Problem.INVALID_CLOSE_CODE:
        return "invalid close code"
    if problem == Problem.MISPLACED_RSV1:
        return "RSV1 set on a frame that does not start a data message"
    if problem == Problem.CORRUPT_DEFLATE:
        return "compressed message is not valid DEFLATE data"
    return ""


cdef Problem check_frame(int opcode, bint fin, int rsv, int fragmented_opcode, bint deflate) noexcept:
    """What RFC 6455 forbids in a frame that picows' parser lets through.
    ``fragmented_opcode`` is the opcode of the message in progress (0: none);
    ``deflate``: the connection negotiated permessage-deflate, whose RSV1 may
    mark the first frame of a message, never a continuation (RFC 7692 §6.1)."""
    if rsv:
        if rsv != RSV1 or not deflate:
            return Problem.RESERVED_BITS
        if opcode != OP_TEXT and opcode != OP_BINARY:
            return Problem.MISPLACED_RSV1
    if opcode == OP_TEXT or opcode == OP_BINARY:
        if fragmented_opcode:
            return Problem.NEW_MESSAGE_INSIDE_FRAGMENTED
    elif opcode == OP_CONTINUATION:
        if not fragmented_opcode:
            return Problem.CONTINUATION_WITHOUT_MESSAGE
    return Problem.OK


cdef object decode_message(int opcode, const char* data, Py_ssize_t size, Py_ssize_t limit, Problem* problem):
    """A whole message from one frame: str for text, bytes for binary; None
    with ``problem`` set when it cannot be one."""
    if size > limit:
        problem[0] = Problem.TOO_BIG
        return None
    if opcode == OP_TEXT:
        try:
            return PyUnicode_DecodeUTF8(data, size, NULL)
        except UnicodeDecodeError:
            problem[0] = Problem.INVALID_UTF8
            return None
    return PyBytes_FromStringAndSize(data, size)


cdef object inflate_message(int opcode, const char* data, Py_ssize_t size, Py_ssize_t limit, Problem* problem):
    """A whole message from one compressed frame, as decode_message."""
    cdef bytearray out = bytearray()
    try:
        inflate_buffer(<const unsigned char*>data, size, out, limit)
    except MessageTooBig:
        problem[0] = Problem.TOO_BIG
        return None
    except CorruptMessage:
        problem[0] = Problem.CORRUPT_DEFLATE
        return None
    return decode_message(opcode, PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out), limit, problem)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint utf8_feed(Utf8State* state, const unsigned char* data, Py_ssize_t size) noexcept nogil:
    """Validate UTF-8 incrementally (RFC 3629: no overlongs, no surrogates,
    nothing above U+10FFFF); False at the first invalid byte. A sequence may
    be cut between two calls: ``state`` carries what it still needs."""
    cdef Py_ssize_t i = 0
    cdef unsigned char b
    cdef int need = state.need
    cdef unsigned char lo = state.lo, hi = state.hi
    while i < size:
        if need == 0:
            # ASCII runs, 8 bytes at a time.
            while i + 8 <= size and ((<const uint64_t*>(data + i))[0] & 0x8080808080808080ULL) == 0:
                i += 8
            if i >= size:
                break
            b = data[i]
            i += 1
            if b < 0x80:
                continue
            lo, hi = 0x80, 0xBF
            if 0xC2 <= b <= 0xDF:
                need = 1
            elif b == 0xE0:
                need, lo = 2, 0xA0
            elif b == 0xED:
                need, hi = 2, 0x9F
            elif 0xE1 <= b <= 0xEF:
                need = 2
            elif b == 0xF0:
                need, lo = 3, 0x90
            elif b == 0xF4:
                need, hi = 3, 0x8F
            elif 0xF1 <= b <= 0xF3:
                need = 3
            else:
                return False
        else:
            b = data[i]
            i += 1
            if b < lo or b > hi:
                return False
            need -= 1
            lo, hi = 0x80, 0xBF
    state.need, state.lo, state.hi = need, lo, hi
    return True


cdef class Assembler:
    """The message in progress of one connection: its opcode, its bytes so
    far in one buffer, its frames so far, and the UTF-8 state of a text
    message (validated as its fragments arrive, so invalid text fails at the
    first bad fragment, not at the end)."""

    def __dealloc__(self):
        Py_XDECREF(self.buffer)

    cdef Problem add(self, const char* data, Py_ssize_t size, bint fin) except *:
        cdef Py_ssize_t need = self.size + size
        self.frames += 1
        if self.inflater is not None:
            return self._inflate(data, size, fin)
        if need > self.limit or self.frames > self.limit:
            return Problem.TOO_BIG
        if self.opcode == OP_TEXT and not utf8_feed(&self.utf8, <const unsigned char*>data, size):
            return Problem.INVALID_UTF8
        if size:
            if need > self.capacity:
                self._grow(need)
            memcpy(PyBytes_AS_STRING(<object>self.buffer) + self.size, data, size)
            self.size = need
        return Problem.OK

    cdef Problem _inflate(self, const char* data, Py_ssize_t size, bint fin) except *:
        cdef Py_ssize_t before = self.size
        if self.frames > self.limit:
            return Problem.TOO_BIG
        self.received += size
        try:
            self.inflater._feed(<const unsigned char*>data, size, self.inflated, self.limit, fin)
        except MessageTooBig:
            return Problem.TOO_BIG
        except CorruptMessage:
            return Problem.CORRUPT_DEFLATE
        self.size = PyByteArray_GET_SIZE(self.inflated)
        if self.opcode == OP_TEXT and not utf8_feed(
                &self.utf8, <const unsigned char*>PyByteArray_AS_STRING(self.inflated) + before, self.size - before):
            return Problem.INVALID_UTF8
        return Problem.OK

    cdef int release(self) except -1:
        """Give the inflater back to the worker's spares (a compressed message
        ends, or is dropped)."""
        cdef Inflater inflater = self.inflater
        if inflater is not None:
            self.inflater = None
            release_inflater(inflater)
        return 0

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t capacity = max(need, FIRST_CAPACITY, self.capacity + self.capacity // 4)
        if capacity > self.limit:
            capacity = self.limit
        if self.buffer == NULL:
            first = PyBytes_FromStringAndSize(NULL, capacity)
            Py_INCREF(first)
            self.buffer = <PyObject*>first
        else:
            # Ours alone (refcount 1), so it can be resized in place; on
            # failure it is freed and the pointer cleared.
            _PyBytes_Resize(&self.buffer, capacity)
        self.capacity = capacity
        return 0

    cdef object finish(self, Problem* problem):
        """The whole message; the buffer is handed over (binary) or freed."""
        cdef Py_ssize_t size = self.size
        cdef const char* inflated
        self.release()
        if self.opcode == OP_TEXT and self.utf8.need:
            problem[0] = Problem.UTF8_CUT
            return None
        if self.inflated is not None:
            inflated = PyByteArray_AS_STRING(self.inflated)
            message = (PyUnicode_DecodeUTF8(inflated, size, NULL) if self.opcode == OP_TEXT
                       else PyBytes_FromStringAndSize(inflated, size))
            self.inflated = None
            self.size = 0
            return message
        if self.buffer == NULL:
            return "" if self.opcode == OP_TEXT else b""
        if self.opcode == OP_TEXT:
            message = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(<object>self.buffer), size, NULL)
        else:
            if size != self.capacity:
                _PyBytes_Resize(&self.buffer, size)
            message = <object>self.buffer
        Py_XDECREF(self.buffer)
        self.buffer = NULL
        self.size = self.capacity = 0
        return message


cdef Assembler new_assembler(int opcode, Py_ssize_t limit):
    cdef Assembler a = Assembler.__new__(Assembler)
    a.opcode = opcode
    a.limit = limit
    a.utf8.need = 0
    return a


cdef class FrameReader:
    """A connection's data frames, in order, made into messages: one per
    connection; it holds only the message in progress, if any."""

    def __init__(self, Py_ssize_t limit, bint deflate=False):
        if limit < 1:
            raise ValueError("the message size limit must be at least 1")
        self.limit = limit
        self.deflate = deflate

    cdef object read(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size,
                     Py_ssize_t* nbytes, Problem* problem):
        """The message this data frame completes (str or bytes, its size in
        ``nbytes``), or None: a fragment was kept, or ``problem`` is set (and
        the message in progress dropped)."""
        cdef Assembler partial = self.partial
        cdef Problem p = check_frame(opcode, fin, rsv, 0 if partial is None else partial.opcode, self.deflate)
        if p == Problem.OK:
            if opcode != OP_CONTINUATION:
                if fin:
                    nbytes[0] = size
                    if rsv:
                        return inflate_message(opcode, data, size, self.limit, problem)
                    return decode_message(opcode, data, size, self.limit, problem)
                partial = self.partial = new_assembler(opcode, self.limit)
                if rsv:
                    partial.inflated = bytearray()
                    partial.inflater = acquire_inflater()
            p = partial.add(data, size, fin)
            if p == Problem.OK:
                if not fin:
                    return None
                self.partial = None
                nbytes[0] = partial.size if partial.inflated is None else partial.received
                return partial.finish(problem)
        self.drop_partial()
        problem[0] = p
        return None

    cdef int drop_partial(self) except -1:
        cdef Assembler partial = self.partial
        self.partial = None
        if partial is not None:
            partial.release()
        return 0

    cdef void reset(self) noexcept:
        # release() fails only on an inflater given back twice, which
        # drop_partial's clearing of the pointer first rules out.
        self.drop_partial()

    @property
    def in_progress(self):
        """The opcode of the fragmented message in progress (0: none)."""
        return 0 if self.partial is None else self.partial.opcode

    @property
    def buffered(self):
        """Bytes held for the fragmented message in progress."""
        return 0 if self.partial is None else self.partial.size

    @property
    def allocated(self):
        """Bytes allocated for them (the buffer grows ahead of its size)."""
        if self.partial is None:
            return 0
        if self.partial.inflated is not None:
            return PyByteArray_GET_SIZE(self.partial.inflated)
        return self.partial.capacity

    @property
    def inflating(self):
        """Whether the message in progress is compressed (holds an inflater)."""
        return self.partial is not None and self.partial.inflater is not None

    def feed(self, WSFrame frame not None):
        """Python-level ``read`` for the core's unit tests: a frame from
        picows' ``_make_test_ws_frame``; returns the message, None, or
        ``(close code, text)`` for a problem."""
        cdef Problem problem = Problem.OK
        cdef Py_ssize_t nbytes = 0
        cdef int rsv = (frame.rsv1 << 2) | (frame.rsv2 << 1) | frame.rsv3
        message = self.read(<int>frame.msg_type, frame.fin, rsv, frame.payload_ptr, frame.payload_size,
                            &nbytes, &problem)
        if problem != Problem.OK:
            return (problem_code(problem), problem_text(problem))
        return message


# -- server frames -------------------------------------------------------------------


cdef inline Py_ssize_t _header_size(Py_ssize_t size) noexcept:
    return 2 if size < 126 else (4 if size < 65536 else 10)


cdef void _write_header(unsigned char* out, int opcode, Py_ssize_t size) noexcept:
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


cdef object send_data(object payload, int* opcode, const char** data, Py_ssize_t* size):
    """The opcode and bytes of a ``ws.send`` payload; returns the object that
    owns the bytes (the str, or bytes). ValueError when the payload is
    malformed. CPython keeps a str's UTF-8 form (an ASCII str is its own), so
    a str sent to many connections is encoded once."""
    opcode[0] = check_send_payload(payload)
    value = (<dict>payload)["data"]
    if opcode[0] == OP_TEXT:
        data[0] = PyUnicode_AsUTF8AndSize(<str>value, size)
        return value
    if type(value) is not bytes:
        value = bytes(value)
    data[0] = PyBytes_AS_STRING(<bytes>value)
    size[0] = PyBytes_GET_SIZE(<bytes>value)
    return value


cdef object _frame_of(int first, object payload, const char* data, Py_ssize_t size):
    """One bytes object, or for a large bytes ``payload`` a (header, payload)
    tuple that shares it."""
    cdef bytes header
    if size <= COPY_LIMIT or type(payload) is not bytes:
        return encode_frame(first, data, size)
    header = PyBytes_FromStringAndSize(NULL, _header_size(size))
    _write_header(<unsigned char*>PyBytes_AS_STRING(header), first, size)
    return (header, payload)


cdef object encode_data_frame(int opcode, object owner, const char* data, Py_ssize_t size, Py_ssize_t* wire):
    """The uncompressed frame of a message from send_data; its payload size in ``wire``."""
    wire[0] = size
    return _frame_of(opcode, owner, data, size)


cdef object encode_deflated_frame(int opcode, const char* data, Py_ssize_t size, int window_bits, Py_ssize_t* wire):
    """The compressed frame (RSV1 set) of a message, with the worker's
    compressor for ``window_bits``; its compressed payload size in ``wire``."""
    cdef bytes compressed = compress_buffer(<const unsigned char*>data, size, window_bits)
    wire[0] = PyBytes_GET_SIZE(compressed)
    return _frame_of(opcode | RSV1_BIT, compressed, PyBytes_AS_STRING(compressed), wire[0])


cdef object encode_send(object payload, Py_ssize_t* size):
    """The frame for a ``ws.send`` payload: one bytes object, or for a large
    bytes payload a (header, payload) tuple that shares the caller's bytes."""
    cdef int opcode = 0
    cdef const char* data = NULL
    owner = send_data(payload, &opcode, &data, size)
    return encode_data_frame(opcode, owner, data, size[0], size)


cdef object encode_send_deflated(object payload, int window_bits, Py_ssize_t min_size, Py_ssize_t* size):
    """encode_send for a connection that negotiated permessage-deflate: a
    message of at least ``min_size`` bytes is compressed, a smaller one goes
    as it is (RFC 7692 §6: per message). ``size``: the payload bytes of the frame."""
    cdef int opcode = 0
    cdef const char* data = NULL
    owner = send_data(payload, &opcode, &data, size)
    if size[0] < min_size:
        return encode_data_frame(opcode, owner, data, size[0], size)
    return encode_deflated_frame(opcode, data, size[0], window_bits, size)


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
        return OP_TEXT
    if kind == "binary":
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"ws.send of type 'binary' needs bytes data, got {type(data).__name__}")
        return OP_BINARY
    raise ValueError(f"ws.send type must be 'text' or 'binary', got {kind!r}")


# -- close frames ---------------------------------------------------------------------


cdef bint valid_received_close_code(int code) noexcept:
    # RFC 6455 §7.4 plus the IANA registry (1012 service restart, 1013 try
    # again later, 1014 bad gateway). Never on the wire: 1004 (reserved), 1005
    # (no status), 1006 (abnormal closure), 1015 (TLS failure).
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef inline bint _valid_sent_close_code(object code):
    return type(code) is int and (
        (1000 <= code <= 1003) or (1007 <= code <= 1009) or (1011 <= code <= 1014) or (3000 <= code <= 4999))


cdef bytes close_reason_bytes(object reason):
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


cdef bytes parse_close_payload(object payload, int* code):
    """The code and reason a ``ws.close`` payload asks for; ValueError when
    malformed."""
    cdef object value = 1000
    reason = None
    if payload is not None:
        if type(payload) is not dict:
            raise ValueError(f"ws.close payload must be a dict {{'code': int, 'reason': str}} or None, "
                             f"got {type(payload).__name__}")
        value = (<dict>payload).get("code", 1000)
        reason = (<dict>payload).get("reason")
        if value is None:
            value = 1000
    if not _valid_sent_close_code(value):
        raise ValueError(f"ws.close code {value!r} is not one a server may send "
                         "(1000-1003, 1007-1009, 1011-1014, 3000-4999)")
    code[0] = value
    return close_reason_bytes(reason)


# -- Python views for the core's unit tests ------------------------------------------------


def frame_for_send(payload, int window_bits=0, Py_ssize_t min_size=0):
    """The bytes a ``ws.send`` payload becomes on the wire; compressed with
    ``window_bits`` (9-15) from ``min_size`` bytes, or plain (0)."""
    cdef Py_ssize_t size = 0
    if window_bits:
        frame = encode_send_deflated(payload, window_bits, min_size, &size)
    else:
        frame = encode_send(payload, &size)
    return b"".join(frame) if type(frame) is tuple else frame


def close_for(payload):
    """(code, reason bytes) of a ``ws.close`` payload."""
    cdef int code = 0
    reason = parse_close_payload(payload, &code)
    return code, reason


def utf8_valid_in_pieces(pieces):
    """Whether the concatenation of ``pieces`` (bytes) is valid, complete
    UTF-8, fed one piece at a time."""
    cdef Utf8State state
    state.need = 0
    for piece in pieces:
        if not utf8_feed(&state, <const unsigned char*>PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece)):
            return False
    return state.need == 0
