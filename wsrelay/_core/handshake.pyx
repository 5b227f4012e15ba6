# cython: language_level=3
"""The first bytes of every connection: its HTTP request, read under bounds
before picows sees it.

A HandshakeGuard is the protocol of every accepted socket until the request
head (request line, headers, blank line) is complete: then it hands the
socket and the bytes read so far to a picows protocol (made by
picows_private.server_protocol_factory), which upgrades or answers as usual. What the guard adds (docs/guide.md, "What the server answers"):

- a head over ``max_head`` bytes is answered ``431 Request Header Fields Too
  Large`` (picows alone would drop the socket without a word);
- a client that has not sent its whole head within the handshake timeout is
  dropped, so half-open handshakes hold a socket and a small buffer for at
  most that long, and cost established connections nothing;
- every refusal is counted, by reason, for /metrics;
- the socket's receive buffer is set (WSRELAY_SOCKET_RECEIVE_BUFFER), which
  bounds the read buffer picows grows for a client that floods;
- a request for one of ``routes`` (a path) waits here for a coroutine:
  picows' request handling cannot wait, and some answers must (the
  machine's /metrics, gathered from every worker over the bus; an
  ``async def`` endpoint). Meanwhile nothing more is read from the client,
  so it holds its socket and its head, no more; the coroutine bounds its
  own time. Its outcome is an answer written here (bytes), a picows
  protocol factory that the socket is then handed to as usual (an upgrade
  or a response decided by the endpoint), or None (nothing left to do);
- a request whose path starts with one of ``prefixes`` (as sent: not
  percent-decoded) is handed straight to that prefix's protocol factory,
  with the bytes read so far (the server API, wsrelay/api.py, which then
  keeps the connection for its keep-alive requests).
"""

import asyncio
import logging
from http import HTTPStatus
from urllib.parse import unquote, unquote_to_bytes

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport (PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_DecodeLatin1,
                               PyUnicode_GET_LENGTH, PyUnicode_KIND)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit
from cpython.exc cimport PyErr_SetFromErrno
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from libc.limits cimport INT_MAX
from libc.string cimport memchr, memcmp, memcpy

cdef extern from "<sys/socket.h>":
    enum:
        SOL_SOCKET
        SO_RCVBUF
    int setsockopt(int fd, int level, int name, const void* value, unsigned int length)

cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject** presult)

cdef extern from "<strings.h>":
    int strncasecmp(const char* a, const char* b, size_t n)

from multidict import CIMultiDict

try:
    # The running task of each loop, as asyncio.current_task() reads it (in
    # Python code, on 3.11): looked up here at C level.
    from _asyncio import _current_tasks
except ImportError:  # another implementation of asyncio: its own current_task()
    _current_tasks = None

cdef enum:
    FIRST_BUFFER = 2048

cdef object _Task = asyncio.Task

# Seconds a refused client may go on sending before its socket is dropped.
cdef double LINGER = 2.0

cdef bytes _431_BODY = b"431 Request Header Fields Too Large: the request line and headers exceed %d bytes\n"


# RFC 9110 tchar: what a method or a header name is made of.
cdef bint _TCHAR[256]
for _c in range(256):
    _TCHAR[_c] = chr(_c).isascii() and (chr(_c).isalnum() or chr(_c) in "!#$%&'*+-.^_`|~")


