"""The node-to-node transport on NATS: what one node's core sends to the PIDs
of another, in order, in batches, with liveness.

Streams and sessions. Everything node A sends to node B travels on B's one
inbox subject, so B's NATS client hands it over in the order A published it.
Records are gathered per destination node and published once per loop
iteration as one batch. Batches of the stream A -> B are numbered within a
*session* (both directions of a pair share the session number): a gap in
the numbers means messages were lost, so B treats A as lost (``on_node_down``
with ``noconnection``) and opens the next session; A, seeing the new session,
treats B as lost too (each side may hold monitors and links the other has
dropped), and both come up again in it. A peer's state is one of

    JOINING   we opened a session and wait for its first batch in it
    UP        both directions of the session are live (sends are accepted)
    DOWN      lost: silent for ``down_after``, gone (BYE), announced dead by
              its supervisor, or replaced by a new incarnation

and ``_set_state`` is the one place where it changes and where the core
hears of it. An incarnation is chosen at start, strictly greater than the
previous ones of the same node name (a JetStream counter), so a restarted
node is a new peer and its predecessor's PIDs are dead.

Liveness: every node publishes a heartbeat each ``down_after / 4`` seconds
(at most 1 s), and sends an empty batch to each peer it sent nothing to since
the last heartbeat, so a lost last batch still shows as a gap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import urllib.parse
from typing import Any, Awaitable, Callable, Optional, Protocol, Sequence, Union

import nats
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from .._core.pid import Pid
from . import wire
from .codec import decode
from .errors import ClusterConnectError
from .names import GlobalNames, bucket

log = logging.getLogger("wsrelay.cluster")

# Incarnations start from the seconds since 2024-01-01, so that even a bus
# without the counter's history (a new private broker) gives a restarted node
# a number above its predecessor's.
_INCARNATION_EPOCH = 1704067200
_NODES_BUCKET = "wsrelay_nodes"

JOINING = "joining"
UP = "up"
DOWN = "down"

NOCONNECTION = "noconnection"

# At most this often, a batch of the new session to a peer still sending in
# the old one.
_NUDGE_INTERVAL = 0.05


class Hooks(Protocol):
    """What the transport calls on the node's core, on the loop's thread."""

    def on_send(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Pid) -> None: ...
    def on_call(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Pid,
                reply_to: Pid) -> None: ...
    def on_signal(self, kind: int, dest: Pid, src: Pid, reason: Any) -> None: ...
    def on_frames(self, conn_ids: list[int], frame: bytes) -> None: ...
    def on_node_up(self, node: str, incarnation: int) -> None: ...
    def on_node_down(self, node: str, incarnation: int, reason: str) -> None: ...


@dataclasses.dataclass
class Counters:
    """Plain integers; ``COUNTERS`` names and documents each one."""

    messages_out: int = 0
    bytes_out: int = 0
    batches_out: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    batches_in: int = 0
    node_up_events: int = 0
    node_down_events: int = 0
    stream_resets: int = 0
    malformed: int = 0
    undeliverable: int = 0
    refused: int = 0
    hook_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# (attribute of Counters, Prometheus name, help): the one list of them.
COUNTERS = (
    ("messages_out", "wsrelay_cluster_messages_out", "Records (sends, signals, frames) sent to other nodes"),
    ("bytes_out", "wsrelay_cluster_bytes_out", "Bytes of batches published to other nodes"),
    ("batches_out", "wsrelay_cluster_batches_out", "Batches published to other nodes"),
    ("messages_in", "wsrelay_cluster_messages_in", "Records received from other nodes"),
    ("bytes_in", "wsrelay_cluster_bytes_in", "Bytes of batches received from other nodes"),
    ("batches_in", "wsrelay_cluster_batches_in", "Batches received from other nodes"),
    ("node_up_events", "wsrelay_cluster_node_up_events", "Peers that came up (or back)"),
    ("node_down_events", "wsrelay_cluster_node_down_events", "Peers lost (noconnection)"),
    ("stream_resets", "wsrelay_cluster_stream_resets", "Node-to-node sessions restarted after a gap"),
    ("malformed", "wsrelay_cluster_malformed", "Messages from the bus dropped as malformed"),
    ("undeliverable", "wsrelay_cluster_undeliverable",
     "Records lost: not published (bus away too long), or arrived for a lost session"),
    ("refused", "wsrelay_cluster_refused", "Sends, signals and frames refused: destination node down or unknown"),
    ("hook_errors", "wsrelay_cluster_hook_errors", "Records whose delivery to the core raised"),
)


class _Peer:
    __slots__ = ("node", "incarnation", "state", "session", "out_seq", "in_seq", "out_records", "in_records",
                 "subject", "records", "size",
                 "flags", "queued", "sent", "last_heard", "nudged", "timer", "machine", "dead_incarnation",
                 "fragments")

    def __init__(self, node: str, incarnation: int) -> None:
        self.node = node
        self.incarnation = incarnation
        self.state = DOWN
        self.session = 0
        self.out_seq = 0
        self.in_seq = 1
        # Records sent and received in the session.
        self.out_records = 0
        self.in_records = 0
        self.subject = wire.inbox_subject(node)
        self.records: list[bytes] = []
        self.size = 0
        self.flags = 0
        self.queued = False
        self.sent = False
        self.last_heard = 0.0
        self.nudged = 0.0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.machine = ""
        # An incarnation known to be dead (goodbye, or its supervisor said so)
        # whose last heartbeats may still be on their way.
        self.dead_incarnation = 0
        self.fragments: list[bytes] = []


class _RateLimitedLog:
    """At most one line per ``interval`` per kind of trouble, with the count of
    those suppressed since, so a flood from the bus cannot flood the log."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            msg += f" ({suppressed} more like it suppressed)"
        log.warning(msg, *args)


