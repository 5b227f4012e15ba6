# cython: language_level=3
"""Channels: named fan-out any process can publish to (docs/guide.md, "Channels").

This node's channel table maps a name to its Channel, the set of this
node's connections subscribed to it. A channel exists while it has
subscribers: the last one to leave drops it from the table. A connection
that subscribes to nothing costs nothing here: its ``channels`` field stays
None until its first subscription, and goes back to None after its last.

A publication is encoded once (orjson, the envelope naming the channel) and
framed once, compressed once per window size, for all subscribers, with the
same FanOut as ``Group.send`` (writer.pyx).

In a cluster (docs/cluster.md, "Channels"), each node tells the others how
many subscribers it has of each of its channels (absolute counts, gathered
per loop iteration; all of them to a node that comes up, on the ordered
stream between the two nodes), and keeps their counts in ``_remote``. A
publication goes to this node's subscribers, then, as its envelope text,
once to each node that has subscribers of the channel, which frames it once
for its own. A node that is lost takes its counts with it. What concerns a
connection of another node (subscribe it, close a user's connections) is a
request to that node, answered by ``answer_request`` there.

A channel with history (history.pyx) numbers its publications: each
envelope carries its ``offset`` and the ``epoch``, and is kept in the
channel's Log as sent. A subscription to it begins with a ``subscribed``
event; one granted with a recover position (docs/guide.md, "History and
recovery") is given the publications it missed right after that event,
before anything live, which on one loop needs no holding back. In a
cluster the channel's keeper, on whichever node, numbers and keeps its
publications (docs/cluster.md, "History"): a new subscription here asks it
for its position, and the publications that arrive meanwhile are held for
that subscriber (bounded), then merged by offset at the seam.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

import asyncio
import logging
from fnmatch import fnmatchcase

import orjson

from .frames cimport parse_close_payload
from .history cimport Log, cluster_keeper, existing, limits_of, log_for, recovery_max
from .history import set_busy
from .pid cimport Pid, to_pid
from .presence cimport announce_now, attach, joined, node_down, node_up, on_presence, parted
from .relay cimport Connection
from .relay import set_channel_hooks
from .relayspec cimport check_channel_name, max_channels_per_connection
from .remote import set_channel_handlers
from .runtime cimport Node, Process, Remote, calling_process, get_node
from .stats cimport LimitedLog
cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

from .writer cimport FanOut, fan_out, fan_out_text

# What a client receives, by event.
PUBLICATION = "publication"
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"

# name -> Channel, this node's channels that have subscribers. One table per
# Python process: its connections are all served by one node, the gateway's.
cdef dict _table = {}
# name -> {node: subscribers}: the other nodes' counts, as they announced them.
cdef dict _remote = {}
# Names whose count here changed since the last announcement (None: no
# announcement is scheduled).
cdef set _dirty = None
# user -> set of this node's connections its handler said were theirs.
cdef dict _users = {}
# Subscriptions of this node's connections, all channels together.
cdef Py_ssize_t _subscriptions = 0

cdef LimitedLog _log = LimitedLog("wsrelay.channels")
# A publication's envelope without history: these, the name, these, the data's JSON, "}".
cdef bytes _PUB_HEAD = b'{"channel":"'
cdef bytes _PUB_MID = b'","event":"' + PUBLICATION.encode() + b'","data":'
cdef Py_ssize_t _PUB_HEAD_LEN = len(_PUB_HEAD)
cdef Py_ssize_t _PUB_MID_LEN = len(_PUB_MID)
# After the data of a publication on a channel with history (_around).
cdef bytes _KEPT_OFFSET = b',"offset":'
cdef bytes _KEPT_EPOCH = b',"epoch":"'
cdef Py_ssize_t _KEPT_OFFSET_LEN = len(_KEPT_OFFSET)
cdef Py_ssize_t _KEPT_EPOCH_LEN = len(_KEPT_EPOCH)
# Looked up once, not on the module per publication.
cdef object _dumps = orjson.dumps
cdef object _JSONEncodeError = orjson.JSONEncodeError

# A Log whose channel has subscribers here is kept (history.pyx).
set_busy(_table)


cdef class Channel:
    """One channel on this node: its subscribers and the info each
    subscribed with."""

    def __cinit__(self, str name):
        self.name = name
        self.members = {}
        self.holding = None


cdef class _Held:
    """The publications held for one subscriber while its position is
    asked: (offset, envelope) in arrival order, at most ``_hold_limit()``;
    past it the oldest go and the subscriber does not recover."""

    cdef list texts
    cdef bint overflowed

    def __cinit__(self):
        self.texts = []
        self.overflowed = False


cdef Py_ssize_t _hold_limit() noexcept:
    # Enough for a recovery's worth of live traffic while the keeper answers.
    return recovery_max() + 1000


cdef class Subscription:
    """What ``subscribe`` returns. On a channel with history, ``offset`` and
    ``epoch`` are its position when the subscription began and
    ``recovered`` says whether the publications after the position asked
    for were given; without history they are None, None and False."""

    cdef readonly str channel
    cdef readonly bint recovered
    cdef readonly object offset
    cdef readonly object epoch

    def __cinit__(self, str channel, bint recovered=False, offset=None, epoch=None):
        self.channel = channel
        self.recovered = recovered
        self.offset = offset
        self.epoch = epoch

    def __repr__(self):
        return (f"Subscription(channel={self.channel!r}, recovered={self.recovered}, "
                f"offset={self.offset!r}, epoch={self.epoch!r})")


cdef Connection _connection(Node node, Pid pid, str what):
    """The local connection ``pid`` names, or None when it has ended;
    ValueError for a process that is not a connection."""
    cdef Process proc = node.lookup(pid)
    if proc is None:
        return None
    if not isinstance(proc, Connection):
        raise ValueError(f"{what}: {proc.pid} is not a WebSocket connection; channels hold connections")
    return <Connection>proc


cdef int _join(Connection conn, str name, object info) except -1:
    cdef Channel channel
    if conn.channels is None:
        conn.channels = {}
    elif name in conn.channels:
        channel = conn.channels[name]
        channel.members[conn] = info
        if channel.presence is not None:
            joined(conn.service.node, channel.presence, conn, False)
        return 0
    if len(conn.channels) >= max_channels_per_connection():
        raise ValueError(f"{conn.pid} is already in {max_channels_per_connection()} channels, the limit "
                         "(WSRELAY_MAX_CHANNELS_PER_CONNECTION)")
    channel = _table.get(name)
    if channel is None:
        channel = _table[name] = Channel(name)
        channel.presence = attach(name, channel.members)
    global _subscriptions
    channel.members[conn] = info
    conn.channels[name] = channel
    _subscriptions += 1
    _changed(conn.service.node, name)
    if channel.presence is not None:
        joined(conn.service.node, channel.presence, conn, True)
    return 0


cdef int _part(Connection conn, Channel channel) except -1:
    global _subscriptions
    info = channel.members.pop(conn)
    if channel.holding is not None:
        channel.holding.pop(conn, None)
        if not channel.holding:
            channel.holding = None
    _subscriptions -= 1
    if not channel.members:
        del _table[channel.name]
    _changed(conn.service.node, channel.name)
    if channel.presence is not None:
        parted(conn.service.node, channel.presence, conn, info)
    return 0


cdef int _changed(Node node, str name) except -1:
    """``name``'s count here changed: the other nodes hear of it at the end
    of this loop iteration, with every other change made meanwhile."""
    global _dirty
    if node.remote is None:
        return 0
    if _dirty is None:
        _dirty = set()
        asyncio.get_running_loop().call_soon(_announce, node)
    _dirty.add(name)
    return 0


def _announce(Node node):
    global _dirty
    names, _dirty = _dirty, None
    if names is not None and node.remote is not None:
        node.remote.announce_channels(None, _counts(names))


cdef list _counts(names):
    cdef Channel channel
    cdef list changes = []
    for name in names:
        channel = _table.get(name)
        changes.append([name, 0 if channel is None else len(channel.members)])
    return changes


def _grant(Connection conn):
    """The handler's grant ({name: info}, checked by relayspec) made
    subscriptions, and its user known, as the connection opens; a granted
    channel with history recovers from the position the client named."""
    cdef dict granted = conn.channels
    cdef dict positions = conn.recover
    if conn.user is not None:
        _users.setdefault(conn.user, set()).add(conn)
    if granted is None:
        return
    conn.channels = None
    conn.recover = None
    for name, info in granted.items():
        _join(conn, name, info)
        _begin(conn, name, None if positions is None else positions.get(name))


cdef Subscription _begin(Connection conn, str name, object position):
    """The ``subscribed`` event of a new subscription to a channel with
    history, then the publications after ``position`` ((epoch, offset) or
    None) when they can all be given; the Subscription saying so."""
    cdef Log log = log_for(name)
    cdef list missed = None
    keeper = cluster_keeper()
    if log is None and keeper is not None and limits_of(name) is not None:
        return _ask_keeper(keeper, conn, name, position)
    if log is None:
        return Subscription(name)
    if position is not None:
        missed = log.after(position[0], position[1])
        if missed is None:
            conn.service.node.counters.history_not_recovered += 1
        else:
            conn.service.node.counters.history_recovered += 1
    return _subscribed(conn, name, log.epoch, log.delivered, missed)


cdef Subscription _subscribed(Connection conn, str name, str epoch, unsigned long long latest, list missed):
    cdef bint recovered = missed is not None
    fan_out({"type": "text", "data": orjson.dumps(
        {"channel": name, "event": SUBSCRIBED, "offset": latest, "epoch": epoch, "recovered": recovered}
    ).decode()}).offer_to(conn)
    if recovered:
        for text in missed:
            (fan_out_text(<bytes>text) if type(text) is bytes else fan_out({"type": "text", "data": text})).offer_to(conn)
    return Subscription(name, recovered, latest, epoch)


cdef Subscription _ask_keeper(object keeper, Connection conn, str name, object position):
    """A subscription to a channel another node may keep: what arrives for
    it is held until the keeper's answer (``recovered``). The other nodes
    hear of the new subscriber first (on the stream the question follows),
    so the keeper ships it everything it delivers after answering."""
    cdef Channel channel = conn.channels[name]
    if channel.holding is None:
        channel.holding = {}
    channel.holding[conn] = _Held()
    _announce(conn.service.node)
    keeper.position(conn.pid, name, position)
    return Subscription(name)


def _leave_all(Connection conn):
    """The connection has ended: out of all its channels."""
    cdef Channel channel
    cdef set mine
    if conn.user is not None:
        mine = _users.get(conn.user)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del _users[conn.user]
    if conn.channels is None:
        return
    for channel in conn.channels.values():
        _part(conn, channel)
    conn.channels = None


set_channel_hooks(_grant, _leave_all)


cdef bytes _encoded(str name, str event, object data, bint with_data, Log log):
    cdef dict message = {"channel": name, "event": event}
    if with_data:
        message["data"] = data
    if log is not None:
        message["offset"] = log.offset + 1
        message["epoch"] = log.epoch
    try:
        return _dumps(message)
    except _JSONEncodeError as exc:
        raise TypeError(f"channels.publish({name!r}): data is not JSON-serialisable: {exc}") from None


cdef bytes _publication(str checked, object data, Log log=None):
    """_encoded of a publication to a name check_channel_name passed (with
    the next offset and the epoch of ``log``, a channel with history):
    ASCII that JSON writes as it is, so the envelope is put together around
    the data's JSON, as orjson writes the dict (compact, in that order),
    without the dict."""
    try:
        data_json = _dumps(data)
    except _JSONEncodeError as exc:
        raise TypeError(f"channels.publish({checked!r}): data is not JSON-serialisable: {exc}") from None
    return _around(checked, <bytes>data_json, log)


cdef bytes _around(str checked, bytes data_json, Log log):
    """_publication's envelope around ``data_json``, JSON already."""
    cdef Py_ssize_t name_len = 0, data_len = PyBytes_GET_SIZE(data_json), epoch_len = 0, tail_len = 1, at
    cdef const char* name = PyUnicode_AsUTF8AndSize(checked, &name_len)
    cdef const char* epoch = NULL
    cdef char offset[24]
    cdef int offset_len = 0
    if log is not None:
        epoch = PyUnicode_AsUTF8AndSize(log.epoch, &epoch_len)
        if not _plain(epoch, epoch_len):
            # An epoch read from elsewhere (a cluster's stream) that JSON
            # would escape: written by orjson, as it must be.
            return _encoded(checked, PUBLICATION, orjson.Fragment(data_json), True, log)
        offset_len = _decimal(log.offset + 1, offset)
        tail_len = _KEPT_OFFSET_LEN + offset_len + _KEPT_EPOCH_LEN + epoch_len + 2
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _PUB_HEAD_LEN + name_len + _PUB_MID_LEN + data_len + tail_len)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(_PUB_HEAD), _PUB_HEAD_LEN)
    at = _PUB_HEAD_LEN
    memcpy(p + at, name, name_len)
    at += name_len
    memcpy(p + at, PyBytes_AS_STRING(_PUB_MID), _PUB_MID_LEN)
    at += _PUB_MID_LEN
    memcpy(p + at, PyBytes_AS_STRING(data_json), data_len)
    at += data_len
    if log is not None:
        memcpy(p + at, PyBytes_AS_STRING(_KEPT_OFFSET), _KEPT_OFFSET_LEN)
        at += _KEPT_OFFSET_LEN
        memcpy(p + at, offset, offset_len)
        at += offset_len
        memcpy(p + at, PyBytes_AS_STRING(_KEPT_EPOCH), _KEPT_EPOCH_LEN)
        at += _KEPT_EPOCH_LEN
        memcpy(p + at, epoch, epoch_len)
        at += epoch_len
        p[at] = b'"'
        at += 1
    p[at] = b'}'
    return out


