from .mailbox cimport RoomWaiter
from .message cimport Message
from .pid cimport Pid, PidCache
from .runtime cimport Node, Process, Remote


cdef class Outbound:
    # What the core calls on the cluster's transport (remote.pyx says what
    # each method must do); wsrelay.cluster.transport.Transport and the
    # tests' fake implement it.
    pass


cdef class RemoteProcess(Process):
    # The Groups this remote connection belongs to (group.pyx), and whether
    # the node watches it for them.
    cdef list groups
    cdef bint watched
    cdef Cluster cluster

    cdef bint relay(self, Pid client, str topic, object payload) except -1
    cdef int watch_for_groups(self) except -1
    cdef int leave_groups(self) except -1
    cdef int _watched_by(self, int kind, Process other) except -1
    cdef int _unwatched_by(self, int kind, Process other) except -1


cdef class RelayInbox(RoomWaiter):
    cdef Cluster cluster
    cdef Pid client
    cdef Process target
    cdef object held
    cdef int stop(self) except -1


cdef class Cluster(Remote):
    cdef Node node
    cdef Outbound transport
    cdef dict proxies
    cdef dict relay_in
    cdef dict _credits
    cdef dict _by_id
    cdef PidCache _pids
    cdef set _conn_hosts
    cdef set _global_holders
    cdef object loop

    cdef RemoteProcess proxy(self, Pid pid)
    cdef bint send_signal(self, int kind, Pid dest, Pid src, object reason) except -1
    cdef int ack(self, Pid client, Pid target, Py_ssize_t count) except -1
    cdef int relay(self, Pid target, Pid client, object topic, object payload) except -1
    cdef int dropped(self, str reason, Py_ssize_t count, str what) except -1
    cdef Process connection(self, long long ident)
    cdef Pid local_pid(self, str host, long long ident)
    # The monitor a call's request from another node set up here, taken
    # down as its reply leaves (on_call).
    cdef int replied(self, Pid waiter) except -1
