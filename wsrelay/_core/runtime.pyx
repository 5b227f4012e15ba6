# cython: language_level=3
"""The process runtime: the PID table, processes, monitors, links and names.

A process is an asyncio task running a registered ``async def`` function, with
a PID and a bounded mailbox. Exits propagate the Erlang way: monitors get an
EXIT event, links kill the other side on an abnormal exit unless it traps
exits, in which case it gets a LINK_DOWN event.
"""

import asyncio
import contextvars

cimport cython
import logging
from collections import deque

from cpython.contextvars cimport get_value
from cpython.dict cimport PyDict_GetItemWithError
from cpython.object cimport PyObject
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint64_t

from .includes.capi cimport TypeSlots, PyExc_StopIteration, PyErr_SetObject
from .pid cimport Pid, PidCache, make_pid, to_pid
from .message cimport Message, new_message, new_request, set_replier
from .mailbox cimport Mailbox
from .stats cimport Counters, LimitedLog

from .errors import MailboxFull, NoTransport, WrongThread
from .vocab import ERROR, EXIT, LINK_DOWN, MAILBOX_FULL, NOPROC, NORMAL, REPLY, SHUTDOWN, TERMINATED

cdef enum:
    # Messages a process may take from its mailbox in a row before it lets
    # other tasks run (Erlang's reductions, counted in messages).
    RECEIVE_BUDGET = 64

cdef object _log = logging.getLogger("wsrelay.runtime")
cdef LimitedLog _limited = LimitedLog("wsrelay.runtime")


def _runtime_log():
    """The runtime's rate-limited log (a test hook: tests/test_process.py)."""
    return _limited
cdef object _CURRENT = contextvars.ContextVar("wsrelay_process")
# What the running HTTP handler spawned (Node.begin_journal), per task.
cdef object _journal = contextvars.ContextVar("wsrelay_handler_journal", default=None)
cdef object _CancelledError = asyncio.CancelledError
cdef object _get_running_loop = asyncio._get_running_loop
cdef object _Future = asyncio.Future
cdef Node _NODE = None


cdef Message exit_event(str topic, Pid pid, str reason, object error):
    return new_message(topic, {"pid": pid, "reason": reason, "error": error}, pid)


cdef object new_future(object loop):
    """``loop.create_future()``: the future uvloop's and asyncio's loops
    make, made here without the loop's method call. Its loop is named:
    ``asyncio.Future()`` without one finds the running loop, which on 3.11
    asks the kernel for the process's PID each time (getpid(2), to tell a
    forked child): about 330 ns of 500 on these machines, against 340 ns in
    all with the keyword (callgrind, which counts no system call, sees 800
    instructions more)."""
    return _Future(loop=loop)