cdef inline int _decimal(unsigned long long value, char* out) noexcept:
    """``value`` written in decimal at ``out`` (room for 20 digits): how
    many digits (what snprintf's %llu writes, without its cost)."""
    cdef char digits[20]
    cdef int n = 0, i
    while True:
        digits[n] = <char>(48 + value % 10)
        n += 1
        value //= 10
        if value == 0:
            break
    for i in range(n):
        out[i] = digits[n - 1 - i]
    return n


cdef inline bint _plain(const char* text, Py_ssize_t n) noexcept:
    """Whether JSON writes ``text`` (UTF-8) as it is: printable ASCII, no quote or backslash."""
    cdef Py_ssize_t i
    for i in range(n):
        if not (32 <= <unsigned char>text[i] < 127) or text[i] == b'"' or text[i] == b'\\':
            return False
    return True


cdef str _envelope(str name, str event, object data, bint with_data):
    return _encoded(name, event, data, with_data, None).decode()


cdef Pid _local_pid(Node node, object pid, str what):
    """``pid`` parsed; ProcessLookupError when it is another node's
    (wsrelay.channels asks that node instead, when this one is in a
    cluster)."""
    cdef Pid parsed = to_pid(pid)
    if parsed.node != node.name:
        raise ProcessLookupError(f"{what}: {parsed} is a connection of node {parsed.node!r}, which this node "
                                 "does not reach")
    return parsed