cdef inline str _latin1(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    return PyUnicode_DecodeLatin1(<const char*>p + start, end - start, NULL)


def parse_request(bytes head not None):
    """parse_head's request as a handler sees it: ``(method, path, query,
    headers)``, the path percent-decoded (as urllib.parse.unquote decodes
    it), the query as sent, the headers a Head: where each is in ``head``,
    its text made only when it is asked for (a CIMultiDict of them only for
    a handler that asks for them all)."""
    cdef str path, query
    cdef Head fields = Head.__new__(Head)
    method, target = _scan_head(head, fields)
    path, _, query = (<str>target).partition("?")
    if "%" in path:
        path = unquote(path)
    return method, path, query, fields


cdef class Head:
    """The headers of a request head that _scan_head has read and found
    valid: for each, where its name and its value (without surrounding
    whitespace) are in the head's bytes. A handshake reads a handful of a
    dozen headers; their text (latin-1) is made as each is asked for."""

    cdef bytes data
    # name start, name end, value start, value end: four per header.
    cdef Py_ssize_t* spans
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity
    # normalize_upgrade() was called: Upgrade and Connection read as picows wants them.
    cdef bint upgrade

    def __init__(self):
        raise TypeError("a Head is made by parse_request(), from the bytes it reads")

    def __dealloc__(self):
        PyMem_Free(self.spans)

    cdef int add(self, Py_ssize_t name, Py_ssize_t name_end, Py_ssize_t value, Py_ssize_t value_end) except -1:
        cdef Py_ssize_t* grown
        if self.count == self.capacity:
            grown = <Py_ssize_t*>PyMem_Realloc(self.spans, (self.capacity * 2 + 16) * 4 * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self.spans = grown
            self.capacity = self.capacity * 2 + 16
        cdef Py_ssize_t* s = self.spans + 4 * self.count
        s[0] = name
        s[1] = name_end
        s[2] = value
        s[3] = value_end
        self.count += 1
        return 0

    cdef Py_ssize_t find(self, str name, Py_ssize_t after):
        """The index of the first header after ``after`` named ``name``
        (ASCII letters in either case: names are tokens), or -1."""
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(name), i
        cdef Py_ssize_t* s
        cdef const char* p = PyBytes_AS_STRING(self.data)
        if PyUnicode_KIND(name) != PyUnicode_1BYTE_KIND:
            return -1  # not a token: no header has that name
        for i in range(after + 1, self.count):
            s = self.spans + 4 * i
            if s[1] - s[0] == n and strncasecmp(p + s[0], <const char*>PyUnicode_1BYTE_DATA(name), n) == 0:
                return i
        return -1

    cdef str value(self, Py_ssize_t i):
        cdef Py_ssize_t* s = self.spans + 4 * i
        return _latin1(<const unsigned char*>PyBytes_AS_STRING(self.data), s[2], s[3])

    def __len__(self):
        return len(self.items()) if self.upgrade else self.count

    def normalize_upgrade(self):
        """Upgrade and Connection read as picows wants them from now on
        (``websocket``, ``Upgrade``), as a CIMultiDict's ``headers[name] =
        value`` would make them: the first one's value replaced, any other
        gone, added at the end when there was none."""
        self.upgrade = True

    cdef object normalized(self, str name):
        """What normalize_upgrade made of header ``name``, or None when it is another."""
        if self.upgrade and PyUnicode_KIND(name) == PyUnicode_1BYTE_KIND:
            if PyUnicode_GET_LENGTH(name) == 7 and strncasecmp(<const char*>PyUnicode_1BYTE_DATA(name), b"upgrade", 7) == 0:
                return "websocket"
            if PyUnicode_GET_LENGTH(name) == 10 and strncasecmp(<const char*>PyUnicode_1BYTE_DATA(name), b"connection", 10) == 0:
                return "Upgrade"
        return None

    def get(self, str name not None, default=None):
        """The first value of header ``name`` (case-insensitively), or ``default``."""
        cdef object value = self.normalized(name)
        if value is not None:
            return value
        cdef Py_ssize_t i = self.find(name, -1)
        return default if i < 0 else self.value(i)

    def getall(self, str name not None):
        """Every value of header ``name``, in order."""
        cdef object value = self.normalized(name)
        if value is not None:
            return [value]
        cdef list values = []
        cdef Py_ssize_t i = self.find(name, -1)
        while i >= 0:
            values.append(self.value(i))
            i = self.find(name, i)
        return values

    def items(self):
        """Every header, ``[(name, value)]``, in order."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self.data)
        cdef Py_ssize_t* s
        cdef Py_ssize_t i
        cdef list fields = []
        cdef set said = set()
        for i in range(self.count):
            s = self.spans + 4 * i
            name = _latin1(p, s[0], s[1])
            value = self.normalized(name)
            if value is None:
                fields.append((name, _latin1(p, s[2], s[3])))
            elif value not in said:
                said.add(value)
                fields.append((name, value))
        if self.upgrade:
            if "Upgrade" not in said:
                fields.append(("Connection", "Upgrade"))
            if "websocket" not in said:
                fields.append(("Upgrade", "websocket"))
        return fields


def parse_head(bytes head not None):
    """The request at the start of ``head`` (a request line, headers and the
    blank line; what follows is not read): ``(method, target, headers)``,
    the target as sent (path and query, not percent-decoded), the headers a
    CIMultiDict of latin-1 text, values without surrounding whitespace.
    ValueError naming the problem when it is not an HTTP/1.x request head:
    a method or header name that is not a token, a target with a space or
    control character, a line folded or not ended by CRLF, a control
    character in a value."""
    cdef Head fields = Head.__new__(Head)
    method, target = _scan_head(head, fields)
    return method, target, CIMultiDict(fields.items())


cdef tuple _scan_head(bytes head, Head fields):
    """parse_head's checks, the method and the target; the headers' places go to ``fields``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(head)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(head), i = 0, start, end, name_end, value, line = 1
    cdef unsigned char c
    fields.data = head
    while i < n and _TCHAR[p[i]]:
        i += 1
    if i == 0 or i >= n or p[i] != 32:
        raise ValueError("malformed request line: the method is not a token followed by a space")
    method = _latin1(p, 0, i)
    i += 1
    start = i
    while i < n and 32 < p[i] != 127:
        i += 1
    if i == start or i >= n or p[i] != 32:
        raise ValueError("malformed request line: the target is empty or not followed by a space")
    target = _latin1(p, start, i)
    i += 1
    if (n - i < 10 or memcmp(p + i, b"HTTP/1.", 7) != 0 or not (p[i + 7] == 48 or p[i + 7] == 49)
            or p[i + 8] != 13 or p[i + 9] != 10):
        raise ValueError("malformed request line: not HTTP/1.0 or HTTP/1.1, then CRLF")
    i += 10
    while True:
        if i + 1 >= n:
            raise ValueError("incomplete request head")
        if p[i] == 13 and p[i + 1] == 10:
            return method, target
        line += 1
        start = i
        while i < n and _TCHAR[p[i]]:
            i += 1
        if i == start or i >= n or p[i] != 58:
            raise ValueError(f"malformed header (line {line}): the name is not a token followed by ':'")
        name_end = i
        i += 1
        while i < n and (p[i] == 32 or p[i] == 9):
            i += 1
        value = i
        while i < n:
            c = p[i]
            if (c < 32 and c != 9) or c == 127:
                break
            i += 1
        if i + 1 >= n:
            raise ValueError("incomplete request head")
        if p[i] != 13 or p[i + 1] != 10:
            raise ValueError(f"malformed header (line {line}): a control character, or a line not ended by CRLF")
        end = i
        while end > value and (p[end - 1] == 32 or p[end - 1] == 9):
            end -= 1
        fields.add(start, name_end, value, end)
        i += 2


# What a request whose upgrade is decided (Decided) says to picows of
# Upgrade and Connection, as picows wants them; of its other headers, picows
# is given those it reads (_picows_reads).
cdef const char* _UPGRADE_LINES = b"\r\nUpgrade: websocket\r\nConnection: Upgrade"
cdef Py_ssize_t _UPGRADE_LINES_LEN = 41


cdef inline bint _named(const char* line, Py_ssize_t length, const char* name, Py_ssize_t name_length):
    return length > name_length and line[name_length] == 58 and strncasecmp(line, name, name_length) == 0


cdef bint _picows_reads(const char* line, Py_ssize_t length):
    return (_named(line, length, b"sec-websocket-version", 21) or _named(line, length, b"sec-websocket-key", 17)
            or _named(line, length, b"content-length", 14) or _named(line, length, b"transfer-encoding", 17))


cdef class Decided:
    """An async route's outcome when it has decided the upgrade itself (an
    async def endpoint): the socket goes to the picows protocol that
    ``new_protocol(self)`` makes, with the request head reduced to what
    picows still reads of it: the request line, the WebSocket version and
    key, any Content-Length or Transfer-Encoding (which picows refuses), and
    Upgrade and Connection as picows wants them (a browser's "keep-alive,
    Upgrade" was found valid by the route). picows parses each header again
    in Python-level code; the route has read them all already, and a browser
    sends a dozen. This object is the protocol's listener factory: picows
    calls it with the request it parsed, and it answers ``answer``, what the
    route decided (a listener, or a response with its listener)."""

    cdef readonly object answer
    cdef readonly object new_protocol

    def __init__(self, answer, new_protocol):
        self.answer = answer
        self.new_protocol = new_protocol

    def __call__(self, upgrade_request):
        return self.answer


def http_answer(int status, str content_type, bytes body):
    """A whole HTTP/1.1 response that closes the connection, as an async
    route returns it."""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, HTTPStatus(status).phrase.encode(), content_type.encode(), len(body)) + body)


