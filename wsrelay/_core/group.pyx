# cython: language_level=3
"""Fan-out: one frame, encoded once, queued for many connections.

A Group is a set of connection processes (a chat room, a topic's
subscribers). ``group.send(payload)`` takes a ``ws.send`` payload, builds the
WebSocket frame once and queues that same bytes object for every member (see
the write coalescing in relay.pyx); members leave the group by themselves
when their connection ends.
"""

from .pid cimport to_pid
from .relay cimport Connection
from .runtime cimport Node, Process, calling_process
from .writer cimport FanOut, fan_out


cdef Connection _connection(Node node, object pid):
    cdef Process proc = node.lookup(pid)
    if proc is None:
        to_pid(pid)
        return None
    if not isinstance(proc, Connection):
        raise ValueError(f"{proc.pid} is not a WebSocket connection; groups hold connections")
    return <Connection>proc


cdef int _broadcast(object connections, object payload) except -1:
    """Queue one frame, encoded once (and compressed once for the members
    that agreed to permessage-deflate), for each connection; how many took it."""
    cdef FanOut out = fan_out(payload)
    cdef Connection conn
    cdef int sent = 0
    for conn in connections:
        sent += out.offer_to(conn)
    return sent


cdef class Group:
    """A set of WebSocket connections that receive the same frames."""

    def __cinit__(self):
        self.members = set()

    def add(self, pid):
        """Add the connection ``pid`` (a Pid or its text). False when it has
        already ended; ValueError when it is not a connection."""
        cdef Connection conn = _connection(calling_process("Group.add").node, pid)
        if conn is None:
            return False
        if conn in self.members:
            return True
        self.members.add(conn)
        if conn.groups is None:
            conn.groups = []
        conn.groups.append(self.members)
        return True

    def discard(self, pid):
        cdef Process proc = calling_process("Group.discard").node.lookup(pid)
        if proc is None or proc not in self.members:
            return False
        self.members.discard(proc)
        (<Connection>proc).groups.remove(self.members)
        return True

    def __len__(self):
        return len(self.members)

    def __contains__(self, pid):
        cdef Process proc = calling_process("Group.__contains__").node.lookup(pid)
        return proc is not None and proc in self.members

    def pids(self):
        return [(<Connection>c).pid for c in self.members]

    def send(self, payload):
        """Send a ``ws.send`` payload to every member, the frame built once;
        returns how many connections it was queued for."""
        calling_process("Group.send")
        return _broadcast(self.members, payload)


def broadcast(pids, payload):
    """``ws.send`` one payload to each connection in ``pids``, the frame built
    once. PIDs that have ended are skipped; returns how many were sent."""
    cdef Node node = calling_process("broadcast").node
    cdef list targets = []
    cdef Connection conn
    for pid in pids:
        conn = _connection(node, pid)
        if conn is not None:
            targets.append(conn)
    return _broadcast(targets, payload)
