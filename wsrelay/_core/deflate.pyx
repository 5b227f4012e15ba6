# cython: language_level=3
"""permessage-deflate (RFC 7692): negotiation, compression, bounded inflation.

The gateway always agrees on ``server_no_context_takeover`` and
``client_no_context_takeover``: every message is a DEFLATE stream of its own,
so a worker keeps one compressor per window size and a few inflaters, shared
by all its connections, and a connection holds no zlib state between messages.
Nothing here releases the GIL: the shared streams are used by one call at a time.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memset

from .includes cimport zlib

from .errors import CorruptMessage, MessageTooBig

EXTENSION = "permessage-deflate"
# zlib's level for outgoing messages: measured in docs/performance.md.
COMPRESSION_LEVEL = 1
ZLIB_VERSION = zlib.zlibVersion().decode("ascii")

# zlib cannot write a raw DEFLATE stream with a 256-byte window (it uses 512),
# so an offer that limits the server to 8 bits cannot be honoured.
MIN_SERVER_WINDOW_BITS = 9
MAX_WINDOW_BITS = 15

# RFC 7692 §7.2.1: a sync flush ends with an empty stored block, whose last
# four octets the sender removes and the receiver appends.
cdef const unsigned char* _TAIL = b"\x00\x00\xff\xff"
# deflateBound() counts a Z_FINISH ending; a sync flush's empty stored block
# and its byte alignment need a few bytes more.
cdef size_t _FLUSH_MARGIN = 16
# A compressor keeps output space up to this size between messages; a larger
# message's is freed after use.
cdef size_t _KEEP_SCRATCH = 256 * 1024
# zlib counts bytes in an unsigned int: larger messages are refused (the
# gateway's message limit is at most 1 GiB).
cdef Py_ssize_t _MAX_INPUT = 1 << 30
# First output space offered per inflate call, then doubled with what the
# message has produced so far.
cdef Py_ssize_t _MIN_INFLATE_STEP = 4096
# Spare inflaters a worker keeps: one per connection in the middle of a
# fragmented compressed message at the same time, more are freed on release.
cdef Py_ssize_t _KEEP_INFLATERS = 8
cdef int _MEM_LEVEL = 8


# -- negotiation (RFC 7692 §7.1) ----------------------------------------------------


cdef int _check_init(int rc, str what) except -1:
    """zlib's answer to setting up a stream, as Python sees a failure."""
    if rc == zlib.Z_MEM_ERROR:
        raise MemoryError()
    if rc != zlib.Z_OK:
        raise RuntimeError(f"{what} failed ({rc})")
    return 0

cdef class DeflateParams:
    """What was agreed with one client; shared by every connection that agreed the same."""

    def __cinit__(self, int server_max_window_bits, int client_max_window_bits, str response):
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.response = response

    def __repr__(self):
        return (f"DeflateParams(server_max_window_bits={self.server_max_window_bits}, "
                f"client_max_window_bits={self.client_max_window_bits})")


cdef frozenset _TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789"
                                  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
cdef dict _WINDOW_BITS = {str(n): n for n in range(8, MAX_WINDOW_BITS + 1)}
cdef frozenset _PARAMS = frozenset((
    "server_no_context_takeover", "client_no_context_takeover",
    "server_max_window_bits", "client_max_window_bits",
))
cdef dict _agreed = {}


cdef bint _is_token(str text):
    if not text:
        return False
    for ch in text:
        if ch not in _TCHAR:
            return False
    return True