# What a client whose async route was cancelled by the gateway's shutdown is answered.
cdef bytes _SHUTTING_DOWN = http_answer(503, "text/plain; charset=utf-8", b"503 Service Unavailable: shutting down\n")


cdef class HandlerDeadline:
    """One handler's deadline (HandlerDeadlines.start)."""

    cdef object task
    cdef double at
    cdef readonly bint expired

    def finish(self):
        """The handler is done: its task is not to be cancelled."""
        self.task = None


cdef class HandlerDeadlines:
    """The deadlines of the handlers of one loop that all have the same
    timeout, so that they come in the order they were set: a queue, and one
    loop timer for all of them, at the first still running's. A timer per
    handler (its handle, its start and its cancel) cost as much as a tenth
    of an async handshake. Past its deadline a handler's task is cancelled.
    The queue holds what is running and what finished after the first of
    them: small objects, for at most the timeout. It is a list read from
    ``first`` on (what is before it has come or finished), compacted when
    that part is most of it: no Python-level method call per handler."""

    cdef object loop
    cdef object time
    cdef object timer
    cdef list queue
    cdef Py_ssize_t first
    cdef readonly double timeout

    def __init__(self, loop, double timeout):
        self.loop = loop
        self.time = loop.time
        self.timeout = timeout
        self.queue = []
        self.first = 0
        self.timer = None

    def start(self, task=None):
        """The deadline of ``task`` (by default the running one), ``timeout``
        seconds from now."""
        cdef HandlerDeadline d = HandlerDeadline.__new__(HandlerDeadline)
        cdef list queue = self.queue
        cdef Py_ssize_t first = self.first
        if task is None and type(_current_tasks) is dict:
            task = (<dict>_current_tasks).get(self.loop)
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("HandlerDeadlines.start(): no task is running")
        d.task = task
        d.at = self.time() + self.timeout
        while first < len(queue) and (<HandlerDeadline>queue[first]).task is None:
            first += 1
        if first == len(queue):
            del queue[:]
            first = 0
        elif first > 64 and first * 2 > len(queue):
            del queue[:first]
            first = 0
        self.first = first
        queue.append(d)
        if self.timer is None:
            self.timer = self.loop.call_at(d.at, self._expire)
        return d

    def _expire(self):
        cdef HandlerDeadline d
        cdef double now = self.time()
        cdef list queue = self.queue
        self.timer = None
        while self.first < len(queue):
            d = <HandlerDeadline>queue[self.first]
            if d.task is not None:
                if d.at > now:
                    self.timer = self.loop.call_at(d.at, self._expire)
                    return
                d.expired = True
                task = d.task
                d.task = None
                self.first += 1
                task.cancel()
            else:
                self.first += 1
        del queue[:]
        self.first = 0


