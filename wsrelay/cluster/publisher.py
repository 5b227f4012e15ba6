"""What leaves for other nodes: records gathered per destination node and
published once per loop iteration as one batch.

Everything node A sends to node B travels on B's one inbox subject, so B's
NATS client hands it over in the order A published it. Each batch's header
numbers it in its session (wsrelay.cluster.peers) and says how many records
came before it, so the receiver knows exactly what a gap lost.
"""

from __future__ import annotations

import asyncio
from typing import Iterable, Optional

import nats

from . import wire
from .bus import Bus
from .peers import DOWN, Peer
from .stats import Counters, Trouble, log

# How long stop() gives the goodbyes to leave.
_GOODBYE_TIMEOUT = 5.0


class Publisher:
    """One task (``run``) publishes every batch, so batches leave in the
    order they were made; ``append`` and ``schedule`` never block."""

    def __init__(self, bus: Bus, counters: Counters, trouble: Trouble) -> None:
        self._bus = bus
        self._counters = counters
        self._trouble = trouble
        self._dirty: list[Peer] = []
        self._wake: Optional[asyncio.Future[None]] = None
        self._flushed: Optional[asyncio.Event] = None
        self._batch_limit = 0

    def start(self) -> None:
        """Ready to publish on the bus's client (connected)."""
        # Room for the header and the array header in every NATS message.
        self._batch_limit = self._bus.nc.max_payload - 512
        self._wake = asyncio.get_running_loop().create_future()
        self._flushed = asyncio.Event()

    def append(self, peer: Peer, record: bytes) -> None:
        peer.records.append(record)
        peer.size += len(record)
        if not peer.queued:
            self.schedule(peer)

    def schedule(self, peer: Peer) -> None:
        """Have ``run`` send ``peer`` a batch in this loop iteration (an empty
        one when nothing is queued: a hello, keepalive or goodbye)."""
        if peer.queued:
            return
        peer.queued = True
        self._dirty.append(peer)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def published(self) -> None:
        """Returns once what is queued now has been published (``run``
        publishes until nothing is left, then says so)."""
        assert self._flushed is not None
        if self._dirty:
            self._flushed.clear()
            await self._flushed.wait()

    async def goodbye(self, peers: Iterable[Peer]) -> None:
        """Send each live one of ``peers`` a last batch saying goodbye (it sees
        us go at once, after what we sent before); returns once they are
        published, or after a while without them."""
        assert self._flushed is not None
        self._flushed.clear()
        for peer in peers:
            if peer.state != DOWN:
                peer.flags |= wire.FLAG_BYE
                self.schedule(peer)
        if self._dirty:
            # ``run`` sends them after what was queued before.
            try:
                await asyncio.wait_for(self._flushed.wait(), _GOODBYE_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("cluster: goodbyes not published within %d s; leaving without them",
                            _GOODBYE_TIMEOUT)

    async def run(self) -> None:
        """Once per loop iteration that queued something."""
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
                    self._counters.undeliverable += len(records)
                    continue
                for data, count in self._batches(peer, records, size, flags):
                    await self._publish(peer.subject, data, count)

    def _batches(self, peer: Peer, records: list[bytes], size: int, flags: int) -> list[tuple[bytes, int]]:
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

    def _batch(self, peer: Peer, records: list[bytes], flags: int) -> bytes:
        peer.out_seq += 1
        peer.sent = True
        bus = self._bus
        header = wire.Header(bus.node, bus.incarnation, peer.node, peer.incarnation, peer.session,
                             peer.out_seq, peer.out_records, flags)
        peer.out_records += len(records)
        return wire.batch(header, records)

    async def _publish(self, subject: str, data: bytes, count: int) -> None:
        try:
            await self._bus.nc.publish(subject, data)
        except nats.errors.Error as exc:
            # The bus is away and the client's buffer is full (or it is
            # closing): these records are lost, and the receiver will see the
            # gap in the sequence and restart the session.
            self._counters.undeliverable += count
            self._trouble.warning("publish", f"cluster: cannot publish to {subject}: {exc}")
            return
        c = self._counters
        c.batches_out += 1
        c.messages_out += count
        c.bytes_out += len(data)