def subscribe(pid, name, info=None):
    """Subscribe the connection ``pid`` (a Pid or its text, of this node)
    to channel ``name``; a Subscription. ProcessLookupError when the
    connection has ended, ValueError for a bad name, a non-connection or a
    connection at its limit of channels."""
    cdef str checked = check_channel_name(name)
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"channels.subscribe: info must be a dict, got {type(info).__name__}")
    cdef Node node = calling_process("channels.subscribe").node
    cdef Connection conn = _connection(node, _local_pid(node, pid, "channels.subscribe"), "channels.subscribe")
    if conn is None or not conn.alive:
        raise ProcessLookupError(f"channels.subscribe: connection {pid} is not alive")
    cdef Log log
    if conn.channels is not None and checked in conn.channels:
        _join(conn, checked, info)
        log = existing(checked)
        return Subscription(checked) if log is None else Subscription(checked, False, log.offset, log.epoch)
    _join(conn, checked, info)
    return _begin(conn, checked, None)


def unsubscribe(pid, name):
    """Take the connection ``pid`` (of this node) out of channel ``name``
    and tell its client (an ``unsubscribed`` event); False when it was not
    in it (or has ended)."""
    cdef str checked = check_channel_name(name)
    cdef Node node = calling_process("channels.unsubscribe").node
    cdef Connection conn = _connection(node, _local_pid(node, pid, "channels.unsubscribe"), "channels.unsubscribe")
    if conn is None or conn.channels is None:
        return False
    channel = conn.channels.pop(checked, None)
    if channel is None:
        return False
    if not conn.channels:
        conn.channels = None
    _part(conn, <Channel>channel)
    fan_out({"type": "text", "data": _envelope(checked, UNSUBSCRIBED, None, False)}).offer_to(conn)
    return True


