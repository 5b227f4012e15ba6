# cython: language_level=3
"""Processes of other nodes, and this node's side of the cluster.

A PID of another node is represented here by a RemoteProcess when a local
process monitors or links it, or relays to it: the proxy sits in the local
sets of monitors and links like any process, so the exit cascade keeps one
code path. What a local process does to it (monitor, link, terminate, an
exit it must hear of) becomes a signal to its node; what its node says (its
end, a link broken) reaches the local processes through the proxy; and when
its node is lost, the proxy ends with reason ``noconnection``, which fires
every monitor and link of it at once (docs/cluster.md, "Failures").

``Cluster`` is the node's half of the transport (wsrelay.cluster.transport):
the core calls the transport through ``Outbound``, synchronously, to send,
and the transport calls the Cluster's ``on_*`` methods with what arrives, in
order per sending node. ``join_cluster`` wires the two together.

A relay connection whose target is on another node sends its messages as
RELAY signals and counts them until the target's node acknowledges them
(CREDIT, once the message is in the target's mailbox); it stops reading
while more than the mailbox capacity is unacknowledged, so the receiving
node holds at most that many per connection while the target is full.
"""

import asyncio
import logging
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from .frames cimport encode_send, parse_close_payload
from .message cimport Message, new_message
from .mailbox cimport Mailbox, RoomWaiter
from .pid cimport Pid, PidCache, make_pid
from .relayspec cimport parse_control
from .runtime cimport (Node, Process, Remote, deliver_request, exit_event, get_node, join_links, part_links,
                       part_monitor, reply_dropped)
from .stats cimport Counters, LimitedLog
from .signals cimport Signal

from .errors import MailboxFull
from .stats import COUNTERS
from .vocab import EXIT, MAILBOX_FULL, NOCONNECTION, NOPROC, REJECTED, REPLY, UNREACHABLE

cdef LimitedLog _log = LimitedLog("wsrelay.cluster")

# The Counters field each drop reason (vocab.DROP_REASONS) is counted in.
cdef dict _DROP_COUNTERS = {label[1]: field for field, family, label, _ in COUNTERS
                            if family == "wsrelay_cluster_dropped"}


cdef class Outbound:
    """What the core calls on the transport that carries its traffic to the
    other nodes: sends and signals for PIDs, frames for connections,
    liveness, global names. Calls come from the loop's thread and must not
    block; a False return means the destination's node is down or unknown
    (the core counts the drop). ``incarnation`` is this node's run in the
    cluster, set by the time ``join_cluster`` is called."""

    def attach(self, hooks):
        """Deliver what arrives from now on to ``hooks`` (the Cluster):
        ``on_send``, ``on_call``, ``on_signal``, ``on_frames``, ``on_interest``,
        ``on_presence``, ``on_publication``, ``on_channel_request``,
        ``on_node_up``, ``on_node_down``."""
        raise NotImplementedError

    def send(self, Pid dest, topic, payload, Pid sender):
        """A message for ``dest``, a process of another node."""
        raise NotImplementedError

    def call(self, Pid dest, topic, payload, Pid sender, Pid reply_to):
        """A call's request for ``dest``, a process of another node: a
        message that carries the address of its reply (``reply_to``, the
        caller's waiter); its node calls ``on_call`` with it."""
        raise NotImplementedError

    def signal(self, int kind, Pid dest, Pid src, reason):
        """A signal (signals.Signal, as a plain int) from ``src`` for ``dest``."""
        raise NotImplementedError

    def frames(self, str node, list conn_ids, bytes frame):
        """One WebSocket frame for each of the connections ``conn_ids`` of ``node``."""
        raise NotImplementedError

    def is_up(self, str node):
        """Whether ``node`` is up: what is sent to it now is accepted."""
        raise NotImplementedError

    def peer_incarnation(self, str node):
        """The live incarnation of ``node``, None unless it is up."""
        raise NotImplementedError

    async def register_global(self, str name, Pid pid):
        """Claim ``name`` for ``pid`` cluster-wide: False when a live process holds it."""
        raise NotImplementedError

    def whereis_global(self, str name):
        """The holder of ``name`` in this node's view, or None."""
        raise NotImplementedError

    def release_globals(self, Pid pid):
        """``pid`` ended: release the names it held."""
        raise NotImplementedError

    def interest(self, node, list changes):
        """This node's subscriber counts of channels, [[name, count], ...]
        (0: it has none left), for ``node``, or for every node up (None)."""
        raise NotImplementedError

    def presence(self, node, bint snapshot, list changes):
        """This node's presence entries that began or ended, [[channel,
        [[client, user, info], ...], [client, ...]], ...], or all of them
        (``snapshot``: they replace what ``node`` held), for ``node``, or
        for every node up (None)."""
        raise NotImplementedError

    def publication(self, str node, str channel, str envelope):
        """A channel's publication (the JSON text its clients receive) for
        the subscribers of ``node``: whether it was accepted."""
        raise NotImplementedError

    async def channel_request(self, str node, list args):
        """``node``'s core's ``on_channel_request(args)``, None when it did
        not answer in time."""
        raise NotImplementedError

    def up_nodes(self):
        """The names of the nodes that are up."""
        raise NotImplementedError