cdef object _CancelledError = asyncio.CancelledError
cdef object _log = logging.getLogger("wsrelay.gateway")

# What a coroutine yields to a RouteTask that will be woken by what it
# waits for without a future (a process.call: RouteTask.park).
PARKED = object()
cdef object _PARKED = PARKED


cdef class RouteTask:
    """The task of one async route (HandshakeGuard._wait_for): what
    asyncio.Task does for a coroutine, for this one, started at once.

    An asyncio.Task on 3.11 costs a tenth of an async handshake before its
    coroutine runs a step: its registration in asyncio's set of all tasks
    (a WeakSet, in Python code), the loop's call_soon of its first step,
    and its removal from that set. This runs the coroutine's first step
    where the request's head is complete, then each step when the future
    it waits for is done, as asyncio.Task does: in a copy of the context it
    was started in, as the loop's current task (asyncio.current_task()
    returns it, so asyncio.timeout, TaskGroup and libraries that read the
    current task work in a handler), cancellable as a task is (cancel,
    cancelling, uncancel). Not in asyncio.all_tasks(): the service's
    Handshakes keeps those still waiting, which the gateway's shutdown
    cancels."""

    # (Its fields are declared in handshake.pxd: call.pyx parks it.)

    def __repr__(self):
        state = "done" if self.finished else "pending"
        return f"<RouteTask {state} coro={self.coro!r}>"

    cdef int begin(self, coro, loop, set waiting) except -1:
        """Its first step, now, in a copy of the current context; kept in
        ``waiting`` until it is done."""
        self.coro = coro
        self.loop = loop
        self.context = PyContext_CopyCurrent()
        self.wakeup = self._wakeup
        PyContext_Enter(self.context)
        try:
            self.step(None)
        finally:
            PyContext_Exit(self.context)
        if not self.finished:
            self.waiting = waiting
            waiting.add(self)
        return 0

    def _wakeup(self, future):
        # The future it waited for is done (run in its context by the loop).
        try:
            future.result()
        except BaseException as exc:
            self.step(exc)
        else:
            self.step(None)

    def _step(self, exc):
        # A step the loop runs (in its context): after a bare yield, to
        # raise in the coroutine what it did wrong, or when what it parked
        # on is done.
        self.step(exc)

    cdef int park(self, object waiter) except -1:
        """The coroutine is about to yield PARKED: it waits for ``waiter``
        (a process.call), which calls ``resume_soon()`` when it is done and
        ``cancel(msg)`` of its own when this task is cancelled; no future is
        made for it (each costs some 3.7k estimated cycles, and this task
        reads a future through Python-level calls)."""
        self.parked = waiter
        return 0

    cdef int resume_soon(self) except -1:
        """What it parked on is done: its next step, in the loop's next round."""
        self.loop.call_soon(self._step, None, context=self.context)
        return 0

    cdef int step(self, exc) except -1:
        cdef PyObject* result = NULL
        cdef PySendResult sent
        loop = self.loop
        if self.finished:
            return 0
        if self.must_cancel:
            if not isinstance(exc, _CancelledError):
                exc = _CancelledError() if self.cancel_message is None else _CancelledError(self.cancel_message)
            self.must_cancel = False
        self.waiter = None
        if _current_tasks.get(loop) is not None:
            raise RuntimeError(f"Cannot enter into task {self!r} while another task "
                               f"{_current_tasks.get(loop)!r} is being executed.")
        _current_tasks[loop] = self
        try:
            if exc is None:
                sent = PyIter_Send(self.coro, None, &result)
                if sent == PYGEN_RETURN:
                    Py_DECREF(<object>result)
                    self.finish()
                    return 0
                if sent == PYGEN_ERROR:
                    raise_pending()
                yielded = <object>result
                Py_DECREF(yielded)
            else:
                yielded = self.coro.throw(exc)
        except StopIteration:
            self.finish()
        except _CancelledError:
            self.finish()
            self.cancelled_ = True
        except (KeyboardInterrupt, SystemExit):
            self.finish()
            raise
        except BaseException:
            # _wait_for answers what its route raises: this is a bug of ours.
            self.finish()
            _log.exception("async route task failed")
        else:
            self.suspend(yielded)
        finally:
            del _current_tasks[loop]
        return 0

    cdef int finish(self) except -1:
        self.finished = True
        self.waiter = None
        self.parked = None
        if self.waiting is not None:
            self.waiting.discard(self)
            self.waiting = None
        return 0

    cdef int suspend(self, result) except -1:
        """Wait for what the coroutine's step yielded, as asyncio.Task does."""
        if result is _PARKED and self.parked is not None:
            self.waiter = self.parked
            self.parked = None
            if self.must_cancel and self.waiter.cancel(msg=self.cancel_message):
                self.must_cancel = False
            return 0
        blocking = getattr(result, "_asyncio_future_blocking", None)
        if blocking is not None:
            if not blocking:
                self.fail_soon(RuntimeError(f"yield was used instead of yield from in task {self!r} with {result!r}"))
            elif _future_loop(result) is not self.loop:
                self.fail_soon(RuntimeError(f"Task {self!r} got Future {result!r} attached to a different loop"))
            else:
                result._asyncio_future_blocking = False
                result.add_done_callback(self.wakeup, context=self.context)
                self.waiter = result
                if self.must_cancel and result.cancel(msg=self.cancel_message):
                    self.must_cancel = False
        elif result is None:
            # A bare yield (asyncio.sleep(0)): the next step in the loop's next round.
            self.loop.call_soon(self._step, None, context=self.context)
        else:
            self.fail_soon(RuntimeError(f"Task got bad yield: {result!r}"))
        return 0

    cdef int fail_soon(self, exc) except -1:
        self.loop.call_soon(self._step, exc, context=self.context)
        return 0

    # -- what asyncio.Task offers of itself, for the code that reads it ----------

    def cancel(self, msg=None):
        if self.finished:
            return False
        self.cancel_requests += 1
        if self.waiter is not None and self.waiter.cancel(msg=msg):
            return True
        self.must_cancel = True
        self.cancel_message = msg
        return True

    def cancelling(self):
        return self.cancel_requests

    def uncancel(self):
        if self.cancel_requests > 0:
            self.cancel_requests -= 1
        return self.cancel_requests

    def cancelled(self):
        return self.cancelled_

    def done(self):
        return self.finished

    def get_loop(self):
        return self.loop

    def get_coro(self):
        return self.coro

    def get_context(self):
        return self.context

    def get_name(self):
        return "wsrelay-handshake"

    @property
    def _must_cancel(self):
        return self.must_cancel

    @property
    def _fut_waiter(self):
        return self.waiter


