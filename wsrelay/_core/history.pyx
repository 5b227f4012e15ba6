# cython: language_level=3
"""History of channels on one node, in memory (docs/guide.md, "History and
recovery").

A channel whose namespace sets ``history_size`` and ``history_ttl`` has a
Log here once it is published to, subscribed to or read: its epoch, the
offset of its latest publication, and the last publications as the
envelopes their subscribers were sent (so a replay is those very texts,
and no second encoding). A Log is bounded three ways: ``history_size``
entries, ``history_ttl`` seconds each, WSRELAY_HISTORY_MAX_BYTES of
envelopes; the oldest go first. Its subscribers cost it nothing: a
recovery reads the entries, it keeps no position per connection.

A Log lost (the process restarted, or dropped by the sweep once it is
empty and its channel has no subscriber here) is a new epoch when it is
made again, so offsets of two histories are never taken for one.

Which channels have history is the Python layer's to say (the
configuration's namespaces): ``set_policy`` gives the function asked.

In a cluster (docs/cluster.md, "History") one node keeps each channel, its
*keeper* (wsrelay/cluster/history.py, set with ``set_keeper``): the Logs
here are those of the channels this node keeps, made by ``adopt`` when it
takes one over, and never dropped while it keeps them. A publication is
numbered here, stored in JetStream, then delivered: ``delivered`` trails
``offset`` by the writes in flight, and recovery gives only what was
delivered, so that nothing is given twice.
"""

from cpython.mem cimport PyMem_Free, PyMem_Realloc

import asyncio
from secrets import token_hex

import orjson

from .relayspec cimport check_channel_name
from .stats cimport monotonic

# Set by the Python layer from its settings.
cdef Py_ssize_t _max_bytes = 1 << 20
cdef Py_ssize_t _recovery_max = 300
# name -> (history_size, history_ttl) when the channel has history, else None.
cdef object _policy = None
# name -> what _policy answered: a publication to a channel without history
# costs a dict lookup, not a match of every namespace's pattern. Emptied when
# the policy changes (an app installed) and when it holds CACHE_SIZE names.
cdef dict _limits = {}
cdef object _UNKNOWN = object()  # not in _limits: one lookup, not two
CACHE_SIZE = 4096
# name -> Log.
cdef dict _logs = {}
# The channel table (channels.pyx): a Log whose channel has subscribers
# here is never dropped, so they keep one epoch.
cdef dict _busy = {}
cdef object _sweep_handle = None
cdef object _sweep_loop = None
# The cluster's history keeper (None on a single node).
cdef object _keeper = None
# How often expired entries are let go of, and idle Logs dropped.
SWEEP_INTERVAL = 1.0
# The largest offset a recover position may name (a JSON integer wsrelay
# could have given).
MAX_OFFSET = (1 << 63) - 1


def configure(Py_ssize_t max_bytes, Py_ssize_t max_recovery):
    """WSRELAY_HISTORY_MAX_BYTES and WSRELAY_RECOVERY_MAX."""
    global _max_bytes, _recovery_max
    if max_bytes < 1 or max_recovery < 0:
        raise ValueError(f"history limits must be positive, got {max_bytes} bytes, {max_recovery} publications")
    _max_bytes = max_bytes
    _recovery_max = max_recovery


def set_policy(policy):
    """``policy(name)`` answers (history_size, history_ttl) for a channel
    with history, None for one without."""
    global _policy
    _policy = policy
    _limits.clear()


def policy_changed():
    """The namespaces the policy reads changed: ask it again."""
    _limits.clear()


def set_keeper(keeper):
    """The cluster's keeper of history (None: a single node, history in
    memory here)."""
    global _keeper
    _keeper = keeper


cdef object cluster_keeper():
    return _keeper


def current_keeper():
    """The cluster's keeper of history, or None on a single node."""
    return _keeper


cdef object limits_of(str channel):
    if _policy is None:
        return None
    limits = _limits.get(channel, _UNKNOWN)
    if limits is not _UNKNOWN:
        # (None, a channel without history, is cached too.)
        return limits
    if len(_limits) >= CACHE_SIZE:
        _limits.clear()
    limits = _limits[channel] = _policy(channel)
    return limits


def set_busy(dict table not None):
    global _busy
    _busy = table


cdef Py_ssize_t recovery_max() noexcept:
    return _recovery_max


