from libc.stdint cimport uint64_t

from .pid cimport Pid, PidCache
from .message cimport Message
from .mailbox cimport Mailbox
from .stats cimport Counters


cdef class Process:
    cdef readonly Pid pid
    cdef Node node
    cdef Mailbox mailbox
    cdef readonly bint alive
    # Why it ended (None while alive): a relay tells a target that returned
    # from one that failed, even when the target ended before the relay began.
    cdef readonly str exit_reason
    # Messages taken without waiting since the process last let others run.
    cdef int streak
    cdef bint trapping
    # Sets of Process objects, created on first use: most processes never
    # monitor or link, and an empty set costs 200 bytes.
    cdef set monitoring
    cdef set monitored_by
    cdef set links
    cdef list names
    cdef object task
    cdef object loop
    cdef Inbox _inbox

    cdef bint deliver(self, str topic, object payload, Pid sender) except -1
    cdef int signal(self, Message msg) except -1
    cdef int kill(self, str reason, object error) except -1
    cdef int link_exit(self, Process other, str reason, object error) except -1
    cdef int on_exit(self, str reason, object error) except -1
    # What another node's process (RemoteProcess, remote.pyx) has to tell
    # its node when a local process monitors or links it.
    cdef int on_monitored(self, Process watcher) except -1
    cdef int on_demonitored(self, Process watcher) except -1
    cdef int on_linked(self, Process other) except -1
    cdef int on_unlinked(self, Process other) except -1
    # A ready frame for a connection (a group send from another node), and
    # a relay connection's credit from its remote target.
    cdef bint offer(self, object frame, Py_ssize_t size) except -1
    cdef int credit(self, Py_ssize_t count) except -1


cdef class Remote:
    """This node's side of the cluster (remote.Cluster), all the core and the
    Python layer ask of it; a Node without one is a single node."""
    # Another node's process (a RemoteProcess), or None when the PID is of
    # an earlier run of its node.
    cdef Process process(self, Pid pid)
    # The same, but None also while its node is not up (a relay's target, a
    # group's member).
    cdef Process reachable(self, Pid pid)
    # The RemoteProcess this node holds for ``pid`` already, or None.
    cdef Process proxy_of(self, Pid pid)
    # Forget ``proxy`` once nothing here monitors, links or groups it.
    cdef int drop_proxy_if_idle(self, Process proxy) except -1
    cdef bint send(self, Pid dest, str topic, object payload, Pid sender) except -1
    # A call's request (call.pyx) for another node's ``dest``, its reply to
    # go to ``reply_to``: whether it was accepted.
    cdef bint call(self, Pid dest, str topic, object payload, Pid sender, Pid reply_to) except -1
    # One frame for connections ``ids`` of ``node``: whether it was accepted.
    cdef bint ship_frames(self, str node, list ids, bytes frame) except -1
    # Channels (channels.pyx): this node's subscriber counts for ``node``
    # (None: every node up), and a publication for ``node``'s subscribers.
    cdef int announce_channels(self, str node, list changes) except -1
    # Presence (presence.pyx): this node's entries that changed, or all of
    # them (``snapshot``), for ``node`` (None: every node up).
    cdef int announce_presence(self, str node, bint snapshot, list changes) except -1
    cdef bint ship_publication(self, str node, str channel, str envelope) except -1
    cdef Pid global_name(self, str name)
    cdef int forget(self, Process proc) except -1


cdef class Inbox:
    cdef Process proc


cdef class Node:
    cdef readonly str name
    cdef readonly str default_host
    cdef readonly Counters counters
    cdef readonly Py_ssize_t mailbox_capacity
    cdef readonly Process system
    cdef dict table
    cdef dict names
    cdef dict functions
    cdef set hosts
    cdef uint64_t _next_id
    # Of this node's run in the cluster (0 on a single node): the high 32
    # bits of its PIDs' ids, so no PID of an earlier run names a process of this one.
    cdef readonly unsigned long incarnation
    cdef readonly Remote remote
    # The thread running the loop the runtime belongs to (0: not bound yet).
    cdef unsigned long thread_id
    cdef object _kill_queue
    # Text forms of other nodes' PIDs, parsed (cluster mode).
    cdef PidCache _parsed
    cdef bint _finishing

    cdef Pid new_pid(self, str host)
    cdef int enter_cluster(self, Remote remote, unsigned long incarnation) except -1
    cdef int attach(self, Process proc, Pid pid, bint with_mailbox=*) except -1
    cdef Process lookup(self, object dest)
    cdef int finish(self, Process proc, str reason, object error) except -1
    cdef int _finish_one(self, Process proc, str reason, object error) except -1
    cdef int bookkeeping_error(self, str kind, str what, object exc) except -1
    cdef int add_monitor(self, Process watcher, Process target) except -1
    cdef int remove_monitor(self, Process watcher, Process target) except -1
    cdef bint send_from(self, object dest, str topic, object payload, Pid sender) except -1


cdef bint part_monitor(Process watcher, Process target) except -1
cdef bint join_links(Process a, Process b) except -1
cdef bint part_links(Process a, Process b) except -1
cdef int link_processes(Process a, Process b) except -1
cdef int unlink_processes(Process a, Process b) except -1
cdef Node get_node()
cdef Process current_process()
cdef Process calling_process(str what)
cdef Message exit_event(str topic, Pid pid, str reason, object error)
cdef object new_future(object loop)
cdef str check_topic(object topic)
cdef bint deliver_request(Process proc, str topic, object payload, Pid sender, Pid reply_to) except -1
cdef int reply_dropped(Node node, Pid waiter, Pid sender) except -1
