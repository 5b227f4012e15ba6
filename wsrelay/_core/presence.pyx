# cython: language_level=3
"""Presence: who is subscribed to each channel of a namespace with
``presence: true``, on every node (docs/guide.md, "Presence";
docs/cluster.md, "Presence").

An entry is a subscription: ``{"client": <connection PID>, "user": <its
user or None>, "info": <the subscription's info or {}>}``. This node's
entries cost nothing here: they are read from the channel's own members
(channels.pyx's dict, Connection -> info), which the Presence of the
channel shares. The other nodes' are kept compactly, per node: the client's
PID text -> its user, or (user, info) when the info is not empty; no dict
per entry.

Each node is the authority for its own subscribers, since it sees them
end. In a cluster it tells every other node of the entries that began or
ended, gathered per loop iteration (as each entry is now: present with its
user and info, or gone), and all of them to a node that comes up (a
snapshot, which replaces what that node held of ours). A node that is lost
takes its entries with it. All of this travels on the ordered stream
between the two nodes, after the INTEREST counts of the same changes.

With ``join_leave: true``, every subscriber of the channel on this node
receives a ``join`` or ``leave`` event for each entry that begins or ends,
of any node, while the channel has at most ``presence_max_members``
members: every event goes to every member, so its cost grows with the
square of the room.
"""

import asyncio
import logging
from fnmatch import fnmatchcase

import orjson

from .relay cimport Connection
from .relayspec cimport check_channel_name
from .runtime cimport Node, calling_process
from .stats cimport LimitedLog
from .writer cimport FanOut, fan_out

# The events a subscriber receives.
JOIN = "join"
LEAVE = "leave"
# (pattern, presence, join_leave, presence_max_members) of each channel
# namespace of the app, in its order: the first match wins.
cdef list _namespaces = []
# name -> Presence: the presence channels with entries on any node.
cdef dict _table = {}
# name -> the connections whose entry changed since the last announcement
# (None: no announcement is scheduled).
cdef dict _dirty = None
# What no entry holds: a pop that found nothing.
cdef object _MISSING = object()

cdef LimitedLog _log = LimitedLog("wsrelay.presence")


def set_namespaces(list namespaces not None):
    """The app's channel namespaces, as (fnmatch pattern, presence,
    join_leave, presence_max_members), in order (app.install)."""
    global _namespaces
    _namespaces = [tuple(ns) for ns in namespaces]


cdef tuple _options(str name):
    """(join_leave, max members) of ``name``'s namespace when it has
    presence; None otherwise."""
    for pattern, presence, join_leave, max_members in _namespaces:
        if fnmatchcase(name, pattern):
            return (join_leave, max_members) if presence else None
    return None


cdef class Presence:
    """The entries of one presence channel, this node's and the others'."""

    def __cinit__(self, str name, bint join_leave, Py_ssize_t max_members):
        self.name = name
        self.join_leave = join_leave
        self.max_members = max_members
        self.local = None
        self.remote = {}
        self.counted = None

    cdef Py_ssize_t count(self):
        cdef Py_ssize_t n = 0 if self.local is None else len(self.local)
        for entries in self.remote.values():
            n += len(<dict>entries)
        return n

    cdef int tell(self, str event, dict entry, Py_ssize_t members) except -1:
        """``event`` about ``entry`` to this node's subscribers, when the
        channel has join/leave events and ``members`` (counting the one
        joining or leaving) is within its cap."""
        cdef FanOut out
        cdef Connection conn
        if not self.join_leave or not self.local or members > self.max_members:
            return 0
        try:
            text = orjson.dumps({"channel": self.name, "event": event, "info": entry}).decode()
        except orjson.JSONEncodeError as exc:
            # The info a process subscribed with is not JSON: nobody can be told.
            if _log.allow("encode"):
                _log.write(logging.WARNING, f"presence: {event} of {entry['client']} in {self.name!r} not sent: {exc}")
            return 0
        out = fan_out({"type": "text", "data": text})
        for conn in self.local:
            out.offer_to(conn)
        return 0


cdef Presence _create(str name):
    cdef tuple options = _options(name)
    if options is None:
        return None
    presence = _table[name] = Presence(name, options[0], options[1])
    return presence


cdef int _drop_if_empty(Presence presence) except -1:
    if not presence.local and not presence.remote and _table.get(presence.name) is presence:
        del _table[presence.name]
    return 0