cdef class Log:
    """One channel's history on this node."""

    def __cinit__(self, str channel, Py_ssize_t size, double ttl):
        self.channel = channel
        self.epoch = token_hex(4)
        self.offset = 0
        self.delivered = 0
        self.size = size
        self.ttl = ttl
        self.texts = []
        self.sizes = NULL
        self.expires = NULL
        self.cap = self.head = self.count = 0
        self.first = 1
        self.nbytes = 0
        self.last = monotonic()

    def __dealloc__(self):
        PyMem_Free(self.sizes)
        PyMem_Free(self.expires)

    cdef int keep(self, unsigned long long offset, object text, Py_ssize_t nbytes) except -1:
        """Publication ``offset`` (the next one) kept as its envelope
        ``text`` (str, or its UTF-8 bytes) of ``nbytes``; the oldest go as
        the bounds require."""
        self.last = monotonic()
        self.offset = offset
        return self._add(offset, text, nbytes, self.last + self.ttl)

    cdef int _add(self, unsigned long long offset, object text, Py_ssize_t nbytes, double expires) except -1:
        cdef Py_ssize_t at
        if self.size <= 0:
            return 0  # a Log that keeps nothing (history_size 0): offsets and the epoch only
        if self.count == self.cap:
            if self.cap < self.size:
                self._grow()
            else:
                self._drop_oldest()
        if self.count == 0:
            self.first = offset
        at = (self.head + self.count) % self.cap
        self.texts[at] = text
        self.sizes[at] = nbytes
        self.expires[at] = expires
        self.count += 1
        self.nbytes += nbytes
        while self.count > self.size or self.nbytes > _max_bytes:
            self._drop_oldest()
        return 0

    cdef int _grow(self) except -1:
        """Twice the slots (at most ``size``), the entries moved to the
        front in order."""
        cdef Py_ssize_t cap = min(self.size, max(8, 2 * self.cap)), i, at
        cdef Py_ssize_t* sizes = <Py_ssize_t*>PyMem_Realloc(NULL, cap * sizeof(Py_ssize_t))
        cdef double* expires = <double*>PyMem_Realloc(NULL, cap * sizeof(double))
        if sizes == NULL or expires == NULL:
            PyMem_Free(sizes)
            PyMem_Free(expires)
            raise MemoryError()
        cdef list texts = [None] * cap
        for i in range(self.count):
            at = (self.head + i) % self.cap
            texts[i] = self.texts[at]
            sizes[i] = self.sizes[at]
            expires[i] = self.expires[at]
        PyMem_Free(self.sizes)
        PyMem_Free(self.expires)
        self.texts, self.sizes, self.expires, self.cap, self.head = texts, sizes, expires, cap, 0
        return 0

    cdef int _drop_oldest(self) except -1:
        self.texts[self.head] = None
        self.nbytes -= self.sizes[self.head]
        self.head = (self.head + 1) % self.cap
        self.count -= 1
        self.first += 1
        return 0

    cdef inline object _text(self, Py_ssize_t i):
        """The envelope of the ``i``-th entry from the oldest (str or bytes, as kept)."""
        return self.texts[(self.head + i) % self.cap]

    cdef int trim(self, double now) except -1:
        """Let go of the entries whose time is up."""
        while self.count and self.expires[self.head] <= now:
            self._drop_oldest()
        return 0

    cdef list after(self, str epoch, unsigned long long offset):
        """The envelopes (as kept) of the publications delivered after ``offset`` when
        they can all be given: the same epoch, none of them let go of, at
        most WSRELAY_RECOVERY_MAX; else None."""
        cdef unsigned long long top = self.delivered
        cdef Py_ssize_t i
        if epoch != self.epoch or offset > top or top - offset > <unsigned long long>_recovery_max:
            return None
        self.trim(monotonic())
        if offset == top:
            return []
        if not self.count or self.first > offset + 1:
            return None
        return [self._text(i) for i in range(<Py_ssize_t>(offset + 1 - self.first),
                                              <Py_ssize_t>(top + 1 - self.first))]

    def recovery(self, str epoch, unsigned long long offset):
        """Python view of ``after``, for the cluster's keeper."""
        return self.after(epoch, offset)

    def publications(self, since=None, limit=None):
        """[{offset, epoch, data}] kept, oldest first (after ``since``, at
        most ``limit``)."""
        self.trim(monotonic())
        cdef list out = []
        cdef Py_ssize_t i
        cdef unsigned long long offset
        for i in range(self.count):
            offset = self.first + <unsigned long long>i
            if since is not None and offset <= since:
                continue
            if offset > self.delivered:
                break
            if limit is not None and len(out) >= limit:
                break
            out.append({"offset": offset, "epoch": self.epoch, "data": orjson.loads(self._text(i))["data"]})
        return out

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"Log({self.channel!r}, epoch={self.epoch!r}, offset={self.offset}, kept={self.count})"


