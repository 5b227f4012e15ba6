"""The node-to-node transport on NATS: what one node's core sends to the PIDs
of another, in order, in batches, with liveness.

``Transport`` is the face of it to the core, the command line and /health
and /metrics; it composes these modules, one job each:

- ``bus``: the connection to NATS, and the incarnation chosen at start;
- ``peers``: the other nodes and the one state machine of each (sessions,
  JOINING / UP / DOWN, ``_set_state``);
- ``publisher``: records gathered per destination node, published once per
  loop iteration as one batch;
- ``inbox``: arriving batches checked, accepted by their session,
  reassembled and delivered to the core's ``hooks`` (the seam in ``hooks``);
- ``heartbeat``: our heartbeats and keepalives, and the notices of others;
- ``rpc``: ping and the gathering of every local node's metrics;
- ``names``: the cluster-wide names;
- ``idempotency``: the server API's idempotency keys, shared by every node;
- ``stats``: the counters, their one list ``COUNTERS``, and the rate-limited
  log of trouble.

What the core calls per message (``send``, ``signal``, ``frames``,
``peer_incarnation``) is written here in full rather than delegated, so that
the split costs no call per record.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Optional, Sequence, Union

import nats

from .._core.pid import Pid
from .._core.remote import Outbound
from . import wire
from .bus import Bus, allocate_incarnation, connect_bus, display_urls
from .errors import ClusterConnectError
from .heartbeat import Heartbeat
from .hooks import Hooks
from .idempotency import ClusterIdempotency
from .inbox import Inbox
from .names import GlobalNames
from .peers import UP, Peers
from .publisher import Publisher
from .rpc import Rpc
from .stats import COUNTERS, Counters, Trouble, log


class Transport(Outbound):
    """The transport of node ``node`` on the NATS servers ``servers``.

    ``await start()`` connects (ClusterConnectError names the URL when the
    bus is unreachable or refuses the credentials), chooses the incarnation,
    subscribes and starts the heartbeat; ``await stop()`` says goodbye to each
    peer, releases our global names and closes. ``hooks`` (the core) may be
    given later with ``attach``; until then, arriving records are counted
    as undeliverable.
    """

    def __init__(self, node: str, servers: Union[str, Sequence[str]], *, token: Optional[str] = None,
                 creds: Optional[str] = None, hooks: Optional[Hooks] = None, down_after: float = 5.0,
                 machine: Optional[str] = None, metrics: Optional[Callable[[], bytes]] = None,
                 connect_timeout: float = 10.0) -> None:
        if not wire.NODE_NAME.fullmatch(node):
            raise ValueError(f"node name {node!r}: a cluster node name is made of letters, digits, '_' and '-'")
        self.node = node
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.url = display_urls(self.servers)
        self.down_after = down_after
        self.heartbeat_interval = min(1.0, down_after / 4)
        self.machine = machine or socket.gethostname()
        self.counters = Counters()
        self._token = token
        self._creds = creds
        self._connect_timeout = connect_timeout
        self._bus = Bus(node)
        self._trouble = Trouble(self.counters)
        self._publisher = Publisher(self._bus, self.counters, self._trouble)
        self._peers = Peers(down_after, self.counters, self._trouble, self._publisher.schedule)
        self.hooks = hooks
        # The table itself and the publisher's append, looked up once: the
        # per-record paths below reach them without another attribute.
        self._by_node = self._peers.by_node
        self._append = self._publisher.append
        self._inbox = Inbox(self._bus, self._peers, self.counters, self._trouble)
        self._heartbeat = Heartbeat(self._bus, self.machine, self.heartbeat_interval, self._peers,
                                    self._publisher.schedule, self._trouble)
        self._rpc = Rpc(self._bus, self._by_node, self.machine, metrics, self._trouble, lambda: self.hooks,
                        self._publisher.published)
        self._names: Optional[GlobalNames] = None
        # The server API's idempotency keys, shared by every node (set by start).
        self.idempotency: Optional[ClusterIdempotency] = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def incarnation(self) -> int:
        """Ours, chosen at start (0 before)."""
        return self._bus.incarnation

    @property
    def hooks(self) -> Optional[Hooks]:
        """The core, once attached."""
        return self._peers.hooks

    @hooks.setter
    def hooks(self, hooks: Optional[Hooks]) -> None:
        self._peers.hooks = hooks

    @property
    def metrics(self) -> Optional[Callable[[], bytes]]:
        """What gives this node's metrics text, for the other nodes of its
        machine (the command line sets it once the gateway exists)."""
        return self._rpc.metrics

    @metrics.setter
    def metrics(self, metrics: Optional[Callable[[], bytes]]) -> None:
        self._rpc.metrics = metrics

    # -- life ----------------------------------------------------------------------

    def attach(self, hooks: Hooks) -> None:
        """Deliver what arrives to ``hooks`` from now on."""
        self.hooks = hooks

    async def start(self) -> None:
        bus = self._bus
        self._peers.loop = asyncio.get_running_loop()
        nc = bus.nc = await self._connect()
        js = nc.jetstream()
        try:
            bus.incarnation = await allocate_incarnation(js, self.node)
        except nats.errors.Error as exc:
            await nc.close()
            raise ClusterConnectError(self.url, f"JetStream is needed (node incarnations, global names): {exc}") \
                from None
        self._publisher.start()
        await nc.subscribe(wire.inbox_subject(self.node), cb=self._inbox.on_batch_msg,
                           pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20)
        await nc.subscribe(wire.HEARTBEAT_SUBJECT, cb=self._heartbeat.on_notice_msg)
        await nc.subscribe(wire.rpc_subject(self.node), cb=self._rpc.on_rpc_msg)
        self._names = self._peers.names = GlobalNames(js, self.node, bus.incarnation, self._peers.alive,
                                                       self._rpc.probe)
        await self._names.start()
        self.idempotency = ClusterIdempotency(js, self._trouble)
        await self.idempotency.start()
        # Our subscriptions are in place at the server before anyone hears of us.
        await nc.flush()
        self._tasks = [asyncio.ensure_future(self._publisher.run()), asyncio.ensure_future(self._heartbeat.run())]
        log.info("cluster: node %s (incarnation %d) joined %s", self.node, bus.incarnation, self.url)

    async def _connect(self) -> Any:
        async def reconnected() -> None:
            if self._names is not None:
                try:
                    await self._names.rewatch()
                except Exception as exc:
                    self._trouble.warning("names", f"cluster: global names: cannot watch again: {exc}")

        return await connect_bus(self.servers, token=self._token, creds=self._creds, name=f"wsrelay {self.node}",
                                 timeout=self._connect_timeout, on_reconnected=reconnected,
                                 quiet=lambda: self._peers.leaving)

    async def stop(self) -> None:
        """Say goodbye to each live peer (it sees us go at once, after what
        we sent before), release our global names, close."""
        nc = self._bus.nc
        if nc is None or self._peers.leaving:
            return
        self._peers.leaving = True
        await self._publisher.goodbye(self._by_node.values())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._peers.all_down()
        if self._names is not None:
            await self._names.stop()
        try:
            await nc.drain()
        except Exception as exc:  # closing while the broker is away: nothing left to flush to
            log.debug("cluster: drain: %s", exc)
        log.info("cluster: node %s left %s", self.node, self.url)

    # -- outgoing: core -> transport (synchronous, never blocks) ---------------------

    def send(self, dest: Pid, topic: Any, payload: Any, sender: Pid) -> bool:
        """Queue a message for ``dest`` on another node: True when accepted,
        False when its node is down or unknown; TypeError when the payload
        cannot be carried."""
        record = wire.record_send(dest.id, dest.host, str(sender), topic, payload)
        return self._append_for(dest, record)

    def call(self, dest: Pid, topic: Any, payload: Any, sender: Pid, reply_to: Pid) -> bool:
        """Queue a call's request for ``dest``: a send with the address of
        its reply (the caller's waiter); as ``send`` otherwise."""
        record = wire.record_call(dest.id, dest.host, str(sender), topic, payload, str(reply_to))
        return self._append_for(dest, record)

    def signal(self, kind: int, dest: Pid, src: Pid, reason: Any) -> bool:
        """Queue a signal (wire.MONITOR ... wire.CREDIT) for ``dest``; in
        order with the messages from the same node."""
        record = wire.record_signal(kind, str(dest), str(src), reason)
        return self._append_for(dest, record)

    def frames(self, node: str, conn_ids: list[int], frame: bytes) -> bool:
        """Queue one ready WebSocket frame for connections of ``node``."""
        record = wire.record_frames(conn_ids, frame)
        peer = self._by_node.get(node)
        if peer is None or peer.state != UP:
            self.counters.refused += 1
            return False
        self._append(peer, record)
        return True

    def interest(self, node: Optional[str], changes: list[list[Any]]) -> None:
        """This node's subscriber counts of channels, [[name, count], ...],
        for ``node``, or (None) for every node that is up."""
        self._append_record(node, wire.record_interest(changes))

    def _append_record(self, node: Optional[str], record: bytes) -> None:
        """Queue ``record`` for ``node`` when it is up, or (None) for every
        node that is up."""
        if node is None:
            for peer in self._by_node.values():
                if peer.state == UP:
                    self._append(peer, record)
            return
        peer = self._by_node.get(node)
        if peer is not None and peer.state == UP:
            self._append(peer, record)

    def presence(self, node: Optional[str], snapshot: bool, changes: list[list[Any]]) -> None:
        """This node's presence entries that changed ([[channel, joins,
        leaves], ...]), or all of them (``snapshot``), for ``node``, or
        (None) for every node that is up."""
        self._append_record(node, wire.record_presence(snapshot, changes))

    def publication(self, node: str, channel: str, envelope: str) -> bool:
        """A channel's publication for the subscribers of ``node``."""
        peer = self._by_node.get(node)
        if peer is None or peer.state != UP:
            self.counters.refused += 1
            return False
        self._append(peer, wire.record_publish(channel, envelope))
        return True

    async def channel_request(self, node: str, args: list[Any], timeout: float = 5.0) -> Any:
        """``node``'s answer to a channel request, None if none in ``timeout``."""
        return await self._rpc.channel_request(node, args, timeout)

    def jetstream(self) -> Any:
        """A JetStream context on this node's connection (for the history of
        channels, wsrelay/cluster/history.py)."""
        assert self._bus.nc is not None, "start() first"
        return self._bus.nc.jetstream()

    def max_payload(self) -> int:
        """The largest message the broker takes (its ``max_payload``)."""
        assert self._bus.nc is not None, "start() first"
        return int(self._bus.nc.max_payload)

    def up_nodes(self) -> list[str]:
        """The nodes that are up."""
        return [node for node, peer in self._by_node.items() if peer.state == UP]

    def _append_for(self, dest: Pid, record: bytes) -> bool:
        """Queue ``record`` for the node of ``dest``: False, counted, when that
        node is down, unknown, or ``dest`` is of an earlier run of it."""
        peer = self._by_node.get(dest.node)  # type: ignore[arg-type]
        if peer is None or peer.state != UP or dest.id >> 32 != peer.incarnation:
            self.counters.refused += 1
            return False
        self._append(peer, record)
        return True

    # -- what the core (and /health, /metrics) may ask -----------------------------------

    def is_up(self, node: str) -> bool:
        peer = self._by_node.get(node)
        return peer is not None and peer.state == UP

    def peer_incarnation(self, node: str) -> Optional[int]:
        """The live incarnation of ``node`` (None unless it is up): a PID of
        that node whose high 32 bits differ is dead."""
        peer = self._by_node.get(node)
        return peer.incarnation if peer is not None and peer.state == UP else None

    def peers(self) -> dict[str, str]:
        """Every node heard of, and its state: "up", "joining" or "down"."""
        return {node: peer.state for node, peer in sorted(self._by_node.items())}

    async def ping(self, node: str, timeout: float = 1.0) -> Optional[float]:
        """Round-trip time to ``node`` over the bus in seconds, None if it
        did not answer in ``timeout``."""
        return await self._rpc.ping(node, timeout)

    async def gather_metrics(self, timeout: float = 0.5) -> dict[str, Optional[bytes]]:
        """The metrics text of this node and of every other node of this
        machine it knows, by node name; None for a node that did not answer
        within ``timeout`` (it is to be reported down)."""
        return await self._rpc.gather_metrics(timeout)

    # -- global names ----------------------------------------------------------------

    async def register_global(self, name: str, pid: Pid) -> bool:
        """Claim ``name`` for ``pid`` cluster-wide: True, or False when a live
        process holds it."""
        assert self._names is not None, "start() first"
        return await self._names.register(name, pid)

    def whereis_global(self, name: str) -> Optional[Pid]:
        """The holder of ``name`` in this node's view, None if none (or its
        node is known to be lost)."""
        return None if self._names is None else self._names.whereis(name)

    def release_globals(self, pid: Pid) -> None:
        """``pid`` ended: release the names it held."""
        if self._names is not None:
            self._names.release(pid)

    def global_names(self) -> dict[str, Pid]:
        return {} if self._names is None else self._names.names()


__all__ = ["COUNTERS", "Counters", "Hooks", "Transport", "connect_bus", "display_urls"]