def publish(name, data):
    """Send ``data`` (a JSON value) to every subscriber of ``name``: this
    node's, in a ``publication`` envelope encoded and framed once, and
    every other node's, the envelope shipped once to each node that has
    subscribers; ``{}``, or on a channel with history ``{"offset",
    "epoch"}`` of this publication, which its Log keeps."""
    cdef str checked = check_channel_name(name)
    cdef Node node = calling_process("channels.publish").node  # on the loop's thread (WrongThread otherwise)
    result = publish_checked(node, checked, data)
    return {} if result is None else result


cdef object publish_checked(Node node, str checked, object data):
    """``publish`` of a name check_channel_name returned, on ``node``'s
    thread (the server API's quick path calls it so); what ``publish``
    returns, None for its ``{}`` (no history: no dict made). The envelope's
    bytes are framed, and kept by a Log, as they are; its str is made only
    for what ships text (the other nodes, a subscriber held)."""
    keeper = cluster_keeper()
    if keeper is not None and limits_of(checked) is not None:
        # Numbered, stored and delivered by the channel's keeper (deliver_kept).
        node.counters.channel_publications += 1
        return keeper.publish(checked, _json(checked, data))
    cdef Log log = log_for(checked)
    cdef bytes encoded
    cdef str text = None
    cdef dict result = None
    encoded = _publication(checked, data, log)
    if log is not None:
        # Kept as it is framed: its bytes (a Log on one node; a keeper's
        # holds text, see kept_publish).
        log.keep(log.offset + 1, encoded, len(encoded))
        log.delivered = log.offset
        result = {"offset": log.offset, "epoch": log.epoch}
    node.counters.channel_publications += 1
    text = _deliver_encoded(node, checked, encoded, text)
    if node.remote is not None:
        _ship(node, checked, encoded.decode() if text is None else text)
    return result


