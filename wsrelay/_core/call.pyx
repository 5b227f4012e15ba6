# cython: language_level=3
"""Calls: a request and its reply, as Erlang's ``gen_server:call``
(docs/guide.md, "Calls: a request and its reply").

A call is a waiter: a process with a PID of its own (an alias of the caller,
as in Erlang), no task and no mailbox, in the node's table for the call's
duration only. The request carries the waiter's PID as its reply address and
``msg.reply(value)`` is an ordinary send to it, from this node or another, so
replies need no table of pending calls: the PID table finds the waiter, whose
``deliver`` resolves the caller's future (or, for an ``async def``
handler's call, steps the gateway's task that parked on it: no future is
made). The waiter monitors the callee, so the callee's end (``noproc`` when
it was already gone, ``noconnection`` when its node is lost) ends the call
with CallError. Whatever ends the call
(the reply, the callee's end, the timeout, the caller's cancellation) takes
the waiter out of the table and its monitor off the callee: nothing of a call
outlives it, and a reply that comes later finds no PID (dropped, counted).

Across nodes the request itself carries the monitor (remote.pyx, on_call):
the callee's node sets it up on delivery and takes it down with the reply,
so a call costs the two messages of a hand-made round trip, not also a
MONITOR and a DEMONITOR. Only a call that ends otherwise (a timeout, a
cancellation, a reply from elsewhere) tells the callee's node to demonitor.
"""

import asyncio
from heapq import heappop, heappush

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from .includes.capi cimport TypeSlots, PyExc_StopIteration, PyErr_SetObject

from .handshake cimport RouteTask
from .message cimport Message
from .pid cimport Pid, to_pid
from .remote cimport RemoteProcess
from .runtime cimport Node, Process, calling_process, check_topic, deliver_request, new_future

from .errors import CallError, NoTransport
from .vocab import NOCONNECTION, NOPROC, REPLY

cdef object _get_running_loop = asyncio.get_running_loop
cdef object _CancelledError = asyncio.CancelledError

# The running task of each loop as the guard reads it (None where asyncio
# has no such table: every call then waits on a future).
from .handshake import PARKED as _parked, _current_tasks as _tasks

cdef object _PARKED = _parked
cdef dict _current_tasks = _tasks if type(_tasks) is dict else None


cdef class Call(Process):
    """One call in flight (see the module's docstring)."""

    # The caller's future; None when its task is the gateway's RouteTask
    # (``parker``), which is stepped once the call is settled.
    cdef object future
    cdef RouteTask parker
    cdef object outcome
    cdef object error
    cdef bint settled
    cdef object timeout
    # The set of calls with the same deadline tick this one is in (Deadlines).
    cdef set deadline
    cdef Process callee
    cdef str topic

    def __repr__(self):
        return f"<Call {self.pid} {self.topic!r} to {self.callee.pid if self.callee else None}>"

    cdef bint deliver(self, str topic, object payload, Pid sender) except -1:
        # Only replies: an alias takes nothing else.
        if topic != REPLY or not self.alive:
            return False
        # A reply from the callee's node: that node took its monitor down.
        self.end(isinstance(self.callee, RemoteProcess) and sender is not None
                 and sender.node == self.callee.pid.node)
        if self.future is None:
            if not self.settled:
                self.outcome = payload
                self.settle()
        elif not self.future.done():
            self.future.set_result(payload)
        return True

    cdef int signal(self, Message msg) except -1:
        # The callee's EXIT: the waiter monitors it and nothing else.
        cdef dict info = <dict>msg.payload
        return self.fail(CallError(msg.sender, info["reason"], info["error"]))

    cdef int kill(self, str reason, object error) except -1:
        # Terminated (terminate_all at shutdown): the call ends with the reason.
        return self.fail(CallError(self.callee.pid, reason, error))

    cdef int fail(self, object error) except -1:
        if not self.alive:
            return 0
        self.end(False)
        if isinstance(error, CallError) and error.error is not None:
            error.__cause__ = error.error
        if self.future is None:
            if not self.settled:
                self.error = error
                self.settle()
        elif not self.future.done():
            self.future.set_exception(error)
        return 0

    cdef int settle(self) except -1:
        """A call without a future is done: its task's next step, soon."""
        self.settled = True
        # Only a task parked on it: a call settled before its task waits
        # (its callee's node unknown, found in process.call itself) is read
        # at once, and the task may by then wait for something else.
        if self.parker is not None and self.parker.waiter is self:
            self.parker.resume_soon()
        return 0

    def cancel(self, msg=None):
        """Its task was cancelled while it waited (RouteTask.cancel): the
        wait ends with CancelledError, the call with it (process.call)."""
        if self.future is not None:
            return self.future.cancel(msg=msg)
        if self.settled:
            return False
        self.error = _CancelledError() if msg is None else _CancelledError(msg)
        self.settle()
        return True

    cdef int end(self, bint monitor_gone) except -1:
        """Out of the table, its monitor off the callee (telling nobody when
        the callee's node has no monitor to take down), its deadline gone."""
        cdef Node node = self.node
        cdef Process callee = self.callee
        if not self.alive:
            return 0
        self.alive = False
        del node.table[self.pid]
        if not monitor_gone:
            node.remove_monitor(self, callee)
        elif callee.monitored_by is not None:
            callee.monitored_by.discard(self)
            node.remote.drop_proxy_if_idle(callee)
        if self.deadline is not None:
            self.deadline.discard(self)
            self.deadline = None
        return 0