cdef object _future_loop(future):
    # The loop of an asyncio-compatible future, as asyncio.futures._get_loop reads it.
    get_loop = getattr(future, "get_loop", None)
    return get_loop() if get_loop is not None else getattr(future, "_loop", None)


cdef int raise_pending() except -1:
    # PyIter_Send returned PYGEN_ERROR with an exception set.
    return -1


cdef int _set_receive_buffer(int fd, int size) except -1:
    """SO_RCVBUF of ``fd``; OSError as socket.setsockopt raises it."""
    if setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)) != 0:
        PyErr_SetFromErrno(OSError)
        return -1
    return 0


cdef class Handshakes:
    """The handshakes of one service: their bounds, and their counts."""

    def __init__(self, loop, make_protocol, *, double timeout, Py_ssize_t max_head=16384,
                 Py_ssize_t receive_buffer=0, dict routes=None, dict prefixes=None):
        if timeout <= 0:
            raise ValueError("the handshake timeout must be greater than 0")
        if max_head < 1024:
            raise ValueError("the request head limit must be at least 1024 bytes")
        if not 0 <= receive_buffer <= INT_MAX:
            raise ValueError(f"the socket receive buffer must be from 0 to {INT_MAX} bytes, got {receive_buffer}")
        self.loop = loop
        self.make_protocol = make_protocol
        self.timeout = timeout
        self.max_head = max_head
        self.receive_buffer = receive_buffer
        self.routes = routes or {}
        self.prefixes = tuple((prefixes or {}).items())
        self.pending = 0
        self.failures = {}
        self.waiting = set()
        self.closing = False

    def protocol(self):
        """A protocol for a newly accepted socket (loop.create_server's factory)."""
        cdef HandshakeGuard guard = HandshakeGuard.__new__(HandshakeGuard)
        guard.owner = self
        return guard

    def cancel_waiting(self):
        """The gateway is shutting down: each async route still waiting is
        cancelled, and its client answered 503."""
        cdef RouteTask task
        self.closing = True
        for task in list(self.waiting):
            task.cancel("the gateway is shutting down")

    def failed(self, str reason not None):
        """Count a refused handshake (the middleware's refusals come here too)."""
        self.count_failure(reason)

    cdef int count_failure(self, str reason) except -1:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        return 0