cdef bytes _json(str name, object data):
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"channels.publish({name!r}): data is not JSON-serialisable: {exc}") from None


cdef int _ship(Node node, str name, str text) except -1:
    """A publication's envelope once to each other node with subscribers."""
    cdef dict nodes
    if node.remote is not None:
        nodes = _remote.get(name)
        if nodes:
            for other in nodes:
                node.remote.ship_publication(other, name, text)
    return 0


def kept_publish(str name, bytes data):
    """On the keeper of ``name`` (a cluster): the next publication, ``data``
    JSON already, numbered in its Log; (offset, epoch, envelope) for the
    keeper to store and then ``deliver_kept``. The envelope holds no
    newline: the keeper stores a batch of them joined by newlines."""
    cdef Log log = existing(name)
    if log is None:
        raise LookupError(f"channel {name!r} is not kept on this node")
    if b"\n" in data:
        # JSON from orjson never has one (a string's is escaped); JSON from
        # elsewhere may have some between its tokens: written compact.
        data = orjson.dumps(orjson.loads(data))
    cdef bytes encoded = _around(check_channel_name(name), data, log)
    cdef str text = encoded.decode()
    log.keep(log.offset + 1, text, len(encoded))
    return log.offset, log.epoch, text


def deliver_kept(str name, unsigned long long first, list texts):
    """On the keeper: publications ``first``, ``first`` + 1, ... of
    ``name`` (their envelopes ``texts``) are stored; to the subscribers here
    and on every other node, in offset order."""
    cdef Node node = get_node()
    cdef Log log = existing(name)
    cdef unsigned long long last = first + <unsigned long long>len(texts) - 1
    if log is not None and texts and last > log.delivered:
        log.delivered = last
    for text in texts:
        _deliver(node, name, <str>text)
        _ship(node, name, <str>text)