cdef enum:
    # Deadlines per second: a call times out within 1/TICKS s after its timeout.
    TICKS = 200


cdef class Deadlines:
    """The timeouts of one loop's calls, in sets by tick of 1/TICKS s, with
    one loop timer for all of them, at the first tick that still has calls:
    a timer per call (its handle, its start and its cancel) cost as much as
    the rest of a call on one node, and a timer per tick is one per call
    when calls come one at a time. The tick of a set its calls have all left
    goes when the timer comes to it: at most TICKS sets per second of the
    longest timeout."""

    cdef object loop
    cdef dict ticks
    # The ticks of ``ticks``, a heap: the first is the next to come.
    cdef list heap
    cdef object timer
    # The tick ``timer`` is for.
    cdef long long armed

    def __init__(self, loop):
        self.loop = loop
        self.ticks = {}
        self.heap = []
        self.timer = None
        self.armed = 0

    cdef int add(self, Call c, double timeout) except -1:
        cdef long long tick = <long long>((self.loop.time() + timeout) * TICKS) + 1
        cdef set calls = self.ticks.get(tick)
        if calls is None:
            calls = self.ticks[tick] = set()
            heappush(self.heap, tick)
            if self.timer is None or tick < self.armed:
                self.arm(tick)
        calls.add(c)
        c.deadline = calls
        return 0

    cdef int arm(self, long long tick) except -1:
        if self.timer is not None:
            self.timer.cancel()
        self.armed = tick
        self.timer = self.loop.call_at(tick / <double>TICKS, self.expire)
        return 0

    def expire(self):
        """The timer: the calls of every tick come, timed out; then the timer
        for the next tick with calls."""
        cdef Call c
        cdef set calls
        cdef long long tick
        # The tick the timer was for has come, whatever the clock's rounding says.
        cdef long long now = max(<long long>(self.loop.time() * TICKS), self.armed)
        heap = self.heap
        self.timer = None
        while heap:
            tick = heap[0]
            calls = self.ticks[tick]
            if calls and tick > now:
                self.arm(tick)
                return
            heappop(heap)
            del self.ticks[tick]
            for c in list(calls):
                c.fail(TimeoutError(f"no reply from {c.callee.pid} to call {c.topic!r} within {c.timeout} s"))


cdef Deadlines _deadlines = None


cdef Deadlines deadlines(object loop):
    global _deadlines
    if _deadlines is None or _deadlines.loop is not loop:
        # (A loop's timers hold its Deadlines: the calls of another loop,
        # stopped and run again, still time out.)
        _deadlines = Deadlines(loop)
    return _deadlines


cdef Process _callee(Node node, object dest):
    """The process ``dest`` names, as a send finds it: a live local PID, a
    local name, then a cluster-wide one; another node's PID as its proxy.
    None when nothing alive answers to it."""
    cdef Process proc = node.lookup(dest)
    cdef Pid pid
    if proc is not None:
        return proc
    if isinstance(dest, str) and not (<str>dest).startswith("{"):
        proc = node.names.get(dest)
        if proc is not None:
            return proc
        pid = None if node.remote is None else node.remote.global_name(dest)
        if pid is None:
            return None
    else:
        pid = to_pid(dest)
    if pid.node == node.name:
        return node.lookup(pid)
    if node.remote is None:
        raise NoTransport(pid)
    return node.remote.process(pid)