cdef dict _local_entry(Connection conn, object info):
    return {"client": str(conn.pid), "user": conn.user, "info": {} if info is None else info}


cdef dict _remote_entry(str client, object value):
    if type(value) is tuple:
        return {"client": client, "user": (<tuple>value)[0], "info": (<tuple>value)[1]}
    return {"client": client, "user": value, "info": {}}


# -- this node's subscriptions (channels.pyx) ------------------------------------------


cdef Presence attach(str name, dict members):
    cdef Presence presence = _table.get(name)
    if presence is None:
        presence = _create(name)
        if presence is None:
            return None
    presence.local = members
    return presence


cdef int joined(Node node, Presence presence, Connection conn, bint fresh) except -1:
    if fresh:
        presence.counted = None
        presence.tell(JOIN, _local_entry(conn, presence.local[conn]), presence.count())
    return _changed(node, presence.name, conn)


cdef int parted(Node node, Presence presence, Connection conn, object info) except -1:
    presence.counted = None
    presence.tell(LEAVE, _local_entry(conn, info), presence.count() + 1)
    _changed(node, presence.name, conn)
    return _drop_if_empty(presence)


cdef int _changed(Node node, str name, Connection conn) except -1:
    """The entry of ``conn`` in ``name`` began, ended or changed: the other
    nodes hear of it at the end of this loop iteration."""
    global _dirty
    if node.remote is None:
        return 0
    if _dirty is None:
        _dirty = {}
        asyncio.get_running_loop().call_soon(_announce, node)
    conns = _dirty.get(name)
    if conns is None:
        conns = _dirty[name] = set()
    (<set>conns).add(conn)
    return 0


def _announce(Node node):
    global _dirty
    dirty, _dirty = _dirty, None
    if dirty and node.remote is not None:
        node.remote.announce_presence(None, False, _changes(dirty))


cdef int announce_now(Node node) except -1:
    """What changed is told now rather than at the end of the iteration
    (before the answer to another node's request that changed it)."""
    _announce(node)
    return 0


cdef list _changes(dict dirty):
    """[[name, [[client, user, info or None], ...], [client, ...]], ...]:
    the entries of these connections as they are now, present or gone."""
    cdef list changes = []
    cdef list joins, leaves
    cdef Presence presence
    cdef dict local
    cdef Connection conn
    for name, conns in dirty.items():
        presence = _table.get(name)
        local = None if presence is None else presence.local
        joins = []
        leaves = []
        for conn in conns:
            if local is not None and conn in local:
                joins.append([str(conn.pid), conn.user, local[conn] or None])
            else:
                leaves.append(str(conn.pid))
        changes.append([name, joins, leaves])
    return changes


cdef list _all_local():
    cdef Presence presence
    cdef Connection conn
    return [[name, [[str(conn.pid), conn.user, info or None] for conn, info in presence.local.items()], []]
            for name, presence in _table.items() if presence.local]


# -- the other nodes (channels.pyx's _ClusterChannels) ------------------------------


cdef int node_up(Node node, str peer) except -1:
    """All of this node's entries to ``peer``, which replace what it held
    of ours (nothing, unless it never saw us go)."""
    if node.remote is not None and any(ns[1] for ns in _namespaces):
        node.remote.announce_presence(peer, True, _all_local())
    return 0


cdef int node_down(str peer) except -1:
    cdef Presence presence
    for presence in [p for p in _table.values() if peer in (<Presence>p).remote]:
        _forget(presence, peer, presence.remote.pop(peer))
    return 0


cdef int _forget(Presence presence, str peer, dict entries) except -1:
    """``peer``'s ``entries`` of ``presence`` are gone (taken out already)."""
    cdef Py_ssize_t members = presence.count() + len(entries)
    presence.counted = None
    for client, value in entries.items():
        presence.tell(LEAVE, _remote_entry(client, value), members)
        members -= 1
    return _drop_if_empty(presence)


cdef bint _malformed(str peer, object what) except -1:
    if _log.allow("malformed"):
        _log.write(logging.WARNING, f"presence: malformed change from {peer} dropped: {what!r}")
    return True