def holding(Pid pid, str name):
    """Whether this node's connection ``pid`` still waits for ``name``'s
    keeper to answer (False once answered, or when it left)."""
    cdef Connection conn = _connection(get_node(), pid, "channels.holding")
    if conn is None or conn.channels is None or name not in conn.channels:
        return False
    cdef Channel channel = conn.channels[name]
    return channel.holding is not None and conn in channel.holding


def recovered(Pid pid, str name, str epoch, unsigned long long latest, list missed, bint asked):
    """The keeper's answer for a subscriber of this node asked about in
    ``_ask_keeper`` (``asked``: with a position to recover from):
    ``subscribed`` at ``latest`` (without ``missed``, at most just before
    the first one held), the ``missed`` publications (None: not
    recovered), then those held with a greater offset; a Subscription
    (None when the subscription ended meanwhile)."""
    cdef Node node = get_node()
    cdef Connection conn = _connection(node, pid, "channels.recovered")
    if conn is None or conn.channels is None or name not in conn.channels:
        return None
    cdef Channel channel = conn.channels[name]
    if channel.holding is None or conn not in channel.holding:
        return None
    cdef _Held held = channel.holding.pop(conn)
    if not channel.holding:
        channel.holding = None
    if held.overflowed:
        # Live publications were let go of: from the first one still held,
        # contiguous, and the client reloads.
        latest = <unsigned long long>held.texts[0][0] - 1 if held.texts else latest
        missed = None
    elif missed is None and held.texts and <unsigned long long>held.texts[0][0] <= latest:
        # What is held arrived after the subscription began, so it is the
        # subscriber's, even what the keeper delivered before it answered
        # and counted in ``latest``: a publication made as the subscription
        # began (the target's on ws.join), stored before the question
        # reached the keeper. The subscription begins just before it.
        latest = <unsigned long long>held.texts[0][0] - 1
    if asked and missed is not None:
        node.counters.history_recovered += 1
    elif asked:
        node.counters.history_not_recovered += 1
    sub = _subscribed(conn, name, epoch, latest, missed)
    for offset, text in held.texts:
        if offset > latest:
            fan_out({"type": "text", "data": text}).offer_to(conn)
    return sub