# Set by channels.pyx (which comes after this module): what arrives for
# channels, and the peers coming and going that its view of who subscribes
# to what follows.
cdef object _channels = None


def set_channel_handlers(handlers):
    """``handlers``: on_interest(node, changes), on_presence(node, snapshot,
    changes), on_publication(channel, envelope), on_request(args),
    on_node_up(node), on_node_down(node)."""
    global _channels
    _channels = handlers


def join_cluster(Outbound transport not None, Node node=None):
    """Make ``node`` (this interpreter's by default) a node of the cluster
    ``transport`` was started on: its PIDs carry the transport's
    incarnation, the core sends through ``transport``, and what arrives goes
    to the core. Call it on the loop's thread, after ``await
    transport.start()`` and before spawning or serving anything; the
    node's side of the cluster (a Cluster) is returned."""
    cdef Cluster cluster
    if node is None:
        node = get_node()
    cluster = Cluster(node, transport, asyncio.get_running_loop())
    node.enter_cluster(cluster, transport.incarnation)
    transport.attach(cluster)
    return cluster


cdef Py_ssize_t _payload_size(bytes frame) noexcept:
    """The payload length in a server frame's header (frames.pyx writes them)."""
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
    if n < 2:
        return 0
    if data[1] < 126:
        return data[1]
    if data[1] == 126:
        return n - 4
    return n - 10


cdef class RemoteProcess(Process):
    """A process of another node (see the module's docstring)."""

    def __repr__(self):
        return f"<RemoteProcess {self.pid}>"

    cdef bint deliver(self, str topic, object payload, Pid sender) except -1:
        return self.cluster.send(self.pid, topic, payload, sender)

    cdef int signal(self, Message msg) except -1:
        # A local process this one monitors ended: tell its node.
        if msg.topic == EXIT:
            self.cluster.send_signal(Signal.EXIT, self.pid, msg.sender, (<dict>msg.payload)["reason"])
        return self.cluster.drop_proxy_if_idle(self)

    cdef int link_exit(self, Process other, str reason, object error) except -1:
        # Its node applies the rules (normal or not, trapping or not).
        self.cluster.send_signal(Signal.LINK_EXIT, self.pid, other.pid, reason)
        self.cluster.drop_proxy_if_idle(self)
        return 0

    cdef int kill(self, str reason, object error) except -1:
        if not self.cluster.send_signal(Signal.KILL, self.pid, self.node.system.pid, reason):
            self.cluster.dropped(UNREACHABLE, 1, f"terminate({self.pid})")
        return 0

    cdef int on_monitored(self, Process watcher) except -1:
        return self._watched_by(Signal.MONITOR, watcher)

    cdef int on_demonitored(self, Process watcher) except -1:
        return self._unwatched_by(Signal.DEMONITOR, watcher)

    cdef int on_linked(self, Process other) except -1:
        return self._watched_by(Signal.LINK, other)

    cdef int on_unlinked(self, Process other) except -1:
        return self._unwatched_by(Signal.UNLINK, other)

    cdef int _watched_by(self, int kind, Process other) except -1:
        """Tell its node that ``other`` monitors or links it (``kind``)."""
        if not self.cluster.send_signal(kind, self.pid, other.pid, None):
            # Its node is down or unknown: the monitor or link fires at once.
            self.node.finish(self, NOCONNECTION, None)
        return 0

    cdef int _unwatched_by(self, int kind, Process other) except -1:
        """Tell its node that ``other`` no longer monitors or links it."""
        self.cluster.send_signal(kind, self.pid, other.pid, None)
        return self.cluster.drop_proxy_if_idle(self)

    cdef int on_exit(self, str reason, object error) except -1:
        self.cluster.proxies.pop(self.pid, None)
        return self.leave_groups()

    cdef int leave_groups(self) except -1:
        cdef object members
        if self.groups is not None:
            for members in self.groups:
                members.discard(self)
            self.groups = None
        return 0

    cdef bint relay(self, Pid client, str topic, object payload) except -1:
        """A relay connection's message for this (its target)."""
        return self.cluster.send_signal(Signal.RELAY, self.pid, client, [topic, payload])

    cdef int watch_for_groups(self) except -1:
        """Hear of its end, to take it out of the groups it is in."""
        if not self.watched:
            self.watched = True
            if not self.cluster.send_signal(Signal.MONITOR, self.pid, self.node.system.pid, None):
                self.node.finish(self, NOCONNECTION, None)
        return 0


