# cython: language_level=3
"""The server API's request path, compiled (wsrelay/api.py, docs/api.md).

``ApiCore`` is the base of ``wsrelay.api.ApiProtocol``: it owns the read
buffer and the connection's timer, and reads what a client sends. The
common request, a whole ``POST /api/<method>`` with a Content-Length, the
right key and none of the headers that change how HTTP/1.1 goes on
(Connection other than keep-alive, Expect, Transfer-Encoding, Upgrade), is
parsed here in one pass over the buffer, with no Python call per header;
a ``publish`` without idempotency key on a node without a cluster keeper
is published from here (``channels.publish_checked``), and the answers of every
request of one read go out in one write.

Anything else -- a request cut across reads, another header than those,
a wrong key, a body too large, an unknown method, a body that does not
pass the quick checks -- is fed, from its first byte, to httptools and the
Python code of ApiProtocol, which decides every answer as it always has
(the statuses, the bodies, the counters). The quick path only takes what
that code would answer 200 the same way, and leaves the rest to it.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.ref cimport PyObject
from libc.string cimport memcmp, strlen

import collections

import orjson

from .channels cimport publish_checked
from .history cimport cluster_keeper
from .relayspec cimport check_channel_name
from .runtime cimport calling_process
from .writer cimport hold_flushes, release_flushes

cdef enum:
    READ_BUFFER = 16384
    # A Content-Length of more digits is too large anyway (api.py says so too).
    MAX_LENGTH_DIGITS = 18

# The answer of a publish on a channel without history.
cdef bytes _EMPTY_RESULT = b'{"result":{}}'
cdef str _PUBLISH = "publish"
cdef tuple _PUBLISH_200 = (_PUBLISH, 200)
cdef object _MISSING = object()
cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError

# What a header is to the quick path.
cdef enum Header:
    OTHER
    AUTHORIZATION
    CONTENT_LENGTH
    KEEP_ALIVE      # Connection: keep-alive, HTTP/1.1's default anyway
    REFUSED         # one the quick path leaves to httptools


cdef struct Parsed:
    Py_ssize_t name_at      # the method's name, after /api/
    Py_ssize_t name_len
    Py_ssize_t body_at
    Py_ssize_t body_len


# Per byte: 1 when it may be in a header's name (an HTTP token, RFC 9110),
# 2 when in a header's value (visible ASCII, space, tab).
cdef unsigned char _CLASS[256]


cdef int _classes() except -1:
    cdef int c
    for c in range(256):
        _CLASS[c] = 0
        if b'a' <= c <= b'z' or b'A' <= c <= b'Z' or b'0' <= c <= b'9' or c in b"!#$%&'*+-.^_`|~":
            _CLASS[c] |= 1
        if 0x20 <= c < 0x7f or c == b'\t':
            _CLASS[c] |= 2
    return 0


_classes()


cdef inline unsigned char _lower(unsigned char c) noexcept:
    return c + 32 if b'A' <= c <= b'Z' else c


cdef inline bint _named(const unsigned char* p, Py_ssize_t n, const char* lowered) noexcept:
    """Whether the ``n`` bytes at ``p`` are ``lowered`` (NUL-terminated),
    whatever their case. Inlined, its length is the C compiler's constant:
    a name of another length costs one comparison."""
    cdef Py_ssize_t i
    if <size_t>n != strlen(lowered):
        return False
    for i in range(n):
        if _lower(p[i]) != <unsigned char>lowered[i]:
            return False
    return True


cdef Header _kind(const unsigned char* name, Py_ssize_t n, const unsigned char* value, Py_ssize_t vn) noexcept:
    cdef unsigned char first = _lower(name[0])
    if first == b'a':
        return AUTHORIZATION if _named(name, n, "authorization") else OTHER
    if first == b'c':
        if _named(name, n, "content-length"):
            return CONTENT_LENGTH
        if _named(name, n, "connection"):
            return KEEP_ALIVE if _named(value, vn, "keep-alive") else REFUSED
        return OTHER
    if first == b'e':
        return REFUSED if _named(name, n, "expect") else OTHER
    if first == b't':
        return REFUSED if _named(name, n, "transfer-encoding") else OTHER
    if first == b'u':
        return REFUSED if _named(name, n, "upgrade") else OTHER
    if first == b'p':
        return REFUSED if _named(name, n, "proxy-connection") else OTHER
    return OTHER


cdef bint _same(const unsigned char* a, Py_ssize_t an, const unsigned char* b, Py_ssize_t bn) noexcept:
    """``a == b`` in a time that tells nothing of where they differ (as
    hmac.compare_digest: only their lengths)."""
    cdef unsigned char diff = 0
    cdef Py_ssize_t i
    if an != bn:
        return False
    for i in range(an):
        diff |= a[i] ^ b[i]
    return diff == 0


cdef inline bint _space(unsigned char c) noexcept:
    # What bytes.strip() strips, of what a header value may hold.
    return c == b' ' or c == b'\t'


cdef class ApiCore:
    """The compiled half of one API connection (see the module's doc)."""

    cdef public object api
    cdef public object transport
    cdef public object parser
    cdef public object queue
    cdef public bint busy
    cdef public bint in_request
    cdef public bint stopped
    cdef public object timer
    cdef public double timer_at
    cdef public double deadline
    cdef bytearray data
    cdef object view
    cdef object loop
    cdef bytes key
    cdef bint quick
    cdef Py_ssize_t max_body
    cdef Py_ssize_t max_head
    cdef double request_timeout
    cdef object requests
    cdef bint counter       # requests is a collections.Counter: counted with the dict's C API
    cdef dict heads
    cdef bytes published

    def __init__(self, api, dict heads not None):
        self.api = api
        # Status -> the head of an answer up to its Content-Length's value.
        self.heads = heads
        self.published = self.head(200, _EMPTY_RESULT)
        self.data = bytearray(READ_BUFFER)
        self.view = memoryview(self.data)
        self.loop = api.loop
        self.key = api.key
        # The API is off (every request answered 404 saying so): no quick path.
        self.quick = api.off is None and len(self.key) > 0
        self.max_body = api.max_body
        self.max_head = api.max_head
        self.request_timeout = api.request_timeout
        self.requests = api.requests
        self.counter = type(self.requests) is collections.Counter
        self.timer = None

    def get_buffer(self, Py_ssize_t sizehint):
        return self.view

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef Py_ssize_t done = 0
        if self.stopped:
            return
        if self.quick and not self.in_request and not self.busy and not self.queue:
            done = self._quick(nbytes)
            if done == nbytes or self.stopped or self.transport is None:
                return
        self.feed(self.view[done:nbytes])

    # -- the quick path --------------------------------------------------------------------------

    cdef Py_ssize_t _quick(self, Py_ssize_t nbytes) except -1:
        """Answer the whole quick requests at the start of the buffer's
        ``nbytes``; how many bytes they were (the rest is httptools').
        The frames their publications queue are written first, then their
        answers, all in one write."""
        cdef list answers = []
        cdef Py_ssize_t done
        hold_flushes()
        try:
            done = self._answer_quick(nbytes, answers)
        finally:
            release_flushes()
        if answers:
            self._send(answers)
            self.arm(self.request_timeout)
        return done

    cdef Py_ssize_t _answer_quick(self, Py_ssize_t nbytes, list answers) except -1:
        cdef const unsigned char* buf = <const unsigned char*>PyByteArray_AS_STRING(self.data)
        cdef Py_ssize_t pos = 0, used
        cdef Parsed req
        cdef object answer
        while pos < nbytes:
            used = self._parse(buf + pos, nbytes - pos, &req)
            if used == 0:
                break
            raw = PyBytes_FromStringAndSize(<const char*>buf + pos + req.body_at, req.body_len)
            answer = None
            if req.name_len == 7 and _named(buf + pos + req.name_at, 7, "publish"):
                answer = self._publish(raw)
            if answer is None:
                # Another method, or a publish the quick checks leave to
                # api.py: after the answers before it, as httptools' path would.
                name = (<const char*>buf)[pos + req.name_at:pos + req.name_at + req.name_len].decode("ascii")
                if answers:
                    self._send(answers)
                    del answers[:]
                pos += used
                self.take_whole(name, raw)
                if self.busy or self.queue or self.stopped or self.transport is None:
                    return pos
                continue
            pos += used
            answers.append(answer)
        return pos

    cdef int _send(self, list answers) except -1:
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        transport.write(answers[0] if len(answers) == 1 else b"".join(answers))
        return 0

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, Parsed* req) noexcept:
        """The length of the whole quick request at ``p`` (its parts in
        ``req``), or 0: not one (incomplete, or httptools' to answer)."""
        cdef Py_ssize_t i = 10, start, name_end, value_at, value_end, length = -1, head = 0, k
        cdef unsigned char c
        cdef Header kind
        cdef bint authorized = False, seen_auth = False
        # The request line: "POST /api/<name> HTTP/1.1", the name [a-z_]+.
        if n < 28 or memcmp(p, b"POST /api/", 10) != 0:
            return 0
        start = i
        while i < n and (b'a' <= p[i] <= b'z' or p[i] == b'_'):
            i += 1
        name_end = i
        if name_end == start or n - i < 11 or memcmp(p + i, b" HTTP/1.1\r\n", 11) != 0:
            return 0
        req.name_at = start
        req.name_len = name_end - start
        head = name_end - 5  # what on_url counts: the path
        i += 11
        # The headers, up to the empty line.
        while True:
            if n - i < 2:
                return 0
            if p[i] == b'\r':
                if p[i + 1] != b'\n':
                    return 0
                i += 2
                break
            start = i
            while i < n and _CLASS[p[i]] & 1:
                i += 1
            if i == start or i >= n or p[i] != b':':
                return 0
            name_end = i
            i += 1
            while i < n and _space(p[i]):
                i += 1
            value_at = i
            while i < n and _CLASS[p[i]] & 2:
                i += 1
            if n - i < 2 or p[i] != b'\r' or p[i + 1] != b'\n':
                return 0
            value_end = i
            if value_end > value_at and _space(p[value_end - 1]):
                return 0  # trailing white space: httptools' to judge
            i += 2
            head += (name_end - start) + (value_end - value_at) + 4
            kind = _kind(p + start, name_end - start, p + value_at, value_end - value_at)
            if kind == REFUSED:
                return 0
            if kind == AUTHORIZATION:
                if seen_auth:
                    return 0
                seen_auth = True
                authorized = self._authorized(p + value_at, value_end - value_at)
            elif kind == CONTENT_LENGTH:
                if length >= 0 or value_end == value_at or value_end - value_at > MAX_LENGTH_DIGITS:
                    return 0
                length = 0
                for k in range(value_at, value_end):
                    c = p[k]
                    if not b'0' <= c <= b'9':
                        return 0
                    length = length * 10 + (c - 48)  # c - '0'
        if not authorized or length < 0 or length > self.max_body or head > self.max_head or n - i < length:
            return 0
        req.body_at = i
        req.body_len = length
        return i + length

    cdef bint _authorized(self, const unsigned char* value, Py_ssize_t n) noexcept:
        """Api.authorized: ``apikey <key>``, the scheme in any case."""
        cdef Py_ssize_t i = 0, end = n
        while i < n and value[i] != b' ':
            i += 1
        if not _named(value, i, "apikey") or i == n:
            return False
        i += 1
        while i < end and _space(value[i]):
            i += 1
        while end > i and _space(value[end - 1]):
            end -= 1
        return _same(value + i, end - i, <const unsigned char*><const char*>self.key, len(self.key))

    cdef object _publish(self, bytes raw):
        """The whole answer of a quick publish, or None: api.py's to answer."""
        if cluster_keeper() is not None:
            return None  # numbered by the cluster's keeper: api.py awaits it
        try:
            body = _loads(raw)
        except _JSONDecodeError:
            return None
        if type(body) is not dict:
            return None
        channel = (<dict>body).get("channel")
        data = (<dict>body).get("data", _MISSING)
        if type(channel) is not str or data is _MISSING or (<dict>body).get("idempotency_key") is not None:
            return None
        try:
            channel = check_channel_name(channel)
        except ValueError:
            return None  # api.py names the field in its answer
        try:
            result = publish_checked(calling_process("channels.publish").node, channel, data)
        except Exception as exc:
            # As Api.answer answers a method that raised.
            api = self.api
            status, answer = api.failed(_PUBLISH, api._error(_PUBLISH, exc))
            return self.head(status, answer)
        self._count()
        if result is None or (type(result) is dict and not result):
            return self.published
        return self.head(200, b'{"result":' + _dumps(result) + b"}")

    cdef int _count(self) except -1:
        """``requests[("publish", 200)] += 1``."""
        cdef PyObject* n
        if not self.counter:
            self.requests[_PUBLISH_200] += 1
            return 0
        # A Counter's missing key is 0; its key a tuple of a str and an int (hashed without fail).
        n = PyDict_GetItem(self.requests, _PUBLISH_200)
        PyDict_SetItem(self.requests, _PUBLISH_200, 1 if n is NULL else <object>n + 1)
        return 0

    cdef bytes head(self, int status, bytes body):
        return b"%s%d\r\n\r\n%s" % (self.heads[status], len(body), body)

    # -- for the Python half ----------------------------------------------------------------------

    def feed(self, data):
        """Parse ``data`` with httptools (ApiProtocol's callbacks)."""
        raise NotImplementedError

    def take_whole(self, str name, bytes body):
        """A whole keep-alive request parsed here, for ApiProtocol to answer."""
        raise NotImplementedError

    cdef int arm(self, double seconds) except -1:
        # One timer per connection, moved later by setting a float (a
        # request and the idle time after it have the same bound, so a
        # request costs no timer of its own); made anew only to fire sooner.
        cdef double deadline = self.loop.time() + seconds
        self.deadline = deadline
        if self.timer is None or deadline < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline
        return 0

    def _arm(self, double seconds):
        """Bound the connection's time to ``seconds`` from now."""
        self.arm(seconds)

    def _on_timer(self):
        raise NotImplementedError
