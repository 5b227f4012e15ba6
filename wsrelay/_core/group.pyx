# cython: language_level=3
"""Fan-out: one frame, encoded once, written to many connections.

A Group is a set of connection processes (a chat room, a topic's
subscribers). ``group.send(payload)`` takes a ``ws.send`` payload, builds the
WebSocket frame once and writes those bytes to every member; members leave
the group by themselves when their connection ends.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy

from picows.picows cimport WSMsgType, WSTransport

from .pid cimport to_pid
from .relay cimport Connection, check_send_payload
from .runtime cimport Node, Process, get_node

DEF HEADROOM = 16


cdef Connection _connection(Node node, object pid):
    cdef Process proc = node.lookup(pid)
    if proc is None:
        to_pid(pid)
        return None
    if not isinstance(proc, Connection):
        raise ValueError(f"{proc.pid} is not a WebSocket connection; groups hold connections")
    return <Connection>proc


cdef int _write_all(object connections, int opcode, const char* data, Py_ssize_t size) except -1:
    """Write one frame to each connection; the number written."""
    cdef char* buf = <char*>PyMem_Malloc(size + HEADROOM)
    cdef Connection conn
    cdef WSTransport transport
    cdef int sent = 0
    cdef Node node = get_node()
    if buf == NULL:
        raise MemoryError()
    try:
        memcpy(buf + HEADROOM, data, size)
        for conn in connections:
            transport = conn.transport
            if conn.closing or transport is None or conn.backlogged():
                node.counters.ws_frames_dropped_closing += 1
                continue
            # Writes the same header in front of the same payload each time.
            transport.send_reuse_external_buffer(<WSMsgType>opcode, buf + HEADROOM, size)
            sent += 1
    finally:
        PyMem_Free(buf)
    node.counters.ws_messages_out += sent
    node.counters.ws_bytes_out += sent * size
    return sent


cdef int _broadcast(object connections, object payload) except -1:
    cdef int opcode = check_send_payload(payload)
    cdef Py_ssize_t size
    cdef const char* data
    value = (<dict>payload)["data"]
    if opcode == WSMsgType.TEXT:
        data = PyUnicode_AsUTF8AndSize(<str>value, &size)
        return _write_all(connections, opcode, data, size)
    if type(value) is not bytes:
        value = bytes(value)
    return _write_all(connections, opcode, PyBytes_AS_STRING(<bytes>value), PyBytes_GET_SIZE(<bytes>value))


cdef class Group:
    """A set of WebSocket connections that receive the same frames."""

    def __cinit__(self):
        self.members = set()

    def add(self, pid):
        """Add the connection ``pid`` (a Pid or its text). False when it has
        already ended; ValueError when it is not a connection."""
        cdef Connection conn = _connection(get_node(), pid)
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
        cdef Process proc = get_node().lookup(pid)
        if proc is None or proc not in self.members:
            return False
        self.members.discard(proc)
        (<Connection>proc).groups.remove(self.members)
        return True

    def __len__(self):
        return len(self.members)

    def __contains__(self, pid):
        cdef Process proc = get_node().lookup(pid)
        return proc is not None and proc in self.members

    def pids(self):
        return [(<Connection>c).pid for c in self.members]

    def send(self, payload):
        """Send a ``ws.send`` payload to every member, the frame built once;
        returns how many connections it was written to."""
        return _broadcast(self.members, payload)


def broadcast(pids, payload):
    """``ws.send`` one payload to each connection in ``pids``, the frame built
    once. PIDs that have ended are skipped; returns how many were sent."""
    cdef Node node = get_node()
    cdef list targets = []
    cdef Connection conn
    for pid in pids:
        conn = _connection(node, pid)
        if conn is not None:
            targets.append(conn)
    return _broadcast(targets, payload)
