# cython: language_level=3
"""Fan-out: one frame, encoded once, queued for many connections.

A Group is a set of connection processes (a chat room, a topic's
subscribers). ``group.send(payload)`` takes a ``ws.send`` payload, builds the
WebSocket frame once and queues that same bytes object for every member (see
the write coalescing in writer.pyx); members leave the group by themselves
when their connection ends.

Members may live on other nodes (docs/cluster.md, "Groups"): the frame is shipped once to each
node with members, with the ids of its members there, and queued by that
node for each of them; the node watches them and they leave the group when
their connection ends or their node is lost.
"""

from .pid cimport Pid, to_pid
from .relay cimport Connection
from .remote cimport RemoteProcess
from .runtime cimport Node, Process, calling_process
from .writer cimport FanOut, fan_out


cdef class _NodeMembers:
    """The members of one group on one other node, and their ids as the
    frames to that node carry them (made again only when they change)."""

    cdef set members
    cdef list ids

    def __cinit__(self):
        self.members = set()

    def discard(self, RemoteProcess proxy):
        if proxy in self.members:
            self.members.discard(proxy)
            self.ids = None

    cdef list id_list(self):
        if self.ids is None:
            self.ids = [(<RemoteProcess>proxy).pid.id for proxy in self.members]
        return self.ids


cdef Process _member(Node node, object pid):
    """The connection ``pid`` names (local), its RemoteProcess (another
    node's, up), or None (ended, or its node is down)."""
    cdef Process proc = node.lookup(pid)
    cdef Pid parsed
    if proc is not None:
        if not isinstance(proc, Connection):
            raise ValueError(f"{proc.pid} is not a WebSocket connection; groups hold connections")
        return proc
    parsed = to_pid(pid)
    if parsed.node == node.name or node.remote is None:
        return None
    return node.remote.reachable(parsed)


cdef int _broadcast(Node node, object connections, dict remote, object payload) except -1:
    """Queue one frame, encoded once (and compressed once for the members
    that agreed to permessage-deflate), for each connection, and ship it once
    to each other node with members; how many it was queued or shipped for.
    Members on other nodes get the uncompressed frame, which RFC 7692 allows
    on any connection."""
    cdef Py_ssize_t size = 0
    cdef FanOut out = fan_out(payload)
    cdef Connection conn
    cdef _NodeMembers members
    cdef int sent = 0
    for conn in connections:
        sent += out.offer_to(conn)
    if remote:
        frame = out.plain_frame(&size)
        if type(frame) is tuple:
            frame = b"".join(<tuple>frame)
        for node_name, members in remote.items():
            if members.members and node.remote.ship_frames(node_name, members.id_list(), frame):
                sent += len(members.members)
    return sent


cdef class Group:
    """A set of WebSocket connections, on this node or others, that receive
    the same frames."""

    def __cinit__(self):
        self.members = set()
        self.remote = {}

    def add(self, pid):
        """Add the connection ``pid`` (a Pid or its text). False when it has
        already ended (or its node is down); ValueError when it is not a
        connection."""
        cdef Process proc = _member(calling_process("Group.add").node, pid)
        cdef Connection conn
        cdef RemoteProcess proxy
        cdef _NodeMembers members
        if proc is None:
            return False
        if isinstance(proc, RemoteProcess):
            proxy = <RemoteProcess>proc
            members = self.remote.get(proxy.pid.node)
            if members is None:
                members = self.remote[proxy.pid.node] = _NodeMembers()
            if proxy in members.members:
                return True
            members.members.add(proxy)
            members.ids = None
            if proxy.groups is None:
                proxy.groups = []
            proxy.groups.append(members)
            proxy.watch_for_groups()
            return proxy.alive
        conn = <Connection>proc
        if conn in self.members:
            return True
        self.members.add(conn)
        if conn.groups is None:
            conn.groups = []
        conn.groups.append(self.members)
        return True

    def discard(self, pid):
        cdef Node node = calling_process("Group.discard").node
        cdef Process proc = node.lookup(pid)
        if proc is not None:
            if proc not in self.members:
                return False
            self.members.discard(proc)
            (<Connection>proc).groups.remove(self.members)
            return True
        members, proxy = self._remote_member(node, pid)
        if proxy is None:
            return False
        (<_NodeMembers>members).discard(proxy)
        (<RemoteProcess>proxy).groups.remove(members)
        node.remote.drop_proxy_if_idle(proxy)
        return True

    def __len__(self):
        cdef _NodeMembers members
        cdef Py_ssize_t n = len(self.members)
        for members in self.remote.values():
            n += len(members.members)
        return n

    def __contains__(self, pid):
        cdef Node node = calling_process("Group.__contains__").node
        cdef Process proc = node.lookup(pid)
        if proc is not None:
            return proc in self.members
        return self._remote_member(node, pid)[1] is not None

    cdef tuple _remote_member(self, Node node, object pid):
        """(the members of its node, its proxy) when ``pid``, of another
        node, is a member; (None, None) otherwise."""
        parsed = to_pid(pid)
        cdef _NodeMembers members = self.remote.get(parsed.node)
        proxy = None if node.remote is None else node.remote.proxy_of(parsed)
        if members is None or proxy is None or proxy not in members.members:
            return None, None
        return members, proxy

    def pids(self):
        cdef _NodeMembers members
        pids = [(<Connection>c).pid for c in self.members]
        for members in self.remote.values():
            pids.extend((<RemoteProcess>p).pid for p in members.members)
        return pids

    def send(self, payload):
        """Send a ``ws.send`` payload to every member, the frame built once;
        returns how many connections it was queued (or shipped) for."""
        return _broadcast(calling_process("Group.send").node, self.members, self.remote, payload)


def broadcast(pids, payload):
    """``ws.send`` one payload to each connection in ``pids``, the frame built
    once (and shipped once per other node). PIDs that have ended are skipped;
    returns how many it was sent to."""
    cdef Node node = calling_process("broadcast").node
    cdef list targets = []
    cdef dict remote = {}
    cdef Process proc
    cdef _NodeMembers members
    for pid in pids:
        proc = _member(node, pid)
        if proc is None:
            continue
        if isinstance(proc, RemoteProcess):
            members = remote.get(proc.pid.node)
            if members is None:
                members = remote[proc.pid.node] = _NodeMembers()
            members.members.add(proc)
        else:
            targets.append(proc)
    sent = _broadcast(node, targets, remote, payload)
    for members in remote.values():
        for proc in members.members:
            node.remote.drop_proxy_if_idle(proc)
    return sent
