from .relay cimport Connection
from .runtime cimport Node


cdef class Presence:
    cdef readonly str name
    cdef bint join_leave
    cdef Py_ssize_t max_members
    # Connection -> info: this node's subscribers, the very dict of the
    # channel's members (channels.pyx), or None while it has none here.
    cdef dict local
    # node -> {client PID text: user, or (user, info) when info is not empty}
    cdef dict remote
    # (clients, distinct users) as last counted, or None since a change:
    # asked often (presence_stats), it costs a pass over every entry.
    cdef tuple counted

    cdef Py_ssize_t count(self)
    cdef int tell(self, str event, dict entry, Py_ssize_t members) except -1


# What channels.pyx calls: a channel of this node begins (its Presence, or
# None when its namespace has no presence), a subscription begins or its
# info changes (``fresh``: it is new), a subscription ends, and the cluster.
cdef Presence attach(str name, dict members)
cdef int joined(Node node, Presence presence, Connection conn, bint fresh) except -1
cdef int parted(Node node, Presence presence, Connection conn, object info) except -1
cdef int announce_now(Node node) except -1
cdef int node_up(Node node, str peer) except -1
cdef int node_down(str peer) except -1
cdef int on_presence(str peer, bint snapshot, list changes) except -1