cdef class _GuardBase:
    pass


cdef class HandshakeGuard(_GuardBase, asyncio.BufferedProtocol):
    cdef Handshakes owner
    cdef object transport
    cdef bytearray buffer
    cdef Py_ssize_t used
    cdef object timer
    cdef bint active
    # Answered with an error: what the client still sends is read and
    # dropped until it closes (a lingering close), so that the answer is not
    # lost to the reset that closing on unread bytes would send.
    cdef bint refused
    # Its head is complete and an async route decides what becomes of it:
    # what the client sends meanwhile is kept (up to max_head, then reading
    # pauses), and reading goes on so that a client that leaves is noticed.
    cdef bint waiting
    # Where the head's blank line starts in the buffer, once it is in.
    cdef Py_ssize_t head_end

    def connection_made(self, transport):
        if self.owner.receive_buffer:
            # The kernel's receive buffer caps what one read hands picows, so
            # its read buffer (which doubles whenever a read fills it) stays
            # near twice this, or twice the largest frame, for a client that
            # floods as for one that does not.
            # Set on the descriptor: uvloop's pseudo-socket makes a
            # socket.socket for each option set through it (7k instructions).
            _set_receive_buffer(transport.get_extra_info("socket").fileno(), <int>self.owner.receive_buffer)
        self.transport = transport
        self.buffer = bytearray(FIRST_BUFFER)
        self.used = 0
        self.active = True
        self.owner.pending += 1
        self.timer = self.owner.loop.call_later(self.owner.timeout, self._timeout)

    def get_buffer(self, Py_ssize_t sizehint):
        cdef Py_ssize_t size = len(self.buffer)
        if self.refused:
            return memoryview(self.buffer)
        if self.used == size and size < self.owner.max_head:
            self.buffer.extend(bytes(min(size, self.owner.max_head - size)))
        return memoryview(self.buffer)[self.used:]

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef Py_ssize_t start = self.used - 3 if self.used > 3 else 0
        if self.refused:
            return
        self.used += nbytes
        if self.waiting:
            if self.used >= len(self.buffer) and self.used >= self.owner.max_head:
                self.transport.pause_reading()
            return
        self.head_end = self.buffer.find(b"\r\n\r\n", start, self.used)
        if self.head_end >= 0:
            self._upgrade()
        elif self.used >= self.owner.max_head:
            self._refuse()

    def eof_received(self):
        # The client closed its side before finishing its request: close ours.
        return False

    def connection_lost(self, exc):
        if self.waiting:
            # Its route finds the transport closed when it is done and
            # leaves nothing behind (the gateway ends what a handler spawned).
            self.waiting = False
            self.owner.count_failure("client_gone")
        self._finish()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    cdef _finish(self):
        if self.active:
            self.active = False
            self.owner.pending -= 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _timeout(self):
        self.timer = None
        if self.refused:
            self.transport.abort()
        elif self.active:
            self.owner.count_failure("handshake_timeout")
            self._finish()
            self.transport.abort()

    async def _wait_for(self, route, bytes head):
        """Run an async route (see the module's docstring) and act on its outcome."""
        transport = self.transport
        try:
            outcome = await route(head, transport)
        except Exception as exc:
            _log.exception("async route failed")
            outcome = http_answer(500, "text/plain; charset=utf-8", f"500 Internal Server Error: {exc}\n".encode())
        except _CancelledError:
            if not self.owner.closing:
                # Cancelled from outside: its socket goes with it (nothing
                # else would close it).
                self.waiting = False
                self.transport = None
                transport.abort()
                raise
            outcome = _SHUTTING_DOWN
        if outcome is None or transport.is_closing():
            # The route had nothing more to say, or the client has gone
            # meanwhile (the route has been told by the transport's state).
            self.transport = None
            return
        self.waiting = False
        if isinstance(outcome, bytes):
            self._answer_and_linger(outcome)
            return
        if self.used >= self.owner.max_head:
            transport.resume_reading()
        if isinstance(outcome, Decided):
            self._reduce_head()
            self._feed((<Decided>outcome).new_protocol(outcome))
        else:
            self._hand_over(outcome)

    cdef _refuse(self):
        self.owner.count_failure("headers_too_large")
        self._finish()
        self._answer_and_linger(http_answer(431, "text/plain; charset=utf-8", _431_BODY % self.owner.max_head))

    cdef _answer_and_linger(self, bytes answer):
        """Write ``answer`` and close our side; what the client still sends
        is read and dropped until it closes or LINGER passes."""
        self.transport.write(answer)
        self.transport.write_eof()
        self.refused = True
        self.transport.resume_reading()
        self.timer = self.owner.loop.call_later(LINGER, self._timeout)

    cdef _upgrade(self):
        self._finish()
        cdef Py_ssize_t path_at
        if self.owner.prefixes:
            # Looked for in place: an upgrade request pays no copy for it.
            path_at = self.buffer.find(b" ", 0, self.used) + 1
            for prefix, make_protocol in self.owner.prefixes:
                if path_at and self.buffer.startswith(prefix, path_at):
                    self._hand_over(make_protocol)
                    return
        if self.owner.routes:
            path = self._route_path()
            if path is not None:
                route = self.owner.routes.get(path)
                if route is not None:
                    self.waiting = True
                    coro = self._wait_for(route, PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.buffer), self.used))
                    loop = self.owner.loop
                    # The guard's own task where the service's loop runs this
                    # callback (is_running: asyncio._get_running_loop() would
                    # cost a getpid(2) a request) and no task is running.
                    if (_current_tasks is not None and loop.get_task_factory() is None
                            and loop.is_running() and _current_tasks.get(loop) is None):
                        (<RouteTask>RouteTask.__new__(RouteTask)).begin(coro, loop, self.owner.waiting)
                    else:
                        # A loop that makes tasks its own way, or called
                        # from inside a task: a task as the loop makes it.
                        loop.create_task(coro)
                    return
        self._hand_over(self.owner.make_protocol)

    cdef object _route_path(self):
        """The path of the request line (``METHOD SP target SP version``,
        exactly two spaces before its CRLF), up to any ``?`` and
        percent-decoded, as bytes: what ``routes`` are keyed by. None for a
        request line of another shape. Read in C over the buffer: every
        request comes here."""
        cdef const char* p = PyByteArray_AS_STRING(self.buffer)
        cdef Py_ssize_t n = self.used, i = 0, first = -1, second = -1, end
        cdef int spaces = 0
        cdef bint escaped = False
        while i + 1 < n and not (p[i] == 13 and p[i + 1] == 10):
            if p[i] == 32:
                spaces += 1
                if spaces == 1:
                    first = i
                elif spaces == 2:
                    second = i
            i += 1
        if spaces != 2:
            return None
        end = first + 1
        while end < second and p[end] != 63:
            if p[end] == 37:
                escaped = True
            end += 1
        path = PyBytes_FromStringAndSize(p + first + 1, end - first - 1)
        return unquote_to_bytes(path) if escaped else path

    cdef int _reduce_head(self) except -1:
        """The head of the request in the buffer reduced for picows, for a
        Decided outcome (parse_head read it: each line ends with CRLF, and
        only there is a CR); what follows the head stays as it came."""
        cdef const char* src = PyByteArray_AS_STRING(self.buffer)
        cdef Py_ssize_t used = self.used, end = self.head_end, i, start, line_end, n
        cdef bytearray out = bytearray(used + _UPGRADE_LINES_LEN)
        cdef char* dst = PyByteArray_AS_STRING(out)
        line_end = <const char*>memchr(src, 13, end + 2) - src
        memcpy(dst, src, line_end)
        memcpy(dst + line_end, _UPGRADE_LINES, _UPGRADE_LINES_LEN)
        n = line_end + _UPGRADE_LINES_LEN
        i = line_end + 2
        while i < end + 2:
            start = i
            line_end = <const char*>memchr(src + i, 13, end + 2 - i) - src
            if _picows_reads(src + start, line_end - start):
                dst[n] = 13
                dst[n + 1] = 10
                memcpy(dst + n + 2, src + start, line_end - start)
                n += 2 + line_end - start
            i = line_end + 2
        memcpy(dst + n, src + end, used - end)
        n += used - end
        PyByteArray_Resize(out, n)
        self.buffer = out
        self.used = n
        return 0

    cdef _hand_over(self, make_protocol):
        """Give the socket, and what it has sent so far, to a protocol
        (picows', or a prefix's) that ``make_protocol(transport)`` makes."""
        self._feed(make_protocol(self.transport))

    cdef _feed(self, protocol):
        """Give the socket, and what it has sent so far, to ``protocol``."""
        cdef Py_ssize_t fed = 0, n
        transport = self.transport
        data = memoryview(self.buffer)[:self.used]
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        while fed < self.used and not transport.is_closing():
            space = protocol.get_buffer(-1)
            n = min(len(space), self.used - fed)
            space[:n] = data[fed:fed + n]
            fed += n
            protocol.buffer_updated(n)
        data.release()
        self.buffer = None
        self.transport = None