cdef int on_presence(str peer, bint snapshot, list changes) except -1:
    """``peer``'s entries that began or ended ([name, joins, leaves] per
    channel); with ``snapshot``, all of them, replacing those held."""
    cdef dict before = {}
    cdef Presence presence
    cdef dict entries, previous
    if snapshot:
        for presence in [p for p in _table.values() if peer in (<Presence>p).remote]:
            before[presence.name] = presence.remote.pop(peer)
            presence.counted = None
    for change in changes:
        if type(change) is not list or len(change) != 3 or type(change[0]) is not str \
                or type(change[1]) is not list or type(change[2]) is not list:
            _malformed(peer, change)
            continue
        name, joins, leaves = change
        presence = _table.get(name)
        if presence is None:
            presence = _create(name)
            if presence is None:
                if _log.allow("disabled"):
                    _log.write(logging.WARNING, f"presence: entries of {name!r} from {peer} dropped: its namespace "
                               "here has no presence (do the nodes run the same app?)")
                continue
        presence.counted = None
        entries = presence.remote.get(peer)
        if entries is None:
            entries = presence.remote[peer] = {}
        previous = before.pop(name, None)
        for join in joins:
            if type(join) is not list or len(join) != 3 or type(join[0]) is not str \
                    or (join[1] is not None and type(join[1]) is not str) \
                    or (join[2] is not None and type(join[2]) is not dict):
                _malformed(peer, join)
                continue
            client, user, info = join
            if previous is not None and client in previous:
                existed = True
                del previous[client]
            else:
                existed = client in entries
            value = user if not info else (user, info)
            entries[client] = value
            if not existed:
                presence.tell(JOIN, _remote_entry(client, value), presence.count())
        for client in leaves:
            if type(client) is not str:
                _malformed(peer, client)
                continue
            value = entries.pop(client, _MISSING)
            if value is not _MISSING:
                presence.tell(LEAVE, _remote_entry(client, value), presence.count() + 1)
        if previous:
            _forget(presence, peer, previous)
        if not entries:
            del presence.remote[peer]
            _drop_if_empty(presence)
    for name, previous in before.items():
        _forget(_table[name], peer, previous)
    return 0


# -- what processes ask (wsrelay.channels) ------------------------------------------


cdef Presence _asked(object name, str what):
    """The Presence of channel ``name`` (None when it has no entries);
    ValueError for a bad name or one whose namespace has no presence."""
    cdef str checked = check_channel_name(name)
    calling_process(what)  # on the loop's thread
    if _options(checked) is None:
        raise ValueError(f"{what}({checked!r}): presence is not enabled for this channel (its namespace needs "
                         "presence: true)")
    return _table.get(checked)


def entries(name):
    """{"presence": [entry, ...]}: every subscription of channel ``name``,
    of every node, as this node knows them."""
    cdef Presence presence = _asked(name, "channels.presence")
    cdef list out = []
    cdef Connection conn
    if presence is not None:
        if presence.local is not None:
            out = [_local_entry(conn, info) for conn, info in presence.local.items()]
        for node_entries in presence.remote.values():
            out.extend([_remote_entry(client, value) for client, value in (<dict>node_entries).items()])
    return {"presence": out}


def stats(name):
    """{"clients": n, "users": m}: channel ``name``'s subscriptions on every
    node, and their distinct users (one user with several connections
    counts once; connections without a user count in clients only)."""
    cdef Presence presence = _asked(name, "channels.presence_stats")
    cdef set users
    cdef Connection conn
    if presence is None:
        return {"clients": 0, "users": 0}
    if presence.counted is not None:
        return {"clients": presence.counted[0], "users": presence.counted[1]}
    users = set()
    if presence.local is not None:
        for conn in presence.local:
            if conn.user is not None:
                users.add(conn.user)
    for node_entries in presence.remote.values():
        for value in (<dict>node_entries).values():
            if type(value) is tuple:
                value = (<tuple>value)[0]
            if value is not None:
                users.add(value)
    presence.counted = (presence.count(), len(users))
    return {"clients": presence.counted[0], "users": presence.counted[1]}


def here():
    """(presence channels, this node's entries, other nodes' entries), for /metrics."""
    cdef Presence presence
    cdef Py_ssize_t mine = 0, theirs = 0
    for presence in _table.values():
        mine += 0 if presence.local is None else len(presence.local)
        theirs += presence.count() - (0 if presence.local is None else len(presence.local))
    return len(_table), mine, theirs
