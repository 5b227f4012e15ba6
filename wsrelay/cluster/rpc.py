"""Requests between nodes on their ``.rpc`` subjects: a ping (round-trip
time, and whether a node's incarnation is alive, for the global names), and
a node's metrics text, gathered from every node of this machine for one
/metrics (wsrelay.cluster.metrics merges them); and a question about a
node's own connections, for channels (``channel_request``: subscribe one,
disconnect a user's), answered by its core."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Optional

import nats

from . import wire
from .bus import Bus
from .hooks import Hooks
from .peers import Peer
from .stats import Trouble, log


class Rpc:
    """``metrics`` gives this node's metrics text (None: b"")."""

    def __init__(self, bus: Bus, by_node: dict[str, Peer], machine: str, metrics: Optional[Callable[[], bytes]],
                 trouble: Trouble, hooks: Callable[[], Optional[Hooks]],
                 published: Callable[[], Awaitable[None]]) -> None:
        self._bus = bus
        self._hooks = hooks
        self._published = published
        self._by_node = by_node
        self._machine = machine
        self.metrics = metrics
        self._trouble = trouble

    async def ping(self, node: str, timeout: float) -> Optional[float]:
        start = time.perf_counter()
        answer = await self._request(node, wire.PING, timeout)
        return None if answer is None else time.perf_counter() - start

    async def probe(self, node: str, incarnation: int) -> bool:
        """Whether ``incarnation`` of ``node`` answers."""
        answer = await self._request(node, wire.PING, 1.0)
        return answer is not None and answer[1] == incarnation

    async def gather_metrics(self, timeout: float) -> dict[str, Optional[bytes]]:
        local = self.metrics() if self.metrics is not None else b""
        others = sorted(node for node, peer in self._by_node.items() if peer.machine == self._machine)
        answers = await asyncio.gather(*(self._request(node, wire.METRICS, timeout) for node in others))
        result: dict[str, Optional[bytes]] = {self._bus.node: local}
        for node, answer in zip(others, answers):
            body = None if answer is None else answer[2]
            result[node] = body if isinstance(body, bytes) else None
        return result

    async def channel_request(self, node: str, args: list[Any], timeout: float) -> Any:
        """``node``'s core's answer to ``args`` (its ``on_channel_request``),
        None if it gave none within ``timeout``."""
        answer = await self._request(node, wire.CHANNEL, timeout, args)
        return None if answer is None else answer[2]

    async def _request(self, node: str, op: str, timeout: float,
                       args: Any = None) -> Optional[tuple[str, int, Any]]:
        """The answer of ``node``, or None if there was none in ``timeout``."""
        try:
            msg = await self._bus.nc.request(wire.rpc_subject(node), wire.rpc_request(op, args), timeout=timeout)
            return wire.parse_rpc_reply(msg.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None  # the node is gone or busy: what None means to every caller
        except wire.Malformed as exc:
            self._trouble.malformed(f"reply from {node} dropped: {exc}")
            return None
        except nats.errors.Error as exc:
            self._trouble.warning("rpc", f"cluster: request to {node} failed: {exc}")
            return None

    async def on_rpc_msg(self, msg: Any) -> None:
        try:
            request, args = wire.decode_rpc_request(msg.data)
        except wire.Malformed as exc:
            self._trouble.malformed(f"request dropped: {exc}")
            return
        if not msg.reply:
            return  # published, not requested: there is nobody to answer
        body: Any = None
        if request == wire.CHANNEL:
            hooks = self._hooks()
            if hooks is None:
                return  # no core yet: unanswered, the asker times out as for a node that is away
            try:
                body = hooks.on_channel_request(args)
            except Exception:
                # Answered with None: the asking node reports no answer.
                self._trouble.hook_failed("on_channel_request")
            # What the request changed (a subscription's count) is queued
            # for every node: out before the answer, so the asker hears of it
            # first (both come in order from us).
            await self._published()
        elif request == wire.METRICS:
            try:
                body = self.metrics() if self.metrics is not None else b""
            except Exception:
                # Answered with None: the asking node reports us down.
                log.exception("cluster: the metrics provider raised")
        try:
            await self._bus.nc.publish(msg.reply, wire.rpc_reply(self._bus.node, self._bus.incarnation, body))
        except nats.errors.Error as exc:
            self._trouble.warning("rpc", f"cluster: cannot answer a request: {exc}")