def history(name, since=None, limit=None):
    """The publications of channel ``name`` kept here, oldest first: ``{"epoch",
    "offset": <latest>, "publications": [{"offset", "epoch", "data"}]}``
    (those after ``since``, the first ``limit``). ValueError for a channel
    without history or a bad ``since``/``limit``."""
    cdef str checked = check_channel_name(name)
    calling_process("channels.history")
    for field, value in (("since", since), ("limit", limit)):
        if value is not None and (type(value) is not int or value < 0):
            raise ValueError(f"channels.history: {field} must be a whole number, 0 or more, got {value!r}")
    cdef Log log = log_for(checked)
    if log is None:
        raise ValueError(f"channels.history: channel {checked!r} has no history (no channel.namespace matching "
                         "it sets history_size and history_ttl)")
    return {"epoch": log.epoch, "offset": log.offset, "publications": log.publications(since, limit)}


cdef int _deliver(Node node, str name, str text) except -1:
    """A publication's envelope to this node's subscribers of ``name``."""
    cdef Channel channel = _table.get(name)
    if channel is not None:
        _deliver_to(node, channel, fan_out({"type": "text", "data": text}), text, None)
    return 0


cdef str _deliver_encoded(Node node, str name, bytes encoded, str text):
    """_deliver of an envelope's bytes (``text``: its str, or None until a
    held subscriber needs it); the str when it was made, else ``text``."""
    cdef Channel channel = _table.get(name)
    if channel is not None:
        text = _deliver_to(node, channel, fan_out_text(encoded), text, encoded)
    return text


cdef str _deliver_to(Node node, Channel channel, FanOut out, str text, bytes encoded):
    cdef Connection conn
    cdef dict holding = channel.holding
    node.counters.channel_deliveries += len(channel.members)
    for conn in channel.members:
        if holding is not None and conn in holding:
            if text is None:
                text = encoded.decode()
            _hold(<_Held>holding[conn], text)
        else:
            out.offer_to(conn)
    return text


cdef int _hold(_Held held, str text) except -1:
    held.texts.append((orjson.loads(text).get("offset", 0), text))
    if len(held.texts) > _hold_limit():
        del held.texts[0]
        held.overflowed = True
    return 0


def active(pattern=None):
    """{name: {"subscribers": n}} for the channels with subscribers on any
    node, as this node knows them (those matching the fnmatch ``pattern``
    when given)."""
    cdef Channel channel
    cdef dict counts = {}
    calling_process("channels.active")
    if pattern is not None and type(pattern) is not str:
        raise ValueError(f"channels.active: pattern must be a str, got {type(pattern).__name__}")
    for name, channel in _table.items():
        if pattern is None or fnmatchcase(name, pattern):
            counts[name] = len(channel.members)
    for name, nodes in _remote.items():
        if pattern is None or fnmatchcase(name, pattern):
            counts[name] = counts.get(name, 0) + sum((<dict>nodes).values())
    return {name: {"subscribers": n} for name, n in counts.items()}


def here():
    """(channels, subscriptions, users) of this node's connections, for /metrics."""
    return len(_table), _subscriptions, len(_users)


def subscribers(name):
    """The PIDs of channel ``name``'s subscribers on this node."""
    cdef Channel channel = _table.get(check_channel_name(name))
    calling_process("channels.subscribers")
    return [] if channel is None else [(<Connection>conn).pid for conn in channel.members]


def check_close(code, reason):
    """The ``ws.close`` payload closing with ``code`` and ``reason``;
    ValueError naming what is wrong with them."""
    cdef int checked = 0
    payload = {"code": code, "reason": reason}
    parse_close_payload(payload, &checked)
    return payload