def display_urls(servers: Union[str, Sequence[str]]) -> str:
    """The server URLs without any user, password or token in them."""
    urls = [servers] if isinstance(servers, str) else list(servers)
    shown = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        shown.append(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return ",".join(shown)


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or "permissions violation" in text


async def connect_bus(servers: Union[str, Sequence[str]], *, token: Optional[str] = None,
                      creds: Optional[str] = None, name: str = "wsrelay", timeout: float = 10.0,
                      on_reconnected: Optional[Callable[[], Awaitable[None]]] = None,
                      quiet: Callable[[], bool] = lambda: False) -> Any:
    """A NATS client connected to ``servers``, reconnecting for ever once
    connected. ClusterConnectError (naming the URL, never a credential) when
    the broker refuses the credentials, or none answers within ``timeout``."""
    url = display_urls(servers)
    warn = _RateLimitedLog()
    nc = nats.NATS()
    failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def error_cb(exc: Exception) -> None:
        if not failure.done() and _is_auth_error(exc):
            failure.set_result(exc)
        warn.warning("bus", "cluster: bus %s: %s", url, exc)

    async def disconnected_cb() -> None:
        if not quiet():
            log.warning("cluster: disconnected from %s; reconnecting", url)

    async def reconnected_cb() -> None:
        log.warning("cluster: reconnected to %s", url)
        if on_reconnected is not None:
            await on_reconnected()

    options: dict[str, Any] = dict(
        servers=[servers] if isinstance(servers, str) else list(servers), name=name, error_cb=error_cb,
        disconnected_cb=disconnected_cb, reconnected_cb=reconnected_cb,
        allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=2, ping_interval=2, max_outstanding_pings=2,
        # Our subjects are built from node names checked to be [A-Za-z0-9_-].
        skip_subject_validation=True,
    )
    if token is not None:
        options["token"] = token
    if creds is not None:
        options["user_credentials"] = creds
    # With reconnection for ever, nats-py's first connect would retry for
    # ever too: it runs as a task that a refusal or the deadline cancels.
    connecting = asyncio.ensure_future(nc.connect(**options))
    done, _ = await asyncio.wait({connecting, failure}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if connecting in done:
        connecting.result()
        return nc
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    try:
        await nc.close()
    except Exception as exc:  # a half-open client may fail to close; it is dropped anyway
        log.debug("cluster: closing the failed client: %s", exc)
    if failure.done():
        raise ClusterConnectError(url, f"the broker refused our credentials ({failure.result()})")
    raise ClusterConnectError(url, f"no broker answered within {timeout} s")


class Transport:
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
        self.incarnation = 0
        self.hooks = hooks
        self.down_after = down_after
        self.heartbeat_interval = min(1.0, down_after / 4)
        self.machine = machine or socket.gethostname()
        self.metrics = metrics
        self.counters = Counters()
        self._token = token
        self._creds = creds
        self._connect_timeout = connect_timeout
        self._nc: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._peers: dict[str, _Peer] = {}
        self._dirty: list[_Peer] = []
        self._wake: Optional[asyncio.Future[None]] = None
        self._flushed: Optional[asyncio.Event] = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pids: dict[str, Pid] = {}
        self._names: Optional[GlobalNames] = None
        self._batch_limit = 0
        self._stopping = False
        self._warn = _RateLimitedLog()

    # -- life ----------------------------------------------------------------------

    def attach(self, hooks: Hooks) -> None:
        """Deliver what arrives to ``hooks`` from now on."""
        self.hooks = hooks

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._nc = await self._connect()
        # Room for the header and the array header in every NATS message.
        self._batch_limit = self._nc.max_payload - 512
        js = self._nc.jetstream()
        try:
            self.incarnation = await self._allocate_incarnation(js)
        except nats.errors.Error as exc:
            await self._nc.close()
            raise ClusterConnectError(self.url, f"JetStream is needed (node incarnations, global names): {exc}") \
                from None
        self._wake = self._loop.create_future()
        self._flushed = asyncio.Event()
        await self._nc.subscribe(wire.inbox_subject(self.node), cb=self._on_batch_msg,
                                 pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20)
        await self._nc.subscribe(wire.HEARTBEAT_SUBJECT, cb=self._on_notice_msg)
        await self._nc.subscribe(wire.rpc_subject(self.node), cb=self._on_rpc_msg)
        self._names = GlobalNames(js, self.node, self.incarnation, self._alive, self._probe)
        await self._names.start()
        # Our subscriptions are in place at the server before anyone hears of us.
        await self._nc.flush()
        self._tasks = [asyncio.ensure_future(self._publisher()), asyncio.ensure_future(self._heartbeat())]
        log.info("cluster: node %s (incarnation %d) joined %s", self.node, self.incarnation, self.url)

    async def _connect(self) -> Any:
        async def reconnected() -> None:
            if self._names is not None:
                try:
                    await self._names.rewatch()
                except Exception as exc:
                    self._warn.warning("names", "cluster: global names: cannot watch again: %s", exc)

        return await connect_bus(self.servers, token=self._token, creds=self._creds, name=f"wsrelay {self.node}",
                                 timeout=self._connect_timeout, on_reconnected=reconnected,
                                 quiet=lambda: self._stopping)

    async def _allocate_incarnation(self, js: Any) -> int:
        kv = await bucket(js, _NODES_BUCKET)
        floor = int(time.time()) - _INCARNATION_EPOCH
        while True:
            try:
                entry = await kv.get(self.node)
                last, revision = int(entry.value), entry.revision
            except KeyNotFoundError:
                last, revision = 0, 0
            incarnation = max(last + 1, floor) & 0xFFFFFFFF or 1
            try:
                if revision:
                    await kv.update(self.node, str(incarnation).encode(), last=revision)
                else:
                    await kv.create(self.node, str(incarnation).encode())
                return incarnation
            except KeyWrongLastSequenceError:
                continue  # another process of the same name raced us: read again

    async def stop(self) -> None:
        """Send each live peer a last batch saying goodbye (it sees us go at
        once, after what we sent before), release our global names, close."""
        if self._nc is None or self._stopping:
            return
        self._stopping = True
        assert self._flushed is not None
        self._flushed.clear()
        for peer in self._peers.values():
            if peer.state != DOWN:
                peer.flags |= wire.FLAG_BYE
                self._schedule(peer)
        if self._dirty:
            # The publisher sends them after what was queued before.
            try:
                await asyncio.wait_for(self._flushed.wait(), 5.0)
            except asyncio.TimeoutError:
                log.warning("cluster: goodbyes not published within 5 s; leaving without them")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Gone from the cluster, we can reach none of its PIDs: the core's
        # monitors and links of them end as for a lost node.
        for peer in self._peers.values():
            self._set_state(peer, DOWN)
        if self._names is not None:
            await self._names.stop()
        try:
            await self._nc.drain()
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
        peer = self._peers.get(node)
        if peer is None or peer.state != UP:
            self.counters.refused += 1
            return False
        self._append(peer, record)
        return True

    def _append_for(self, dest: Pid, record: bytes) -> bool:
        """Queue ``record`` for the node of ``dest``: False, counted, when that
        node is down, unknown, or ``dest`` is of an earlier run of it."""
        peer = self._peers.get(dest.node)  # type: ignore[arg-type]
        if peer is None or peer.state != UP or dest.id >> 32 != peer.incarnation:
            self.counters.refused += 1
            return False
        self._append(peer, record)
        return True

    def _append(self, peer: _Peer, record: bytes) -> None:
        peer.records.append(record)
        peer.size += len(record)
        if not peer.queued:
            self._schedule(peer)

    def _schedule(self, peer: _Peer) -> None:
        """Have the publisher send ``peer`` a batch in this loop iteration (an
        empty one when nothing is queued: a hello, keepalive or goodbye)."""
        if peer.queued:
            return
        peer.queued = True
        self._dirty.append(peer)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- publishing ------------------------------------------------------------------

    async def _publisher(self) -> None:
        """One task publishes every batch, so batches leave in the order they
        were made; it runs once per loop iteration that queued something."""
        loop = asyncio.get_running_loop()
        assert self._flushed is not None
        while True:
            assert self._wake is not None
            await self._wake
            self._wake = loop.create_future()
            await self._flush_dirty()
            self._flushed.set()

    async def _flush_dirty(self) -> None:
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            for peer in dirty:
                peer.queued = False
                records, size, peer.records, peer.size = peer.records, peer.size, [], 0
                flags, peer.flags = peer.flags, 0
                if peer.state == DOWN:
                    self.counters.undeliverable += len(records)
                    continue
                for data, count in self._batches(peer, records, size, flags):
                    await self._publish(peer.subject, data, count)

    def _batches(self, peer: _Peer, records: list[bytes], size: int, flags: int) -> list[tuple[bytes, int]]:
        limit = self._batch_limit
        if size <= limit:
            return [(self._batch(peer, records, flags), len(records))]
        out: list[tuple[bytes, int]] = []
        batch: list[bytes] = []
        size = 0
        for record in records:
            if len(record) > limit:
                if batch:
                    out.append((self._batch(peer, batch, 0), len(batch)))
                    batch, size = [], 0
                # A record larger than a NATS message goes in pieces, each in
                # a batch of its own, reassembled by the receiver in order.
                out.extend((self._batch(peer, [piece], 0), 1) for piece in wire.fragments(record, limit - 64))
                continue
            if size + len(record) > limit and batch:
                out.append((self._batch(peer, batch, 0), len(batch)))
                batch, size = [], 0
            batch.append(record)
            size += len(record)
        out.append((self._batch(peer, batch, flags), len(batch)))
        return out

    def _batch(self, peer: _Peer, records: list[bytes], flags: int) -> bytes:
        peer.out_seq += 1
        peer.sent = True
        header = wire.Header(self.node, self.incarnation, peer.node, peer.incarnation, peer.session,
                             peer.out_seq, peer.out_records, flags)
        peer.out_records += len(records)
        return wire.batch(header, records)

    async def _publish(self, subject: str, data: bytes, count: int) -> None:
        try:
            await self._nc.publish(subject, data)
        except nats.errors.Error as exc:
            # The bus is away and the client's buffer is full (or it is
            # closing): these records are lost, and the receiver will see the
            # gap in the sequence and restart the session.
            self.counters.undeliverable += count
            self._warn.warning("publish", "cluster: cannot publish to %s: %s", subject, exc)
            return
        c = self.counters
        c.batches_out += 1
        c.messages_out += count
        c.bytes_out += len(data)

    # -- incoming ------------------------------------------------------------------

    async def _on_batch_msg(self, msg: Any) -> None:
        self._receive(msg.data)

    def _receive(self, data: bytes) -> None:
        c = self.counters
        try:
            header, items = wire.parse_batch(data)
            if header.destination != self.node:
                raise wire.Malformed(f"addressed to node {header.destination!r}")
        except wire.Malformed as exc:
            self._malformed(f"batch dropped: {exc}")
            return
        c.batches_in += 1
        c.bytes_in += len(data)
        count = len(items) - 1
        if header.destination_incarnation != self.incarnation or self._stopping:
            # Meant for our predecessor (its PIDs are dead), or arriving as we
            # leave (our core is shutting down).
            c.undeliverable += count
            return
        peer = self._accept(header)
        if peer is None:
            c.undeliverable += count
            return
        peer.in_records += count
        c.messages_in += count
        if count:
            self._dispatch(peer, items)
        if header.flags & wire.FLAG_BYE:
            peer.dead_incarnation = peer.incarnation
            self._set_state(peer, DOWN)

    def _accept(self, h: wire.Header) -> Optional[_Peer]:
        """The peer whose records these are, when they belong to its live
        session; None (and the session machinery moved on) otherwise."""
        peer = self._peers.get(h.source)
        if peer is None:
            peer = self._peers[h.source] = _Peer(h.source, h.source_incarnation)
        elif h.source_incarnation != peer.incarnation:
            if h.source_incarnation < peer.incarnation:
                return None  # from a predecessor of the peer we know
            self._new_incarnation(peer, h.source_incarnation)
        now = peer.last_heard = self._loop.time()  # type: ignore[union-attr]
        if h.session < peer.session:
            # A session that has since been replaced. If we are waiting for
            # the peer in the new one, it has not heard of it (our first batch
            # was lost, as when the bus restarts): tell it again now, rather
            # than at the next heartbeat, while its messages are being dropped.
            if peer.state == JOINING and now - peer.nudged >= _NUDGE_INTERVAL:
                peer.nudged = now
                self._schedule(peer)
            return None
        if h.session > peer.session:
            # The peer opened a session (first contact, or after a gap it
            # saw): what both of us held about the other is gone.
            if peer.state == UP:
                self._set_state(peer, DOWN)
            self._open_session(peer, h.session)
            if h.seq != 1:
                # Its first batches in the session were lost.
                self.counters.undeliverable += h.sent
                self._reset(peer)
                return None
            peer.in_seq = 2
            self._set_state(peer, UP)
            return peer
        if peer.state == DOWN:
            return None
        if h.seq != peer.in_seq:
            self.counters.undeliverable += max(0, h.sent - peer.in_records)
            self._reset(peer)
            return None
        peer.in_seq += 1
        if peer.state == JOINING:
            self._set_state(peer, UP)
        return peer

    def _dispatch(self, peer: _Peer, items: list[Any]) -> None:
        hooks = self.hooks
        if hooks is None:
            self.counters.undeliverable += len(items) - 1
            return
        pids = self._pids
        on_send = hooks.on_send
        i = 1
        try:
            for i in range(1, len(items)):
                record = items[i]
                if record[0] == wire.SEND:
                    _, dest_id, dest_host, sender_text, topic, payload = record
                    if type(dest_id) is not int or type(dest_host) is not str:
                        raise wire.Malformed("a send's destination must be an int and a str")
                    sender = pids.get(sender_text)
                    if sender is None:
                        sender = self._pid(sender_text)
                    try:
                        on_send(dest_id, dest_host, topic, payload, sender)
                    except Exception:
                        self._hook_failed("on_send")
                else:
                    self._dispatch_other(peer, hooks, record)
        except (wire.Malformed, ValueError, TypeError, IndexError) as exc:
            # Records after this one would be delivered with one missing:
            # the stream is broken, as after a gap.
            self._malformed(f"batch from {peer.node} dropped at a malformed record: {exc}")
            self.counters.undeliverable += len(items) - i
            self._reset(peer)

    def _dispatch_other(self, peer: _Peer, hooks: Hooks, record: list[Any]) -> None:
        kind = record[0]
        if kind == wire.SIGNAL:
            _, signal_kind, dest_text, src_text, reason = record
            if type(signal_kind) is not int or not 1 <= signal_kind <= len(wire.SIGNAL_KINDS):
                raise wire.Malformed(f"unknown signal kind {signal_kind!r}")
            dest, src = self._pid(dest_text), self._pid(src_text)
            try:
                hooks.on_signal(signal_kind, dest, src, reason)
            except Exception:
                self._hook_failed("on_signal")
        elif kind == wire.CALL:
            _, dest_id, dest_host, sender_text, topic, payload, reply_text = record
            if type(dest_id) is not int or type(dest_host) is not str:
                raise wire.Malformed("a call's destination must be an int and a str")
            sender, reply_to = self._pid(sender_text), self._pid(reply_text)
            try:
                hooks.on_call(dest_id, dest_host, topic, payload, sender, reply_to)
            except Exception:
                self._hook_failed("on_call")
        elif kind == wire.FRAMES:
            _, conn_ids, frame = record
            if type(conn_ids) is not list or type(frame) is not bytes:
                raise wire.Malformed("frames must be a list of ids and bytes")
            try:
                hooks.on_frames(conn_ids, frame)
            except Exception:
                self._hook_failed("on_frames")
        elif kind == wire.FRAGMENT:
            _, chunk, last = record
            if type(chunk) is not bytes:
                raise wire.Malformed("a fragment must be bytes")
            peer.fragments.append(chunk)
            if last:
                whole, peer.fragments = b"".join(peer.fragments), []
                self._dispatch(peer, [None, decode(whole)])
        else:
            raise wire.Malformed(f"unknown record kind {kind!r}")

    def _pid(self, text: str) -> Pid:
        pid = self._pids.get(text)
        if pid is None:
            if type(text) is not str:
                raise wire.Malformed("a PID must be text")
            pid = Pid.parse(text)
            if len(self._pids) >= 65536:
                self._pids.clear()
            self._pids[text] = pid
        return pid

    def _hook_failed(self, name: str) -> None:
        self.counters.hook_errors += 1
        log.exception("cluster: hooks.%s raised", name)

    def _malformed(self, what: str) -> None:
        self.counters.malformed += 1
        self._warn.warning("malformed", "cluster: %s", what)

    # -- heartbeats and notices -------------------------------------------------------

    async def _heartbeat(self) -> None:
        beat = wire.heartbeat(self.node, self.incarnation, self.machine, os.getpid())
        while True:
            try:
                await self._nc.publish(wire.HEARTBEAT_SUBJECT, beat)
            except nats.errors.Error as exc:
                self._warn.warning("heartbeat", "cluster: cannot publish a heartbeat: %s", exc)
            for peer in self._peers.values():
                if peer.state != DOWN and not peer.sent:
                    self._schedule(peer)
                peer.sent = False
            await asyncio.sleep(self.heartbeat_interval)

    async def _on_notice_msg(self, msg: Any) -> None:
        try:
            notice = wire.parse_notice(msg.data)
        except wire.Malformed as exc:
            self._malformed(f"notice dropped: {exc}")
            return
        if notice[0] == wire.HB:
            _, node, incarnation, machine, os_pid = notice
            self._on_heartbeat(node, incarnation, machine, os_pid)
        else:
            _, node, incarnation = notice
            peer = self._peers.get(node)
            if peer is not None and peer.incarnation == incarnation:
                peer.dead_incarnation = incarnation
                self._set_state(peer, DOWN)

    def _on_heartbeat(self, node: str, incarnation: int, machine: str, os_pid: int) -> None:
        if node == self.node:
            if incarnation != self.incarnation:
                self._warn.warning("twin", "cluster: another process (pid %d, incarnation %d) uses our node "
                                   "name %s", os_pid, incarnation, node)
            return
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer(node, incarnation)
        elif incarnation != peer.incarnation:
            if incarnation < peer.incarnation:
                return
            self._new_incarnation(peer, incarnation)
        if incarnation == peer.dead_incarnation:
            return
        peer.machine = machine
        peer.last_heard = self._loop.time()  # type: ignore[union-attr]
        if peer.state == DOWN and not self._stopping:
            self._open_session(peer, peer.session + 1)
            self._set_state(peer, JOINING)

    # -- sessions and states ------------------------------------------------------------

    def _new_incarnation(self, peer: _Peer, incarnation: int) -> None:
        if peer.state != DOWN:
            self._set_state(peer, DOWN)
        peer.incarnation = incarnation
        peer.session = 0
        peer.dead_incarnation = 0

    def _open_session(self, peer: _Peer, session: int) -> None:
        """Number ``session`` for the pair, both directions from the start.
        Records queued in the old one are dropped: their destination has
        already been told the sender's node was lost."""
        self.counters.undeliverable += len(peer.records)
        peer.records, peer.size = [], 0
        peer.fragments = []
        peer.session = session
        peer.out_seq = 0
        peer.in_seq = 1
        peer.out_records = 0
        peer.in_records = 0
        # Our first batch in it, at once, even empty: the peer comes up on it.
        self._schedule(peer)

    def _reset(self, peer: _Peer) -> None:
        """The stream from ``peer`` broke: it is lost; open the next session."""
        self.counters.stream_resets += 1
        self._warn.warning("reset", "cluster: stream from %s broke (session %d): restarting it", peer.node,
                           peer.session)
        if peer.state == UP:
            self._set_state(peer, DOWN)
        self._open_session(peer, peer.session + 1)
        self._set_state(peer, JOINING)

    def _set_state(self, peer: _Peer, state: str) -> None:
        """Every change of a peer's state, and the core's view of it."""
        old = peer.state
        if old == state:
            return
        peer.state = state
        if state == DOWN:
            if peer.timer is not None:
                peer.timer.cancel()
                peer.timer = None
            self.counters.undeliverable += len(peer.records)
            peer.records, peer.size, peer.fragments = [], 0, []
        elif peer.timer is None:
            self._watch_silence(peer)
        if old == UP:
            self.counters.node_down_events += 1
            log.info("cluster: node %s (incarnation %d) is down", peer.node, peer.incarnation)
            if self._names is not None and not self._stopping:
                # (When we are the one leaving, its names are still its own.)
                self._names.node_lost(peer.node, peer.incarnation)
            if self.hooks is not None:
                try:
                    self.hooks.on_node_down(peer.node, peer.incarnation, NOCONNECTION)
                except Exception:
                    self._hook_failed("on_node_down")
        if state == UP:
            self.counters.node_up_events += 1
            log.info("cluster: node %s (incarnation %d) is up", peer.node, peer.incarnation)
            if self.hooks is not None:
                try:
                    self.hooks.on_node_up(peer.node, peer.incarnation)
                except Exception:
                    self._hook_failed("on_node_up")

    def _watch_silence(self, peer: _Peer) -> None:
        loop = self._loop
        assert loop is not None
        if peer.last_heard == 0.0:
            peer.last_heard = loop.time()
        peer.timer = loop.call_at(peer.last_heard + self.down_after, self._check_silence, peer)

    def _check_silence(self, peer: _Peer) -> None:
        peer.timer = None
        if peer.state == DOWN:
            return
        assert self._loop is not None
        if self._loop.time() >= peer.last_heard + self.down_after:
            log.info("cluster: nothing from %s for %s s", peer.node, self.down_after)
            self._set_state(peer, DOWN)
        else:
            self._watch_silence(peer)

    # -- what the core (and /health, /metrics) may ask -----------------------------------

    def is_up(self, node: str) -> bool:
        peer = self._peers.get(node)
        return peer is not None and peer.state == UP

    def peer_incarnation(self, node: str) -> Optional[int]:
        """The live incarnation of ``node`` (None unless it is up): a PID of
        that node whose high 32 bits differ is dead."""
        peer = self._peers.get(node)
        return peer.incarnation if peer is not None and peer.state == UP else None

    def peers(self) -> dict[str, str]:
        """Every node heard of, and its state: "up", "joining" or "down"."""
        return {node: peer.state for node, peer in sorted(self._peers.items())}

    def _alive(self, node: str, incarnation: int) -> Optional[bool]:
        peer = self._peers.get(node)
        if peer is None or peer.incarnation < incarnation:
            return None
        return peer.incarnation == incarnation and peer.state != DOWN

    async def _probe(self, node: str, incarnation: int) -> bool:
        answer = await self._request(node, wire.PING, 1.0)
        return answer is not None and answer[1] == incarnation

    async def ping(self, node: str, timeout: float = 1.0) -> Optional[float]:
        """Round-trip time to ``node`` over the bus in seconds, None if it
        did not answer in ``timeout``."""
        start = time.perf_counter()
        answer = await self._request(node, wire.PING, timeout)
        return None if answer is None else time.perf_counter() - start

    async def gather_metrics(self, timeout: float = 0.5) -> dict[str, Optional[bytes]]:
        """The metrics text of this node and of every other node of this
        machine it knows, by node name; None for a node that did not answer
        within ``timeout`` (it is to be reported down)."""
        local = self.metrics() if self.metrics is not None else b""
        others = sorted(node for node, peer in self._peers.items() if peer.machine == self.machine)
        answers = await asyncio.gather(*(self._request(node, wire.METRICS, timeout) for node in others))
        result: dict[str, Optional[bytes]] = {self.node: local}
        for node, answer in zip(others, answers):
            body = None if answer is None else answer[2]
            result[node] = body if isinstance(body, bytes) else None
        return result

    async def _request(self, node: str, op: str, timeout: float) -> Optional[tuple[str, int, Any]]:
        try:
            msg = await self._nc.request(wire.rpc_subject(node), wire.rpc_request(op), timeout=timeout)
            return wire.parse_rpc_reply(msg.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
        except wire.Malformed as exc:
            self._malformed(f"reply from {node} dropped: {exc}")
            return None
        except nats.errors.Error as exc:
            self._warn.warning("rpc", "cluster: request to %s failed: %s", node, exc)
            return None

    async def _on_rpc_msg(self, msg: Any) -> None:
        try:
            request = wire.decode_rpc_request(msg.data)
        except wire.Malformed as exc:
            self._malformed(f"request dropped: {exc}")
            return
        if not msg.reply:
            return
        body: Any = None
        if request == wire.METRICS:
            try:
                body = self.metrics() if self.metrics is not None else b""
            except Exception:
                # Answered with None: the asking node reports us down.
                log.exception("cluster: the metrics provider raised")
        try:
            await self._nc.publish(msg.reply, wire.rpc_reply(self.node, self.incarnation, body))
        except nats.errors.Error as exc:
            self._warn.warning("rpc", "cluster: cannot answer a request: %s", exc)

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