cdef class RelayInbox(RoomWaiter):
    """Messages of a connection of another node for a local target whose
    mailbox was full: at most the mailbox capacity, because the connection
    stops at that many unacknowledged."""

    cdef int on_room(self) except -1:
        cdef Mailbox mailbox = self.target.mailbox
        cdef Py_ssize_t pushed = 0
        while self.held and mailbox is not None and mailbox.push(<Message>self.held[0]):
            self.held.popleft()
            pushed += 1
        self.cluster.node.counters.messages_sent += pushed
        if pushed:
            self.cluster.ack(self.client, self.target.pid, pushed)
        if self.held and mailbox is not None:
            mailbox.wait_for_room(self)
        elif self.cluster.relay_in.get(self.client) is self:
            del self.cluster.relay_in[self.client]
        return 0

    cdef int stop(self) except -1:
        if self.waiting_on is not None:
            self.waiting_on.withdraw(self)
        return 0


cdef class Cluster(Remote):
    """The node's side of the cluster; ``transport`` carries what it sends."""

    def __init__(self, Node node not None, Outbound transport not None, loop):
        self.node = node
        self.transport = transport
        self.loop = loop
        self.proxies = {}
        self.relay_in = {}
        self._credits = {}
        self._by_id = {}
        self._pids = PidCache()
        self._conn_hosts = set()
        self._global_holders = set()

    def add_connection_host(self, str host not None):
        self._conn_hosts.add(host)

    # -- what the core asks ---------------------------------------------------------------

    cdef RemoteProcess proxy(self, Pid pid):
        cdef RemoteProcess proxy = self.proxies.get(pid)
        if proxy is None:
            proxy = RemoteProcess.__new__(RemoteProcess)
            proxy.pid = pid
            proxy.node = self.node
            proxy.cluster = self
            proxy.alive = True
            proxy.trapping = False
            self.proxies[pid] = proxy
        return proxy

    cdef Process process(self, Pid pid):
        incarnation = self.transport.peer_incarnation(pid.node)
        if incarnation is not None and incarnation != (pid.id >> 32):
            # A PID of an earlier run of a node that is up again: dead to all.
            return None
        return self.proxy(pid)

    cdef Process reachable(self, Pid pid):
        if not self.transport.is_up(pid.node):
            return None
        return self.process(pid)

    cdef Process proxy_of(self, Pid pid):
        return self.proxies.get(pid)

    cdef int drop_proxy_if_idle(self, Process proxy) except -1:
        if not (proxy.monitored_by or proxy.monitoring or proxy.links or (<RemoteProcess>proxy).groups):
            if self.proxies.get(proxy.pid) is proxy:
                del self.proxies[proxy.pid]
        return 0

    cdef bint send(self, Pid dest, str topic, object payload, Pid sender) except -1:
        """A message for a process of another node; ws.* payloads are checked
        here, at the sending call, and a ws.send is shipped as its ready
        frame, so the receiving node encodes nothing."""
        cdef Py_ssize_t size = 0
        cdef int code = 0
        if topic == "ws.send":
            frame = encode_send(payload, &size)
            if type(frame) is tuple:
                frame = b"".join(<tuple>frame)
            incarnation = self.transport.peer_incarnation(dest.node)
            # (frames name connections by id, so the incarnation is checked here)
            sent = incarnation == (dest.id >> 32) and self.transport.frames(dest.node, [dest.id], frame)
        else:
            if topic == "ws.close":
                parse_close_payload(payload, &code)
            elif topic == "ws.control":
                parse_control(payload)
            sent = self.transport.send(dest, topic, payload, sender)
            if topic == REPLY:
                self.replied(dest)
        if not sent:
            self.dropped(UNREACHABLE, 1, f"{topic!r} to {dest}")
        return sent

    cdef bint send_signal(self, int kind, Pid dest, Pid src, object reason) except -1:
        """A signal for another node's ``dest`` (an int on the way out, not a
        Signal: the wire carries plain numbers)."""
        return self.transport.signal(kind, dest, src, reason)

    cdef bint ship_frames(self, str node, list ids, bytes frame) except -1:
        return self.transport.frames(node, ids, frame)

    cdef int announce_channels(self, str node, list changes) except -1:
        self.transport.interest(node, changes)
        return 0

    cdef int announce_presence(self, str node, bint snapshot, list changes) except -1:
        self.transport.presence(node, snapshot, changes)
        return 0

    cdef bint ship_publication(self, str node, str channel, str envelope) except -1:
        sent = self.transport.publication(node, channel, envelope)
        if not sent:
            self.dropped(UNREACHABLE, 1, f"a publication of {channel!r} for node {node}")
        return sent

    async def channel_request(self, str node not None, list args not None):
        """What ``node`` answers to a channel request (channels.pyx), None
        when it did not in time."""
        return await self.transport.channel_request(node, args)

    def up_nodes(self):
        return self.transport.up_nodes()

    cdef bint call(self, Pid dest, str topic, object payload, Pid sender, Pid reply_to) except -1:
        sent = self.transport.call(dest, topic, payload, sender, reply_to)
        if not sent:
            self.dropped(UNREACHABLE, 1, f"call {topic!r} to {dest}")
        return sent

    cdef Pid global_name(self, str name):
        return self.transport.whereis_global(name)

    async def register_global(self, str name not None, Pid pid not None):
        if not await self.transport.register_global(name, pid):
            return False
        self._global_holders.add(pid)
        return True

    cdef int forget(self, Process proc) except -1:
        if proc.pid in self._global_holders:
            self._global_holders.discard(proc.pid)
            self.transport.release_globals(proc.pid)
        if self._by_id:
            self._by_id.pop(proc.pid.id, None)
        return 0

    cdef int dropped(self, str reason, Py_ssize_t count, str what) except -1:
        cdef Counters counters = self.node.counters
        field = _DROP_COUNTERS[reason]
        setattr(counters, field, getattr(counters, field) + count)
        if _log.allow("dropped_" + reason):
            _log.write(logging.WARNING, f"cluster: {what} not delivered ({reason})")
        return 0

    cdef Process connection(self, long long ident):
        cdef Process proc = self._by_id.get(ident)
        if proc is not None:
            return proc
        for host in self._conn_hosts:
            proc = self.node.lookup(self.local_pid(host, ident))
            if proc is not None:
                self._by_id[ident] = proc
                return proc
        return None

    # -- relay credit ---------------------------------------------------------------------

    cdef int ack(self, Pid client, Pid target, Py_ssize_t count) except -1:
        """``count`` more messages of ``client`` went into ``target``'s
        mailbox; the acknowledgements of one loop iteration go together."""
        cdef list pending = self._credits.get(client)
        if pending is None:
            if not self._credits:
                self.loop.call_soon(self._send_credits)
            self._credits[client] = [target, count]
        else:
            pending[1] += count
        return 0

    def _send_credits(self):
        credits, self._credits = self._credits, {}
        for client, (target, count) in credits.items():
            self.send_signal(Signal.CREDIT, client, target, count)

    cdef int relay(self, Pid target_pid, Pid client, object topic, object payload) except -1:
        cdef Process target = self.node.lookup(target_pid)
        cdef RelayInbox inbox = self.relay_in.get(client)
        cdef Message msg
        if inbox is not None and inbox.target is not target:
            # The connection moved on; what was held for the old target can
            # no longer reach it (it ended, or this is its ws.leave's wake).
            del self.relay_in[client]
            inbox.stop()
            self.dropped(NOPROC, len(inbox.held), f"messages of {client} held for {inbox.target.pid}")
            inbox = None
        if target is None:
            self.dropped(NOPROC, 1, f"relay message of {client} for {target_pid}")
            return 0
        if target.mailbox is None:
            self.dropped(REJECTED, 1, f"relay message of {client} for {target_pid}, a connection")
            return 0
        msg = new_message(topic, payload, client)
        if topic == "ws.leave":
            # Bounded (one per connection), like a local ws.leave; what was
            # held goes before it.
            if inbox is not None:
                del self.relay_in[client]
                inbox.stop()
                while inbox.held:
                    target.mailbox.push_force(inbox.held.popleft())
            target.mailbox.push_force(msg)
            return 0
        if inbox is None and target.mailbox.push(msg):
            self.node.counters.messages_sent += 1
            return self.ack(client, target_pid, 1)
        if inbox is None:
            inbox = RelayInbox.__new__(RelayInbox)
            inbox.cluster = self
            inbox.client = client
            inbox.target = target
            inbox.held = deque()
            self.relay_in[client] = inbox
            target.mailbox.wait_for_room(inbox)
        inbox.held.append(msg)
        return 0

    # -- what arrives (the transport's hooks) -----------------------------------------------

    cdef Pid local_pid(self, str host, long long ident):
        """A PID of this node (cached: most traffic goes to few processes)."""
        key = (host, ident)
        cdef Pid pid = self._pids.get(key)
        if pid is None:
            pid = self._pids.put(key, make_pid(self.node.name, host, ident))
        return pid

    def on_send(self, long long dest_id, str dest_host, topic, payload, Pid sender):
        cdef Process proc = self.node.lookup(self.local_pid(dest_host, dest_id))
        if proc is None:
            if topic == REPLY:
                # For a call of this node that had already ended.
                return reply_dropped(self.node, self.local_pid(dest_host, dest_id), sender)
            self.dropped(NOPROC, 1, f"{topic!r} from {sender} to {{{self.node.name}@{dest_host}|{dest_id:#x}}}")
            return
        try:
            proc.deliver(topic, payload, sender)
        except MailboxFull:
            # The sender is on another node: MailboxFull cannot reach it.
            self.dropped(MAILBOX_FULL, 1, f"{topic!r} from {sender} to {proc.pid}")
        except ValueError as exc:
            # A connection refused it (a topic it does not take): nobody to
            # raise it to, the sender is on another node.
            self.dropped(REJECTED, 1, f"{topic!r} from {sender} to {proc.pid}: {exc}")

    def on_call(self, long long dest_id, str dest_host, topic, payload, Pid sender, Pid reply_to):
        """A call's request from another node: its reply goes to ``reply_to``
        (the caller's waiter), which monitors the callee from now until the
        reply leaves (``send``), as if it had sent a MONITOR: an EXIT, noproc
        at once when the callee is not alive. A request the callee cannot take
        is dropped and counted; the caller's timeout tells it."""
        cdef Pid dest = self.local_pid(dest_host, dest_id)
        cdef Process proc = self.node.lookup(dest)
        if proc is None:
            self.send_signal(Signal.EXIT, reply_to, dest, NOPROC)
            return
        try:
            deliver_request(proc, topic, payload, sender, reply_to)
        except MailboxFull:
            self.dropped(MAILBOX_FULL, 1, f"call {topic!r} from {sender} to {proc.pid}")
            return
        except ValueError as exc:
            self.dropped(REJECTED, 1, f"call {topic!r} from {sender} to {proc.pid}: {exc}")
            return
        self.node.add_monitor(self.proxy(reply_to), proc)

    cdef int replied(self, Pid waiter) except -1:
        """A reply left for ``waiter``, a call of another node: the monitor
        its request set up here is taken down (its node knows: the reply
        comes from here)."""
        cdef RemoteProcess proxy = self.proxies.get(waiter)
        if proxy is None:
            return 0
        if proxy.monitoring:
            for target in list(proxy.monitoring):
                self.node.remove_monitor(proxy, target)
        return self.drop_proxy_if_idle(proxy)

    def on_frames(self, list ids, bytes frame):
        cdef Py_ssize_t size = _payload_size(frame)
        cdef Process conn
        cdef Py_ssize_t missing = 0
        for ident in ids:
            conn = self.connection(ident)
            if conn is None:
                missing += 1
            else:
                # A connection that is closing or a slow consumer counts its drop.
                conn.offer(frame, size)
        if missing:
            self.dropped(NOPROC, missing, f"a frame for {missing} connection(s)")

    def on_signal(self, int kind, Pid dest, Pid src, reason):
        cdef Node node = self.node
        cdef Process local = node.lookup(dest)
        cdef RemoteProcess proxy
        if kind == Signal.RELAY:
            topic, payload = reason
            return self.relay(dest, src, topic, payload)
        if kind == Signal.CREDIT:
            if local is not None and type(reason) is int:
                local.credit(reason)
            return
        if kind == Signal.EXIT:
            proxy = self.proxies.get(src)
            if proxy is None:
                return
            if dest == node.system.pid and proxy.watched:
                proxy.watched = False
                proxy.leave_groups()
            if local is not None and part_monitor(local, proxy):
                local.signal(exit_event(EXIT, src, reason, None))
            return self.drop_proxy_if_idle(proxy)
        if kind == Signal.LINK_EXIT:
            proxy = self.proxies.get(src)
            if proxy is None or local is None or not part_links(proxy, local):
                return
            self.drop_proxy_if_idle(proxy)
            return local.link_exit(proxy, reason, None)
        if local is None:
            # A monitor or link of a process that is not alive here.
            if kind == Signal.MONITOR:
                self.send_signal(Signal.EXIT, src, dest, NOPROC)
            elif kind == Signal.LINK:
                self.send_signal(Signal.LINK_EXIT, src, dest, NOPROC)
            return
        if kind == Signal.MONITOR:
            # (local is this node's: its on_monitored tells nobody.)
            node.add_monitor(self.proxy(src), local)
        elif kind == Signal.DEMONITOR:
            proxy = self.proxies.get(src)
            if proxy is not None:
                node.remove_monitor(proxy, local)
                self.drop_proxy_if_idle(proxy)
        elif kind == Signal.LINK:
            # (Not link_processes: its hooks would tell the proxy's node, which asked.)
            join_links(local, self.proxy(src))
        elif kind == Signal.UNLINK:
            proxy = self.proxies.get(src)
            if proxy is not None and part_links(local, proxy):
                self.drop_proxy_if_idle(proxy)
        elif kind == Signal.KILL:
            if local is node.system:
                self.dropped(REJECTED, 1, f"terminate of the system process from {src}")
            else:
                local.kill(reason, None)

    def on_interest(self, str node, list changes):
        _channels.on_interest(node, changes)

    def on_presence(self, str node, bint snapshot, list changes):
        _channels.on_presence(node, snapshot, changes)

    def on_publication(self, str channel, str envelope):
        _channels.on_publication(channel, envelope)

    def on_channel_request(self, list args):
        return _channels.on_request(args)

    def on_node_up(self, str name, long incarnation):
        _channels.on_node_up(name)

    def on_node_down(self, str name, long incarnation, str reason):
        """Everything of that node's run ends for us, with ``reason``
        (noconnection): monitors and links fire, its group members leave."""
        cdef RemoteProcess proxy
        cdef RelayInbox inbox
        self.node.counters.cluster_node_losses += 1
        _channels.on_node_down(name)
        for proxy in [p for p in self.proxies.values() if (<RemoteProcess>p).pid.node == name]:
            self.node.finish(proxy, reason, None)
        for client in [c for c in self.relay_in if (<Pid>c).node == name]:
            inbox = self.relay_in.pop(client)
            inbox.stop()
            self.dropped(UNREACHABLE, len(inbox.held), f"messages of {client} held for {inbox.target.pid}")
        for client in [c for c in self._credits if (<Pid>c).node == name]:
            del self._credits[client]