cdef list _split(str header):
    """The header's elements, each a list of its ';'-separated parts; ',' and
    ';' inside a quoted string separate nothing."""
    cdef list offers = []
    cdef list parts = []
    cdef Py_ssize_t start = 0, i = 0, n = len(header)
    cdef bint quoted = False
    cdef str ch
    while i < n:
        ch = header[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ";" or ch == ",":
            parts.append(header[start:i])
            start = i + 1
            if ch == ",":
                offers.append(parts)
                parts = []
        i += 1
    parts.append(header[start:])
    offers.append(parts)
    return offers


cdef object _unquote(str value):
    """A parameter's value (token or quoted-string) as a token, or None if malformed."""
    cdef list out
    cdef Py_ssize_t i, n
    cdef str text
    if not value.startswith('"'):
        return value if _is_token(value) else None
    if len(value) < 2 or not value.endswith('"'):
        return None
    out = []
    i, n = 1, len(value) - 1
    while i < n:
        if value[i] == "\\":
            i += 1
            if i == n:
                return None
        elif value[i] == '"':
            return None
        out.append(value[i])
        i += 1
    text = "".join(out)
    # RFC 7692 §7.1: a quoted value must still be a token once unquoted.
    return text if _is_token(text) else None


cdef object _parse_params(list parts):
    """{name: value or None} of one offer's parameters, or None if the offer is malformed."""
    cdef dict params = {}
    cdef str part, name
    cdef object value
    for part in parts:
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        if not _is_token(name) or name in params:
            return None
        if eq:
            value = _unquote(raw.strip())
            if value is None:
                return None
        else:
            value = None
        params[name] = value
    return params


cdef DeflateParams _accept(dict params):
    """The parameters agreed for one offer, or None if it cannot be honoured."""
    cdef int server_bits = MAX_WINDOW_BITS, client_bits = MAX_WINDOW_BITS
    cdef bint echo_client_bits = False
    cdef tuple key
    cdef list response
    for name, value in params.items():
        if name not in _PARAMS:
            return None
        if name.endswith("no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            bits = _WINDOW_BITS.get(value)
            if bits is None or bits < MIN_SERVER_WINDOW_BITS:
                return None
            server_bits = bits
        elif value is not None:
            bits = _WINDOW_BITS.get(value)
            if bits is None:
                return None
            client_bits = bits
            echo_client_bits = True
    key = (server_bits, client_bits, "server_max_window_bits" in params, echo_client_bits)
    agreed = _agreed.get(key)
    if agreed is None:
        response = [EXTENSION, "server_no_context_takeover", "client_no_context_takeover"]
        if key[2]:
            response.append(f"server_max_window_bits={server_bits}")
        if echo_client_bits:
            response.append(f"client_max_window_bits={client_bits}")
        agreed = DeflateParams(server_bits, client_bits, "; ".join(response))
        _agreed[key] = agreed
    return agreed


def negotiate(offers, enabled):
    """Answer a Sec-WebSocket-Extensions request header (several headers joined
    with ", "): ``(params, response header value)`` for the first
    permessage-deflate offer that can be honoured, ``(None, None)`` when none
    can or compression is off. Never raises over the header's content."""
    cdef list parts
    cdef DeflateParams agreed
    if not enabled or not offers:
        return None, None
    for parts in _split(offers):
        if (<str>parts[0]).strip().lower() != EXTENSION:
            continue
        params = _parse_params(parts[1:])
        if params is None:
            continue
        agreed = _accept(params)
        if agreed is not None:
            return agreed, agreed.response
    return None, None


# -- compression (RFC 7692 §7.2.1) ----------------------------------------------------

cdef class Deflater:
    """A raw DEFLATE compressor reset for every message (no context takeover)."""

    def __cinit__(self, int window_bits=MAX_WINDOW_BITS, int level=COMPRESSION_LEVEL):
        if not MIN_SERVER_WINDOW_BITS <= window_bits <= MAX_WINDOW_BITS:
            raise ValueError(f"window_bits must be {MIN_SERVER_WINDOW_BITS}..{MAX_WINDOW_BITS}, got {window_bits}")
        if not -1 <= level <= 9:
            raise ValueError(f"level must be -1..9, got {level}")
        self._ready = False
        self._scratch = NULL
        self._scratch_size = 0
        self.window_bits = window_bits
        self.level = level
        memset(&self._strm, 0, sizeof(self._strm))
        _check_init(zlib.deflateInit2(&self._strm, level, zlib.Z_DEFLATED, -window_bits, _MEM_LEVEL,
                                      zlib.Z_DEFAULT_STRATEGY), "deflateInit2")
        self._ready = True

    def __dealloc__(self):
        if self._ready:
            zlib.deflateEnd(&self._strm)
        PyMem_Free(self._scratch)

    cdef int _reserve(self, size_t size) except -1:
        cdef unsigned char* grown
        if size <= self._scratch_size:
            return 0
        grown = <unsigned char*>PyMem_Realloc(self._scratch, size)
        if grown == NULL:
            raise MemoryError()
        self._scratch = grown
        self._scratch_size = size
        return 0

    cdef void _trim_scratch(self):
        if self._scratch_size > _KEEP_SCRATCH:
            PyMem_Free(self._scratch)
            self._scratch = NULL
            self._scratch_size = 0

    cdef bytes _compress(self, const unsigned char* data, Py_ssize_t size):
        cdef int rc
        cdef size_t used = 0
        if size > _MAX_INPUT:
            raise OverflowError(f"cannot compress a message of {size} bytes (at most {_MAX_INPUT})")
        # Reset before, not after: a message that failed half-way leaves no trace.
        zlib.deflateReset(&self._strm)
        self._reserve(zlib.deflateBound(&self._strm, size) + _FLUSH_MARGIN)
        self._strm.next_in = data
        self._strm.avail_in = <zlib.uInt>size
        try:
            while True:
                self._strm.next_out = self._scratch + used
                self._strm.avail_out = <zlib.uInt>(self._scratch_size - used)
                rc = zlib.deflate(&self._strm, zlib.Z_SYNC_FLUSH)
                used = self._scratch_size - self._strm.avail_out
                if rc != zlib.Z_OK and rc != zlib.Z_BUF_ERROR:
                    raise RuntimeError(f"deflate failed ({rc})")
                # zlib: a flush is complete when deflate leaves output space unused.
                if self._strm.avail_out:
                    break
                self._reserve(self._scratch_size * 2)
            if used < 4:
                raise RuntimeError("deflate ended without its sync flush marker")
            return PyBytes_FromStringAndSize(<char*>self._scratch, used - 4)
        finally:
            self._trim_scratch()

    def compress(self, data) -> bytes:
        """One message (bytes-like, or str as UTF-8), without the trailing 0x00 0x00 0xff 0xff."""
        cdef Py_buffer view
        cdef const char* utf8
        cdef Py_ssize_t size
        if isinstance(data, str):
            utf8 = PyUnicode_AsUTF8AndSize(data, &size)
            return self._compress(<const unsigned char*>utf8, size)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._compress(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)


cdef list _deflaters = [None] * (MAX_WINDOW_BITS + 1)


cdef Deflater deflater_for(int window_bits):
    cdef Deflater found
    if not MIN_SERVER_WINDOW_BITS <= window_bits <= MAX_WINDOW_BITS:
        raise ValueError(f"window_bits must be {MIN_SERVER_WINDOW_BITS}..{MAX_WINDOW_BITS}, got {window_bits}")
    found = _deflaters[window_bits]
    if found is None:
        found = Deflater(window_bits, COMPRESSION_LEVEL)
        _deflaters[window_bits] = found
    return found


cdef bytes compress_buffer(const unsigned char* data, Py_ssize_t size, int window_bits):
    return deflater_for(window_bits)._compress(data, size)


def compress(data, int window_bits=MAX_WINDOW_BITS) -> bytes:
    """One message with the worker's compressor for ``window_bits``."""
    return deflater_for(window_bits).compress(data)


# -- decompression (RFC 7692 §7.2.2) --------------------------------------------------

cdef class Inflater:
    """A raw DEFLATE decompressor for one message at a time, fed fragment by
    fragment, that never inflates more than the message's size limit."""

    def __cinit__(self):
        self._ready = False
        self._active = False
        self._produced = 0
        memset(&self._strm, 0, sizeof(self._strm))
        # A 15-bit window inflates whatever window the client compresses with.
        _check_init(zlib.inflateInit2(&self._strm, -MAX_WINDOW_BITS), "inflateInit2")
        self._ready = True

    def __dealloc__(self):
        if self._ready:
            zlib.inflateEnd(&self._strm)

    @property
    def produced(self) -> int:
        """Bytes inflated for the current (or last) message."""
        return self._produced

    cdef int _begin(self) except -1:
        zlib.inflateReset(&self._strm)
        self._active = True
        self._produced = 0
        return 0

    cdef int _feed(self, const unsigned char* data, Py_ssize_t size, bytearray out,
                   Py_ssize_t max_size, bint fin) except -1:
        if not self._active:
            raise RuntimeError("Inflater.feed outside a message: begin() first")
        if size > _MAX_INPUT:
            raise OverflowError(f"cannot inflate a fragment of {size} bytes (at most {_MAX_INPUT})")
        try:
            if size:
                self._inflate(data, size, out, max_size)
            if fin:
                self._inflate(_TAIL, 4, out, max_size)
        except BaseException:
            self._active = False
            raise
        if fin:
            self._active = False
        return 0

    cdef int _inflate(self, const unsigned char* data, Py_ssize_t size, bytearray out,
                      Py_ssize_t max_size) except -1:
        cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
        cdef Py_ssize_t used = start, capacity = start, remaining, offered, got
        cdef unsigned char probe
        cdef int rc
        self._strm.next_in = data
        self._strm.avail_in = <zlib.uInt>size
        try:
            while True:
                remaining = max_size - self._produced
                if remaining > 0:
                    if used == capacity:
                        capacity = used + min(remaining, _MAX_INPUT,
                                              max(_MIN_INFLATE_STEP, 4 * size, self._produced))
                        PyByteArray_Resize(out, capacity)
                    offered = capacity - used
                    self._strm.next_out = <unsigned char*>PyByteArray_AS_STRING(out) + used
                else:
                    # At the limit: one byte more than it, and no more, tells
                    # whether the message goes past it.
                    offered = 1
                    self._strm.next_out = &probe
                self._strm.avail_out = <zlib.uInt>offered
                rc = zlib.inflate(&self._strm, zlib.Z_SYNC_FLUSH)
                got = offered - self._strm.avail_out
                if remaining <= 0:
                    if got:
                        raise MessageTooBig(f"the message inflates to more than {max_size} bytes")
                else:
                    used += got
                    self._produced += got
                # After the final block zlib consumes nothing more and answers
                # Z_STREAM_END again: the rest is not part of the DEFLATE stream.
                if rc == zlib.Z_STREAM_END:
                    return 0
                if rc == zlib.Z_DATA_ERROR or rc == zlib.Z_NEED_DICT:
                    if self._strm.msg != NULL:
                        raise CorruptMessage((<bytes>self._strm.msg).decode("ascii", "replace"))
                    raise CorruptMessage(f"inflate failed ({rc})")
                if rc == zlib.Z_MEM_ERROR:
                    raise MemoryError()
                if rc != zlib.Z_OK and rc != zlib.Z_BUF_ERROR:
                    raise RuntimeError(f"inflate failed ({rc})")
                # zlib stops with output space left only when it needs more input.
                if self._strm.avail_out:
                    return 0
        finally:
            if capacity != used:
                PyByteArray_Resize(out, used)

    def begin(self) -> None:
        """Start a message (forgetting whatever was left of the last one)."""
        self._begin()

    def feed(self, data, bytearray out not None, Py_ssize_t max_size, bint fin) -> None:
        """Inflate one fragment's payload, appending to ``out``; ``fin`` on the
        last one. Raises MessageTooBig when the message would inflate to more
        than ``max_size`` bytes in all (having appended at most that many), or
        CorruptMessage; either ends the message."""
        cdef Py_buffer view
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len, out, max_size, fin)
        finally:
            PyBuffer_Release(&view)


cdef list _spare_inflaters = []


cpdef Inflater acquire_inflater():
    """A worker's spare inflater (or a new one), begun for a message."""
    cdef Inflater inflater
    if _spare_inflaters:
        inflater = _spare_inflaters.pop()
    else:
        inflater = Inflater()
    inflater._begin()
    return inflater


cpdef bint release_inflater(Inflater inflater) except -1:
    """Give an inflater back at its message's end (or its connection's); True
    when it is kept as a spare, False when it is freed."""
    cdef Inflater spare
    for spare in _spare_inflaters:
        if spare is inflater:
            raise RuntimeError("release_inflater: this inflater was already released")
    inflater._active = False
    if len(_spare_inflaters) < _KEEP_INFLATERS:
        _spare_inflaters.append(inflater)
        return True
    return False


cdef int inflate_buffer(const unsigned char* data, Py_ssize_t size, bytearray out,
                        Py_ssize_t max_size) except -1:
    cdef Inflater inflater = acquire_inflater()
    try:
        inflater._feed(data, size, out, max_size, True)
    finally:
        release_inflater(inflater)
    return 0


def inflate(data, Py_ssize_t max_size) -> bytes:
    """A whole message's payload, inflated; MessageTooBig past ``max_size`` bytes."""
    cdef Py_buffer view
    cdef bytearray out = bytearray()
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        inflate_buffer(<const unsigned char*>view.buf, view.len, out, max_size)
    finally:
        PyBuffer_Release(&view)
    return bytes(out)
