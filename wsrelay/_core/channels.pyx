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
"""

from fnmatch import fnmatchcase

import orjson

from .pid cimport Pid, to_pid
from .relay cimport Connection
from .relay import set_channel_hooks
from .relayspec cimport check_channel_name, max_channels_per_connection
from .runtime cimport Node, Process, calling_process
from .writer cimport FanOut, fan_out

# What a client receives, by event.
PUBLICATION = "publication"
UNSUBSCRIBED = "unsubscribed"

# name -> Channel, this node's channels that have subscribers. One table per
# Python process: its connections are all served by one node, the gateway's.
cdef dict _table = {}


cdef class Channel:
    """One channel on this node: its subscribers and the info each
    subscribed with."""

    def __cinit__(self, str name):
        self.name = name
        self.members = {}


cdef class Subscription:
    """What ``subscribe`` returns. ``recovered``, ``offset`` and ``epoch``
    describe a history channel's recovery; without history (all channels
    for now) they are False, None and None."""

    cdef readonly str channel
    cdef readonly bint recovered
    cdef readonly object offset
    cdef readonly object epoch

    def __cinit__(self, str channel):
        self.channel = channel
        self.recovered = False
        self.offset = None
        self.epoch = None

    def __repr__(self):
        return (f"Subscription(channel={self.channel!r}, recovered={self.recovered}, "
                f"offset={self.offset!r}, epoch={self.epoch!r})")


cdef Connection _connection(Node node, object pid, str what):
    """The local connection ``pid`` names, or None when it has ended;
    NotImplementedError for another node's, ValueError for a process that is
    not a connection."""
    cdef Process proc = node.lookup(pid)
    cdef Pid parsed
    if proc is None:
        parsed = to_pid(pid)
        if parsed.node != node.name:
            raise NotImplementedError(
                f"{what}: {parsed} is a connection of node {parsed.node!r}; channels across nodes are not "
                "there yet (subscribe it from a process on its own node)")
        return None
    if not isinstance(proc, Connection):
        raise ValueError(f"{what}: {proc.pid} is not a WebSocket connection; channels hold connections")
    return <Connection>proc


cdef int _join(Connection conn, str name, object info) except -1:
    cdef Channel channel
    if conn.channels is None:
        conn.channels = {}
    elif name in conn.channels:
        (<Channel>conn.channels[name]).members[conn] = info
        return 0
    if len(conn.channels) >= max_channels_per_connection():
        raise ValueError(f"{conn.pid} is already in {max_channels_per_connection()} channels, the limit "
                         "(WSRELAY_MAX_CHANNELS_PER_CONNECTION)")
    channel = _table.get(name)
    if channel is None:
        channel = _table[name] = Channel(name)
    channel.members[conn] = info
    conn.channels[name] = channel
    return 0


cdef int _part(Connection conn, Channel channel) except -1:
    del channel.members[conn]
    if not channel.members:
        del _table[channel.name]
    return 0


def _grant(Connection conn):
    """The handler's grant ({name: info}, checked by relayspec) made
    subscriptions, as the connection opens."""
    cdef dict granted = conn.channels
    conn.channels = None
    for name, info in granted.items():
        _join(conn, name, info)


def _leave_all(Connection conn):
    """The connection has ended: out of all its channels."""
    cdef Channel channel
    for channel in conn.channels.values():
        _part(conn, channel)
    conn.channels = None


set_channel_hooks(_grant, _leave_all)


cdef str _envelope(str name, str event, object data, bint with_data):
    cdef dict message = {"channel": name, "event": event}
    if with_data:
        message["data"] = data
    try:
        return orjson.dumps(message).decode()
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"channels.publish({name!r}): data is not JSON-serialisable: {exc}") from None


def subscribe(pid, name, info=None):
    """Subscribe the connection ``pid`` (a Pid or its text, on this node)
    to channel ``name``; a Subscription. ProcessLookupError when the
    connection has ended, ValueError for a bad name, a non-connection or a
    connection at its limit of channels."""
    cdef str checked = check_channel_name(name)
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"channels.subscribe: info must be a dict, got {type(info).__name__}")
    cdef Connection conn = _connection(calling_process("channels.subscribe").node, pid, "channels.subscribe")
    if conn is None or not conn.alive:
        raise ProcessLookupError(f"channels.subscribe: connection {pid} is not alive")
    _join(conn, checked, info)
    return Subscription(checked)


def unsubscribe(pid, name):
    """Take the connection ``pid`` out of channel ``name`` and tell its
    client (an ``unsubscribed`` event); False when it was not in it (or has
    ended)."""
    cdef str checked = check_channel_name(name)
    cdef Connection conn = _connection(calling_process("channels.unsubscribe").node, pid, "channels.unsubscribe")
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
    """Send ``data`` (a JSON value) to every subscriber of ``name`` on this
    node, in a ``publication`` envelope encoded and framed once; ``{}``."""
    cdef str checked = check_channel_name(name)
    calling_process("channels.publish")  # on the loop's thread (WrongThread otherwise)
    cdef str text = _envelope(checked, PUBLICATION, data, True)
    cdef Channel channel = _table.get(checked)
    cdef FanOut out
    cdef Connection conn
    if channel is not None:
        out = fan_out({"type": "text", "data": text})
        for conn in channel.members:
            out.offer_to(conn)
    return {}


def active(pattern=None):
    """{name: {"subscribers": n}} for this node's channels (those matching
    the fnmatch ``pattern`` when given)."""
    cdef Channel channel
    calling_process("channels.active")
    if pattern is not None and type(pattern) is not str:
        raise ValueError(f"channels.active: pattern must be a str, got {type(pattern).__name__}")
    return {name: {"subscribers": len(channel.members)} for name, channel in _table.items()
            if pattern is None or fnmatchcase(name, pattern)}


def subscribers(name):
    """The PIDs of channel ``name``'s subscribers on this node."""
    cdef Channel channel = _table.get(check_channel_name(name))
    calling_process("channels.subscribers")
    return [] if channel is None else [(<Connection>conn).pid for conn in channel.members]