cdef str check_topic(object topic):
    if type(topic) is not str:
        raise TypeError(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise ValueError("topic must not be empty")
    if (<str>topic)[0] == "@":
        raise ValueError(f"topic {topic!r} is reserved: topics starting with '@' are system events")
    return <str>topic


cdef inline bint _queue(Process proc, Message msg) except -1:
    """Into ``proc``'s mailbox (a send, or a call's request), or MailboxFull,
    counted and logged."""
    cdef Mailbox mailbox = proc.mailbox
    if not mailbox.push(msg):
        proc.node.counters.mailbox_full += 1
        if _limited.allow(MAILBOX_FULL):
            _limited.write(logging.WARNING, f"mailbox of {proc.pid} is full ({mailbox.capacity} messages): "
                                            f"{'call ' if msg.reply_to is not None else ''}{msg.topic!r} "
                                            f"from {msg.sender} refused with MailboxFull")
        raise MailboxFull(proc.pid, mailbox.capacity)
    proc.node.counters.messages_sent += 1
    return True


cdef class Process:
    """A running process. Only the runtime creates these."""

    def __repr__(self):
        return f"<Process {self.pid} {'alive' if self.alive else 'exited'}>"

    cdef bint deliver(self, str topic, object payload, Pid sender) except -1:
        return _queue(self, new_message(topic, payload, sender))

    cdef int signal(self, Message msg) except -1:
        # System events are bounded by the number of monitors and links, so
        # they may pass the mailbox capacity rather than be lost.
        self.mailbox.push_force(msg)
        return 0

    cdef int kill(self, str reason, object error) except -1:
        task = self.task
        self.node.finish(self, reason, error)
        if task is not None and not task.done():
            task.cancel()
        return 0

    cdef int link_exit(self, Process other, str reason, object error) except -1:
        """``other``, linked to this process, ended: a normal exit changes
        nothing, another one kills this process unless it traps exits."""
        if reason == NORMAL:
            return 0
        if self.trapping:
            return self.signal(exit_event(LINK_DOWN, other.pid, reason, error))
        return self.kill(reason, error)

    cdef int on_exit(self, str reason, object error) except -1:
        return 0

    cdef int on_monitored(self, Process watcher) except -1:
        return 0

    cdef int on_demonitored(self, Process watcher) except -1:
        return 0

    cdef int on_linked(self, Process other) except -1:
        return 0

    cdef int on_unlinked(self, Process other) except -1:
        return 0

    cdef bint offer(self, object frame, Py_ssize_t size) except -1:
        return False

    cdef int credit(self, Py_ssize_t count) except -1:
        return 0


cdef class Remote:
    """What a node asks of its side of the cluster (remote.Cluster is the one
    there is): the defaults below are those of a node that reaches no other."""

    cdef Process process(self, Pid pid):
        return None

    cdef Process reachable(self, Pid pid):
        return None

    cdef Process proxy_of(self, Pid pid):
        return None

    cdef int drop_proxy_if_idle(self, Process proxy) except -1:
        return 0

    cdef bint send(self, Pid dest, str topic, object payload, Pid sender) except -1:
        return False

    cdef bint call(self, Pid dest, str topic, object payload, Pid sender, Pid reply_to) except -1:
        return False

    cdef bint ship_frames(self, str node, list ids, bytes frame) except -1:
        return False

    cdef int announce_channels(self, str node, list changes) except -1:
        return 0

    cdef int announce_presence(self, str node, bint snapshot, list changes) except -1:
        return 0

    cdef bint ship_publication(self, str node, str channel, str envelope) except -1:
        return False

    cdef Pid global_name(self, str name):
        return None

    cdef int forget(self, Process proc) except -1:
        return 0

    def whereis_global(self, str name not None):
        """The PID holding the cluster-wide ``name``, as this node sees it now."""
        return self.global_name(name)

    async def register_global(self, str name not None, Pid pid not None):
        """Claim ``name`` for ``pid`` across the cluster: True, or False when
        another live PID holds it; released when ``pid`` ends."""
        raise NotImplementedError

    def add_connection_host(self, str host not None):
        """A host whose processes are connections: frames from other nodes
        name connections by id, and are looked for on these."""
        raise NotImplementedError


cdef class _SystemProcess(Process):
    """The node's own process: what code outside any process acts as.

    It never exits and traps exits. Nobody is obliged to read its inbox, so
    at capacity its system events are dropped, counted and logged.
    """

    cdef int signal(self, Message msg) except -1:
        if not self.mailbox.push(msg):
            self.node.counters.system_events_dropped += 1
            if _limited.allow("system_inbox_full"):
                _limited.write(logging.WARNING, f"system inbox full ({self.mailbox.capacity}): dropped "
                                                f"{msg.topic} event for {msg.sender}")
        return 0

    cdef int kill(self, str reason, object error) except -1:
        raise ValueError("the system process cannot be terminated")


cdef class Inbox:
    """A process's mailbox, seen from the process: ``await inbox.receive()``
    or ``async for msg in inbox``."""

    def __len__(self):
        return len(self.proc.mailbox)

    @property
    def pid(self):
        return self.proc.pid

    def receive_nowait(self):
        """The next message, or None when the mailbox is empty."""
        return self.proc.mailbox.pop()

    def receive(self, timeout=None):
        """The next message; waits without polling. Raises TimeoutError when
        ``timeout`` seconds pass with nothing received."""
        return _receiving(self.proc, timeout, False, 0)

    def receive_many(self, Py_ssize_t limit=0, timeout=None):
        """Wait for at least one message, then take every queued one (at most
        ``limit`` when it is positive) in a single wake-up."""
        return _receiving(self.proc, timeout, True, limit)

    def __aiter__(self):
        return self

    def __anext__(self):
        return _receiving(self.proc, None, False, 0)


cdef _Receive _receiving(Process proc, object timeout, bint many, Py_ssize_t limit):
    cdef _Receive op = _Receive.__new__(_Receive)
    op.proc = proc
    op.timeout = timeout
    op.many = many
    op.limit = limit
    return op


@cython.freelist(64)
cdef class _Receive:
    """What ``inbox.receive()`` returns: an awaitable that takes a queued
    message at once, or parks the task on the mailbox's future. It stands in
    for a coroutine so that a receive costs no frame, in time or in memory."""

    cdef Process proc
    cdef object timeout
    cdef object waiter
    cdef object timer
    cdef bint many
    cdef bint expired
    cdef Py_ssize_t limit

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        # Python-level callers only: the task steps this object through
        # tp_iternext, which is _receive_iternext (set at module init).
        cdef bint done = False
        result = self.step(&done)
        if done:
            raise StopIteration(result)
        return result

    def send(self, value):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        self.finish()
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        raise val

    def close(self):
        self.finish()

    cdef object step(self, bint* done):
        """The next thing to hand the task: a message or batch (``done``
        set), None (a bare yield), or the future to sleep on."""
        cdef Mailbox mailbox = self.proc.mailbox
        cdef Message msg
        cdef list batch
        if len(mailbox):
            self.proc.streak += 1
            if self.proc.streak > RECEIVE_BUDGET:
                # A bare yield: the task goes to the back of the loop's queue,
                # so a process with a long backlog cannot starve the others.
                self.proc.streak = 0
                return None
            self.finish()
            done[0] = True
            if not self.many:
                return mailbox.pop()
            batch = []
            while self.limit <= 0 or len(batch) < self.limit:
                msg = mailbox.pop()
                if msg is None:
                    break
                batch.append(msg)
            return batch
        if self.expired:
            self.finish()
            raise TimeoutError(f"no message for {self.proc.pid} within {self.timeout} s")
        self.proc.streak = 0
        waiter = _prepare_wait(self.proc)
        self.waiter = waiter
        if self.timeout is not None and self.timer is None:
            self.timer = waiter.get_loop().call_later(self.timeout, _expire, self)
        # What Future.__await__ does before yielding itself to the task.
        waiter._asyncio_future_blocking = True
        return waiter

    cdef void finish(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        mailbox = self.proc.mailbox
        if self.waiter is not None and mailbox is not None and (<Mailbox>mailbox).waiter is self.waiter:
            (<Mailbox>mailbox).waiter = None
        self.waiter = None


cdef PyObject* _receive_iternext(PyObject* self) except NULL:
    """tp_iternext of _Receive. The message goes back to the awaiting task as
    StopIteration's value, set directly: raising it from Cython would also
    build a traceback (a frame object) on every receive."""
    cdef bint done = False
    result = (<_Receive>self).step(&done)
    if done:
        PyErr_SetObject(PyExc_StopIteration, <PyObject*>result)
        return NULL
    Py_INCREF(result)
    return <PyObject*>result


(<TypeSlots*><PyObject*>_Receive).tp_iternext = _receive_iternext


def _expire(_Receive op):
    op.expired = True
    op.timer = None
    if op.waiter is not None and not op.waiter.done():
        op.waiter.set_result(None)


cdef object _prepare_wait(Process proc):
    cdef Mailbox mailbox = proc.mailbox
    if not proc.alive:
        raise _CancelledError(f"{proc.pid} has exited")
    if mailbox.waiter is not None:
        raise RuntimeError(f"another task is already receiving from the inbox of {proc.pid}")
    loop = proc.loop if proc.loop is not None else asyncio.get_running_loop()
    waiter = new_future(loop)
    mailbox.waiter = waiter
    return waiter


cdef class Node:
    """The PID table and everything keyed by it. One per gateway."""

    def __init__(self, str name=None, Py_ssize_t mailbox_capacity=1024, str default_host="local"):
        if mailbox_capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {mailbox_capacity}")
        self.name = name
        self.default_host = default_host
        self.mailbox_capacity = mailbox_capacity
        self.counters = Counters()
        self.table = {}
        self.names = {}
        self.functions = {}
        self.hosts = {default_host, "system"}
        self._next_id = 1
        self._kill_queue = deque()
        self._parsed = PidCache()
        self._finishing = False
        cdef _SystemProcess system = _SystemProcess.__new__(_SystemProcess)
        system.trapping = True
        self.attach(system, self.new_pid("system"))
        self.system = system

    # -- identity -------------------------------------------------------

    cdef Pid new_pid(self, str host):
        cdef uint64_t ident = self._next_id
        self._next_id += 1
        return make_pid(self.name, host, (<uint64_t>self.incarnation << 32) | ident)

    cdef int enter_cluster(self, Remote remote, unsigned long incarnation) except -1:
        """Become incarnation ``incarnation`` of this node in a cluster, with
        ``remote`` as its side of it (remote.join_cluster wires the rest).
        Only before anything was spawned: the system process is given a PID
        of the new incarnation."""
        if self.name is None:
            raise ValueError("a node in a cluster needs a name (WSRELAY_NODE)")
        if len(self.table) != 1:
            raise RuntimeError("join the cluster before spawning processes or accepting connections")
        if incarnation == 0 or incarnation > 0xFFFFFFFF:
            raise ValueError(f"incarnation {incarnation} is not a 32-bit number above 0")
        del self.table[self.system.pid]
        self.incarnation = incarnation
        self.attach(self.system, self.new_pid("system"))
        self.remote = remote
        return 0

    cdef int attach(self, Process proc, Pid pid, bint with_mailbox=True) except -1:
        """Give ``proc`` its PID (and a mailbox, unless it handles every
        message as it is sent) and enter it in the table."""
        proc.pid = pid
        proc.node = self
        if with_mailbox:
            proc.mailbox = Mailbox.__new__(Mailbox, self.mailbox_capacity)
        proc.alive = True
        self.table[pid] = proc
        return 0

    def add_host(self, str host not None):
        """Declare a process host (a ``process.host`` entry)."""
        Pid(host, 0)
        self.hosts.add(host)

    def set_default_host(self, str host not None):
        """The host ``spawn`` uses when it is given none."""
        if host not in self.hosts:
            raise LookupError(f"unknown process host {host!r}")
        self.default_host = host

    cdef Process lookup(self, object dest):
        """The live local process for a Pid or its text form, or None."""
        cdef PyObject* found
        try:
            found = PyDict_GetItemWithError(self.table, dest)
        except TypeError:
            raise TypeError(f"expected a Pid or its text form, got {type(dest).__name__}") from None
        if found == NULL:
            return None
        return <Process>found

    def process_count(self):
        """Live processes, the system process included."""
        return len(self.table)

    def pids(self):
        return list(self.table)

    def is_alive(self, pid):
        return self.lookup(to_pid(pid)) is not None

    def bind_thread(self):
        """Bind the runtime to the calling thread (the one that runs the
        gateway's loop); calls from any other thread raise WrongThread."""
        self.thread_id = PyThread_get_thread_ident()

    # -- process functions ------------------------------------------------

    def register_function(self, str ident not None, fn):
        if ":" not in ident or ident.startswith(":") or ident.endswith(":"):
            raise ValueError(f"process function id {ident!r} must look like 'namespace:name'")
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"process function {ident!r} must be an 'async def' function, got {fn!r}")
        old = self.functions.get(ident)
        if old is not None and old is not fn:
            raise ValueError(f"process function id {ident!r} is already registered to {old!r}")
        self.functions[ident] = fn

    # -- spawning ----------------------------------------------------------

    def spawn(self, str ident, host, tuple args, bint monitor=False, bint link=False):
        fn = self.functions.get(ident)
        if fn is None:
            raise LookupError(f"no process function is registered as {ident!r}")
        if host is None:
            host = self.default_host
        elif host not in self.hosts:
            raise LookupError(f"unknown process host {host!r}; declared hosts: {sorted(self.hosts)}")
        cdef Process caller = _caller(self, "process.spawn")
        loop = _get_running_loop()
        cdef Process proc = Process.__new__(Process)
        self.attach(proc, self.new_pid(host))
        proc.loop = loop
        self.counters.processes_spawned += 1
        if monitor:
            self.add_monitor(caller, proc)
        if link:
            link_processes(caller, proc)
        proc.task = loop.create_task(_main(proc, fn, args))
        if caller is self.system:
            journal = _journal.get()
            if journal is not None:
                journal.append(proc.pid)
        return proc.pid

    def begin_journal(self):
        """Start recording the PIDs the system process spawns (an HTTP
        handler's spawns), so a failed upgrade can end what it started. The
        record is the running task's (a context variable): async handlers
        waiting at the same time each keep their own."""
        _journal.set([])

    def end_journal(self):
        """Stop recording; the PIDs spawned since begin_journal()."""
        journal = _journal.get()
        _journal.set(None)
        return journal or []

    # -- exits ---------------------------------------------------------------

    cdef int finish(self, Process proc, str reason, object error) except -1:
        """End ``proc``: the table, names, monitors and links all learn of it.

        Link kills cascade through a queue, not recursion, so a long chain of
        links cannot exhaust the stack. An error while telling one monitor or
        link is logged and counted, and the cascade goes on with the rest.
        """
        self._kill_queue.append((proc, reason, error))
        if self._finishing:
            return 0
        self._finishing = True
        try:
            while self._kill_queue:
                proc, reason, error = self._kill_queue.popleft()
                try:
                    self._finish_one(proc, reason, error)
                except Exception as exc:
                    self.bookkeeping_error("exit_cascade", f"ending {proc.pid}", exc)
        finally:
            self._finishing = False
        return 0

    cdef int bookkeeping_error(self, str kind, str what, object exc) except -1:
        """An error inside the runtime's own bookkeeping: counted, logged
        (rate-limited, with its traceback), survived."""
        self.counters.runtime_errors += 1
        if _limited.allow(kind):
            _log.error("runtime error while %s (the runtime carries on)", what, exc_info=exc)
        return 0

    cdef int _finish_one(self, Process proc, str reason, object error) except -1:
        cdef Process other
        if not proc.alive:
            return 0
        proc.alive = False
        proc.exit_reason = reason
        if self.table.pop(proc.pid, None) is not None:
            self.counters.processes_exited += 1
            if self.remote is not None:
                self.remote.forget(proc)
        if proc.names is not None:
            for name in proc.names:
                if self.names.get(name) is proc:
                    del self.names[name]
            proc.names = None
        if proc.monitoring is not None:
            for other in proc.monitoring:
                if other.monitored_by is not None and proc in other.monitored_by:
                    other.monitored_by.discard(proc)
                    other.on_demonitored(proc)
            proc.monitoring = None
        monitored_by = proc.monitored_by
        links = proc.links
        proc.monitored_by = None
        proc.links = None
        try:
            proc.on_exit(reason, error)
        except Exception as exc:
            self.bookkeeping_error("exit_hook", f"running the exit hook of {proc.pid}", exc)
        if monitored_by is not None:
            for other in monitored_by:
                try:
                    if other.monitoring is not None:
                        other.monitoring.discard(proc)
                    other.signal(exit_event(EXIT, proc.pid, reason, error))
                except Exception as exc:
                    self.bookkeeping_error("exit_signal", f"telling {other.pid} that {proc.pid} ended", exc)
        if links is not None:
            for other in links:
                try:
                    if other.links is not None:
                        other.links.discard(proc)
                    other.link_exit(proc, reason, error)
                except Exception as exc:
                    self.bookkeeping_error("exit_signal", f"breaking the link {proc.pid} - {other.pid}", exc)
        if proc.mailbox is not None:
            proc.mailbox.clear()
        proc.task = None
        proc._inbox = None
        return 0

    def terminate_all(self, str reason=SHUTDOWN):
        """Terminate every process but the system process."""
        for proc in list(self.table.values()):
            if proc is not self.system and (<Process>proc).alive:
                (<Process>proc).kill(reason, None)

    # -- monitors --------------------------------------------------------------

    cdef int add_monitor(self, Process watcher, Process target) except -1:
        if watcher is target:
            return 0
        if watcher.monitoring is None:
            watcher.monitoring = set()
        if target.monitored_by is None:
            target.monitored_by = set()
        watcher.monitoring.add(target)
        target.monitored_by.add(watcher)
        return target.on_monitored(watcher)

    cdef int remove_monitor(self, Process watcher, Process target) except -1:
        if part_monitor(watcher, target):
            target.on_demonitored(watcher)
        return 0

    # -- sending -----------------------------------------------------------------

    cdef bint send_from(self, object dest, str topic, object payload, Pid sender) except -1:
        cdef Process proc = self.lookup(dest)
        if proc is not None:
            return proc.deliver(topic, payload, sender)
        return self._send_slow(dest, topic, payload, sender)

    def _send_slow(self, dest, str topic, payload, Pid sender):
        """Dest is not a live local PID: a name, a dead PID or another node's."""
        cdef Pid pid
        cdef Process proc
        if isinstance(dest, str) and not (<str>dest).startswith("{"):
            proc = self.names.get(dest)
            if proc is not None:
                return proc.deliver(topic, payload, sender)
            # Not a local name: a cluster-wide one, then.
            pid = None if self.remote is None else self.remote.global_name(dest)
            if pid is None:
                return False
            if pid.node == self.name:
                return self.send_from(pid, topic, payload, sender)
            return self.remote.send(pid, topic, payload, sender)
        if self.remote is not None and type(dest) is str:
            # Another node's PID in its text form: parsed once, not per send.
            pid = self._parsed.get(dest)
            if pid is None:
                pid = self._parsed.put(dest, to_pid(dest))
        else:
            pid = to_pid(dest)
        if pid.node != self.name:
            if self.remote is None:
                raise NoTransport(pid)
            return self.remote.send(pid, topic, payload, sender)
        return False

    # -- names ---------------------------------------------------------------------

    def register_name(self, str name not None, pid=None):
        if not name or name.startswith("{"):
            raise ValueError(f"invalid process name {name!r}: it must be non-empty and not start with '{{'")
        cdef Process proc = current_process() if pid is None else self.lookup(to_pid(pid))
        if proc is None:
            raise ProcessLookupError(f"cannot register {name!r}: {pid} is not alive")
        holder = self.names.get(name)
        if holder is not None and holder is not proc:
            raise ValueError(f"name {name!r} is already registered to {(<Process>holder).pid}")
        self.names[name] = proc
        if proc.names is None:
            proc.names = []
        if name not in proc.names:
            proc.names.append(name)

    def unregister_name(self, str name not None):
        cdef Process proc = self.names.pop(name, None)
        if proc is None:
            return False
        if proc.names is not None and name in proc.names:
            proc.names.remove(name)
        return True

    def whereis(self, str name not None):
        cdef Process proc = self.names.get(name)
        return None if proc is None else proc.pid

    def registered(self):
        return {name: (<Process>proc).pid for name, proc in self.names.items()}


async def _main(Process proc, object fn, tuple args):
    _CURRENT.set(proc)
    try:
        await fn(*args)
    except _CancelledError:
        if proc.alive:
            proc.node.finish(proc, TERMINATED, None)
        return
    except Exception as exc:
        if proc.alive:
            proc.node.counters.processes_crashed += 1
            _log.error("process %s crashed", proc.pid, exc_info=exc)
            proc.node.finish(proc, ERROR, exc)
        return
    except BaseException as exc:
        if proc.alive:
            proc.node.finish(proc, ERROR, exc)
        raise
    if proc.alive:
        proc.node.finish(proc, NORMAL, None)


cdef object _node_factory = None


def set_node_factory(factory):
    """How the node is made on first use: the Python layer passes a function
    that reads its settings, so the core never imports them."""
    global _node_factory
    _node_factory = factory


cdef Node get_node():
    global _NODE
    if _NODE is None:
        _NODE = _node_factory() if _node_factory is not None else Node()
    return _NODE


def node():
    """The node this interpreter runs (created on first use from the settings)."""
    return get_node()


def reset_node(Node new_node not None):
    """Replace the node; only for a fresh start (tests, an embedding app)."""
    global _NODE
    _NODE = new_node


cdef Process current_process():
    cdef object proc = get_value(_CURRENT, None)
    if proc is not None:
        return <Process>proc
    return get_node().system


cdef Process calling_process(str what):
    """The process making an API call, after the call's preconditions: the
    runtime's own thread, and a running loop for calls outside any process."""
    return _caller(get_node(), what)


cdef Process _caller(Node n, str what):
    cdef unsigned long thread = PyThread_get_thread_ident()
    if thread != n.thread_id:
        if n.thread_id != 0:
            raise WrongThread(
                f"wsrelay.{what}() was called from thread {thread}, but the runtime belongs to "
                f"thread {n.thread_id}, which runs the gateway's event loop: from another thread, use "
                f"wsrelay.threads.send(dest, topic, payload) or wsrelay.threads.call(fn, *args), which hand "
                f"it to that loop with call_soon_threadsafe() (docs/guide.md, 'One thread')")
        if _get_running_loop() is None:
            raise RuntimeError(f"wsrelay.{what}() needs a running event loop: call it from "
                               f"a coroutine, a process or an HTTP handler")
        # The first call from a thread with a running loop binds the runtime to it.
        n.thread_id = thread
    cdef object proc = get_value(_CURRENT, None)
    if proc is not None:
        return <Process>proc
    if _get_running_loop() is None:
        raise RuntimeError(f"wsrelay.{what}() needs a running event loop: call it from "
                           f"a coroutine, a process or an HTTP handler")
    return n.system


cdef bint part_monitor(Process watcher, Process target) except -1:
    """Take ``watcher``'s monitor of ``target`` out of both their sets,
    telling nobody: whether it was there. (A monitor that fired on another
    node ends so: that node has nothing more to hear of it.)"""
    if watcher.monitoring is not None:
        watcher.monitoring.discard(target)
    if target.monitored_by is None or watcher not in target.monitored_by:
        return False
    target.monitored_by.discard(watcher)
    return True


cdef bint join_links(Process a, Process b) except -1:
    """Put ``a`` and ``b`` in each other's link set, telling nobody: whether
    they were not linked yet. (A link another node asked for is made so: the
    hooks would tell that node again.)"""
    if a is b or (a.links is not None and b in a.links):
        return False
    if a.links is None:
        a.links = set()
    if b.links is None:
        b.links = set()
    a.links.add(b)
    b.links.add(a)
    return True


cdef bint part_links(Process a, Process b) except -1:
    """Take ``a`` and ``b`` out of each other's link set, telling nobody:
    whether they were linked."""
    if a.links is None or b not in a.links:
        return False
    a.links.discard(b)
    if b.links is not None:
        b.links.discard(a)
    return True


cdef int link_processes(Process a, Process b) except -1:
    if join_links(a, b):
        a.on_linked(b)
        b.on_linked(a)
    return 0


cdef int unlink_processes(Process a, Process b) except -1:
    if part_links(a, b):
        a.on_unlinked(b)
        b.on_unlinked(a)
    return 0


cdef Process _target(Node n, object pid):
    """The process ``pid`` names: a live local one, another node's (as a
    RemoteProcess), or None (a local PID that is not alive)."""
    cdef Process proc = n.lookup(pid)
    cdef Pid parsed
    if proc is not None:
        return proc
    parsed = to_pid(pid)
    if parsed.node != n.name:
        if n.remote is None:
            raise NoTransport(parsed)
        return n.remote.process(parsed)
    return None


# -- the public process API (re-exported by wsrelay.process) ----------------------


def spawn(str id, host=None, *args):
    """Start the process function registered as ``id`` on ``host``; its Pid."""
    return get_node().spawn(id, host, args)


def spawn_monitored(str id, host=None, *args):
    """Spawn and monitor the new process, atomically."""
    return get_node().spawn(id, host, args, True, False)


def spawn_linked(str id, host=None, *args):
    """Spawn and link to the new process, atomically."""
    return get_node().spawn(id, host, args, False, True)


cpdef bint send(object dest, object topic, object payload=None) except -1:
    """Deliver a message. False when ``dest`` has exited (or no such name);
    MailboxFull when its mailbox is at capacity."""
    cdef Process sender = calling_process("process.send")
    return sender.node.send_from(dest, check_topic(topic), payload, sender.pid)


def self():
    """The caller's PID (the system process's outside any process)."""
    return calling_process("process.self").pid


def inbox():
    """The caller's inbox."""
    cdef Process proc = calling_process("process.inbox")
    if proc._inbox is None:
        ib = Inbox.__new__(Inbox)
        (<Inbox>ib).proc = proc
        proc._inbox = ib
    return proc._inbox


def monitor(pid):
    """The caller gets an EXIT event when ``pid`` ends; at once (reason
    ``noproc``) when it is already gone."""
    cdef Process caller = calling_process("process.monitor")
    cdef Process target = _target(caller.node, pid)
    if target is None:
        caller.signal(exit_event(EXIT, to_pid(pid), NOPROC, None))
        return
    caller.node.add_monitor(caller, target)


def unmonitor(pid):
    cdef Process caller = calling_process("process.unmonitor")
    cdef Process target = _target(caller.node, pid)
    if target is not None:
        caller.node.remove_monitor(caller, target)


def link(pid):
    """Link the caller and ``pid`` both ways. Raises ProcessLookupError when
    ``pid`` is not alive."""
    cdef Process caller = calling_process("process.link")
    cdef Process target = _target(caller.node, pid)
    if target is None:
        raise ProcessLookupError(f"cannot link to {pid}: it is not alive")
    link_processes(caller, target)


def unlink(pid):
    cdef Process caller = calling_process("process.unlink")
    cdef Process target = _target(caller.node, pid)
    if target is None:
        return
    unlink_processes(caller, target)


def trap_exits(bint flag=True):
    """Turn the caller's link failures into LINK_DOWN events; returns the old
    setting."""
    cdef Process caller = calling_process("process.trap_exits")
    if caller is caller.node.system:
        return True
    old = caller.trapping
    caller.trapping = flag
    return old


def terminate(pid, str reason=TERMINATED):
    """End another process with ``reason``; False when it was already gone."""
    cdef Process caller = calling_process("process.terminate")
    cdef Process target = _target(caller.node, pid)
    if reason is None or not reason:
        raise ValueError("terminate() needs a non-empty reason")
    if target is None:
        return False
    target.kill(reason, None)
    return True


def register(str name, pid=None):
    """Register ``name`` for ``pid`` (the caller by default)."""
    calling_process("process.register")
    get_node().register_name(name, pid)


def unregister(str name):
    return get_node().unregister_name(name)


def whereis(str name not None):
    """The PID registered as ``name`` on this node, or None."""
    cdef Process proc = get_node().names.get(name)
    return None if proc is None else proc.pid


def is_alive(pid):
    return get_node().is_alive(pid)


# -- calls: a request and its reply (the waiter and process.call are call.pyx's) ------


cdef bint deliver_request(Process proc, str topic, object payload, Pid sender, Pid reply_to) except -1:
    """Queue a call's request for ``proc``, a local process: a message that
    carries its reply address. MailboxFull as for a send."""
    cdef Mailbox mailbox = proc.mailbox
    if mailbox is None:
        raise ValueError(f"{proc.pid} takes no calls: it has no inbox to read a request from "
                         f"(a WebSocket connection takes 'ws.send', 'ws.close' and 'ws.control' sends only)")
    return _queue(proc, new_request(topic, payload, sender, reply_to))


cdef int reply_dropped(Node node, Pid waiter, Pid sender) except -1:
    """A reply for a call of this node that had already ended (it timed out,
    its caller was cancelled, or it was answered before): dropped, as Erlang
    drops a late reply, and counted."""
    node.counters.call_replies_dropped += 1
    if _limited.allow("call_reply_dropped"):
        _limited.write(logging.INFO, f"reply from {sender} dropped: the call {waiter} had already ended")
    return 0


cdef bint _reply(Message msg, object value) except -1:
    cdef Process replier = calling_process("msg.reply")
    cdef Node node = replier.node
    if node.send_from(msg.reply_to, REPLY, value, replier.pid):
        return True
    if msg.reply_to.node == node.name:
        # (A reply for another node's call that cannot leave is counted by
        # the cluster, as unreachable; one that arrives late, by that node.)
        reply_dropped(node, msg.reply_to, replier.pid)
    return False


set_replier(_reply)