cdef Log existing(str channel):
    return _logs.get(channel)


cdef Log log_for(str channel):
    """``channel``'s Log, made now if it has history and none yet; None for
    a channel without history. In a cluster only the Logs this node keeps."""
    cdef Log log = _logs.get(channel)
    if log is not None or _policy is None or _keeper is not None:
        return log
    limits = limits_of(channel)
    if limits is None:
        return None
    log = _logs[channel] = Log(channel, limits[0], limits[1])
    _schedule_sweep()
    return log


cdef int _schedule_sweep() except -1:
    """A sweep in SWEEP_INTERVAL on this loop, unless one is due on it (a
    sweep of a loop that has ended will not come: tests run one loop each)."""
    global _sweep_handle, _sweep_loop
    loop = asyncio.get_running_loop()
    if _sweep_handle is None or _sweep_loop is not loop:
        _sweep_loop = loop
        _sweep_handle = loop.call_later(SWEEP_INTERVAL, _sweep)
    return 0


def _sweep():
    global _sweep_handle
    _sweep_handle = None
    cdef double now = monotonic()
    cdef Log log
    cdef list idle = []
    for log in _logs.values():
        log.trim(now)
        if _keeper is None and not log.count and now - log.last > log.ttl and log.channel not in _busy:
            idle.append(log.channel)
    for name in idle:
        del _logs[name]
    if _logs:
        _schedule_sweep()


def adopt(str channel, Py_ssize_t size, double ttl, str epoch, unsigned long long offset, list kept):
    """The Log of a channel this node takes over in a cluster: ``epoch``
    and ``offset`` as stored, ``kept`` its stored publications [(offset,
    envelope text, seconds left to live)], oldest first, contiguous up to
    ``offset``. Replaces any Log of the channel here. The Log's bounds
    apply: the oldest go (the stream may hold more: a message of it holds
    one or more publications)."""
    cdef Log log = Log(channel, size, ttl)
    cdef double now = monotonic()
    log.epoch = epoch
    for entry_offset, text, left in kept:
        log._add(entry_offset, text, len(text), now + left)
    log.offset = log.delivered = offset
    _logs[channel] = log
    _schedule_sweep()
    return log


def drop(str channel):
    """Forget ``channel``'s Log here (in a cluster: another node keeps it now)."""
    _logs.pop(channel, None)


def channel_log(name):
    """The Log of channel ``name`` (made now when it has history and none
    yet), or None: the channel has no history."""
    return log_for(check_channel_name(name))


def logs():
    """How many channels have a Log here, and how many bytes of envelopes
    they keep, for /metrics."""
    cdef Log log
    cdef Py_ssize_t kept = 0
    for log in _logs.values():
        kept += log.nbytes
    return len(_logs), kept


def forget():
    """Drop every Log, as a restart would (for tests that begin afresh)."""
    _logs.clear()


def parse_recover(str text not None, Py_ssize_t max_entries):
    """The positions a ``recover`` query parameter names: {channel: (epoch,
    offset)}; ValueError saying what is malformed. At most ``max_entries``
    channels (the limit of one connection's channels: more could never all
    be granted)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"recover is not JSON: {exc}") from None
    if type(value) is not dict:
        raise ValueError(f"recover must be a JSON object, got {type(value).__name__}")
    if len(<dict>value) > max_entries:
        raise ValueError(f"recover names {len(<dict>value)} channels, over the limit of {max_entries}")
    cdef dict positions = {}
    for name, position in (<dict>value).items():
        check_channel_name(name)
        if type(position) is not dict or set(position) != {"epoch", "offset"}:
            raise ValueError(f"recover[{name!r}] must be {{\"epoch\": ..., \"offset\": ...}}, got {position!r:.80}")
        epoch = position["epoch"]
        offset = position["offset"]
        if type(epoch) is not str or not 0 < len(<str>epoch) <= 64:
            raise ValueError(f"recover[{name!r}] epoch must be a short string")
        if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
            raise ValueError(f"recover[{name!r}] offset must be an integer from 0 to {MAX_OFFSET}")
        positions[name] = (epoch, offset)
    return positions