cdef Call _start(object dest, object topic, object payload, object timeout):
    """Everything of a call up to the wait: its waiter, the monitor of the
    callee, the request sent, the deadline set."""
    cdef Process caller = calling_process("process.call")
    cdef str checked = check_topic(topic)
    cdef Node node = caller.node
    if timeout is not None and timeout < 0:
        raise ValueError(f"process.call() timeout must be None or at least 0, got {timeout!r}")
    cdef Process callee = _callee(node, dest)
    if callee is None:
        # (A name stays a name; a PID's text form is read.)
        raise CallError(dest if isinstance(dest, str) and not (<str>dest).startswith("{") else to_pid(dest), NOPROC)
    if callee is caller and caller is not node.system:
        raise ValueError(f"process.call(): {caller.pid} cannot call itself (it would wait for its own reply)")
    cdef Call c = Call.__new__(Call)
    node.attach(c, node.new_pid(caller.pid.host), False)
    c.callee = callee
    c.topic = checked
    loop = caller.loop if caller.loop is not None else _get_running_loop()
    task = _current_tasks.get(loop) if _current_tasks is not None else None
    if type(task) is RouteTask:
        # An async handler's call: the gateway's task waits for it without a future.
        c.loop = loop
        c.parker = <RouteTask>task
    else:
        c.future = new_future(loop)
    if isinstance(callee, RemoteProcess):
        # The request carries the monitor to the callee's node; here the
        # waiter joins the proxy's watchers, for that node's EXIT or loss.
        if callee.monitored_by is None:
            callee.monitored_by = set()
        callee.monitored_by.add(c)
        try:
            sent = node.remote.call(callee.pid, checked, payload, caller.pid, c.pid)
        except BaseException:
            c.end(True)
            raise
        if not sent:
            # Its node is down or unknown: as for a monitor of it.
            node.finish(callee, NOCONNECTION, None)
            return c
    else:
        # Monitored before it has the request: its end, whenever it comes,
        # reaches the waiter.
        node.add_monitor(c, callee)
        try:
            deliver_request(callee, checked, payload, caller.pid, c.pid)
        except BaseException:
            c.end(False)
            raise
    if timeout is not None:
        c.timeout = timeout
        deadlines(loop).add(c, timeout)
    return c


async def call(dest, topic, payload=None, timeout=5.0):
    """Send ``topic``/``payload`` to ``dest`` (a PID, its text form, or a
    name) as a request and wait for its reply (the callee answers with
    ``msg.reply(value)``): that value. CallError when the callee ends
    before replying (its exit reason; ``noproc`` when it is not alive or no
    such name, ``noconnection`` when its node is lost); TimeoutError when
    no reply comes within ``timeout`` seconds (None: wait as long as the
    callee lives). A reply that comes after the call ended is dropped."""
    cdef Call c = _start(dest, topic, payload, timeout)
    try:
        if c.future is not None:
            return await c.future
        return await _new_parked(c)
    finally:
        # The caller was cancelled (or the call already ended: a no-op).
        c.end(False)


cdef class _Parked:
    """What a call without a future awaits: PARKED to its RouteTask until
    the call is settled (Call.settle steps the task), then the reply, or the
    call's error raised."""

    cdef Call call

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        # Python-level callers only: tp_iternext is _parked_iternext.
        raise TypeError("process.call's wait is stepped by its task only")

    def send(self, value):
        raise TypeError("process.call's wait is stepped by its task only")

    def throw(self, typ, val=None, tb=None):
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        raise val

    def close(self):
        # Nothing of its own to release: the call ends in process.call's finally.
        return None


cdef _Parked _new_parked(Call c):
    cdef _Parked p = _Parked.__new__(_Parked)
    p.call = c
    return p


cdef PyObject* _parked_iternext(PyObject* self) except NULL:
    """tp_iternext of _Parked: PARKED until the call is settled, then its
    reply as StopIteration's value (set directly, without a traceback)."""
    cdef Call c = (<_Parked>self).call
    if not c.settled:
        c.parker.park(c)
        Py_INCREF(_PARKED)
        return <PyObject*>_PARKED
    c.parker = None
    if c.error is not None:
        error = c.error
        c.error = None
        raise error
    value = c.outcome
    c.outcome = None
    if type(value) is tuple or isinstance(value, BaseException):
        # (PyErr_SetObject would take a tuple for StopIteration's arguments.)
        value = StopIteration(value)
    PyErr_SetObject(PyExc_StopIteration, <PyObject*>value)
    return NULL


(<TypeSlots*><PyObject*>_Parked).tp_iternext = _parked_iternext