def disconnect_here(client=None, user=None, close=None):
    """Close this node's connection ``client`` (a Pid), or every connection
    of ``user``, with the ``ws.close`` payload ``close``; how many were open."""
    cdef Node node = calling_process("channels.disconnect").node
    cdef Connection conn
    cdef list conns
    cdef Py_ssize_t closed = 0
    if client is not None:
        found = _connection(node, _local_pid(node, client, "channels.disconnect"), "channels.disconnect")
        conns = [] if found is None else [found]
    else:
        conns = list(_users.get(user, ()))
    for conn in conns:
        if conn.deliver("ws.close", close, node.system.pid):
            closed += 1
    return closed


# -- the cluster ----------------------------------------------------------------------

# The errors a request's answer may carry back, by name.
cdef dict _ERRORS = {"ValueError": ValueError, "ProcessLookupError": ProcessLookupError}


def answer_request(list args):
    """This node's answer to another node's request about its connections:
    ["ok", result] or ["error", the exception's type name, its message].
    What it changed is announced now, not at the end of the iteration, so
    that it leaves before the answer."""
    try:
        return _answer(args)
    finally:
        _announce(get_node())
        announce_now(get_node())


cdef list _answer(list args):
    try:
        op = args[0]
        if op == "subscribe":
            sub = subscribe(args[1], args[2], args[3])
            return ["ok", sub.channel]
        if op == "unsubscribe":
            return ["ok", unsubscribe(args[1], args[2])]
        if op == "disconnect":
            return ["ok", disconnect_here(args[1], args[2], args[3])]
        raise ValueError(f"unknown channel request {op!r}")
    except (ValueError, ProcessLookupError) as exc:
        return ["error", type(exc).__name__, str(exc)]
    except (TypeError, IndexError) as exc:  # a request not made by wsrelay.channels
        return ["error", "ValueError", f"malformed channel request: {exc}"]


def raise_answer(answer, str node):
    """The result in another node's answer; its error raised here."""
    if answer is None:
        raise ProcessLookupError(f"node {node} did not answer")
    if type(answer) is not list or len(answer) < 2:
        raise ProcessLookupError(f"node {node} gave a malformed answer")
    if answer[0] == "ok":
        return answer[1]
    raise _ERRORS.get(answer[1], ValueError)(answer[2] if len(answer) > 2 else "")


cdef class _ClusterChannels:
    """What arrives from the other nodes for channels (remote.pyx calls it)."""

    def on_interest(self, str node, list changes):
        cdef dict nodes
        for change in changes:
            if type(change) is not list or len(change) != 2 or type(change[0]) is not str \
                    or type(change[1]) is not int or change[1] < 0:
                if _log.allow("interest"):
                    _log.write(logging.WARNING, f"channels: malformed interest from {node} dropped: {change!r}")
                continue
            name, count = change
            nodes = _remote.get(name)
            if count:
                if nodes is None:
                    nodes = _remote[name] = {}
                nodes[node] = count
            elif nodes is not None:
                nodes.pop(node, None)
                if not nodes:
                    del _remote[name]

    def on_publication(self, str channel, str envelope):
        cdef Node node = get_node()
        keeper = cluster_keeper()
        if keeper is not None and limits_of(channel) is not None:
            message = orjson.loads(envelope)
            if "offset" not in message:
                # Made on another node for this one to number: it keeps the
                # channel (or knows who does now).
                keeper.publish(channel, orjson.dumps(message["data"]))
                return
        node.counters.channel_publications_remote += 1
        _deliver(node, channel, envelope)

    def on_presence(self, str node, bint snapshot, list changes):
        on_presence(node, snapshot, changes)

    def on_request(self, list args):
        return answer_request(args)

    def on_node_up(self, str node):
        cdef Node here = get_node()
        if _table and here.remote is not None:
            here.remote.announce_channels(node, _counts(list(_table)))
        node_up(here, node)

    def on_node_down(self, str node):
        node_down(node)
        for name in [n for n, nodes in _remote.items() if node in <dict>nodes]:
            nodes = _remote[name]
            del nodes[node]
            if not nodes:
                del _remote[name]


set_channel_handlers(_ClusterChannels())
