"""A fake of the core's outbound contract (wsrelay._core.remote.Outbound):
what the core asks of the cluster's transport, recorded instead of sent, so
the core's cluster side is tested without NATS. ``joined_node`` makes a
fresh node a node of a cluster through it, the way ``wsrelay serve`` does."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import wsrelay
from wsrelay._core.remote import Cluster, Outbound
from wsrelay._core.runtime import Node, reset_node


class FakeTransport(Outbound):
    """Peers are up when listed in ``up`` (name -> incarnation); everything
    the core sends is appended to ``sent``, ``calls``, ``signals`` and
    ``frames_sent``."""

    def __init__(self, incarnation: int = 1, up: Optional[dict[str, int]] = None) -> None:
        self.incarnation = incarnation
        self.up = dict(up or {})
        self.hooks: Any = None
        self.sent: list[tuple[Any, ...]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.signals: list[tuple[Any, ...]] = []
        self.frames_sent: list[tuple[Any, ...]] = []
        self.interests: list[tuple[Any, ...]] = []
        self.presences: list[tuple[Any, ...]] = []
        self.publications: list[tuple[Any, ...]] = []
        # node -> what it answers to a channel request (a function of the args)
        self.answers: dict[str, Any] = {}
        self.names: dict[str, wsrelay.Pid] = {}
        self.released: list[wsrelay.Pid] = []

    def attach(self, hooks: Any) -> None:
        self.hooks = hooks

    def send(self, dest, topic, payload, sender) -> bool:
        if dest.node not in self.up:
            return False
        self.sent.append((dest, topic, payload, sender))
        return True

    def call(self, dest, topic, payload, sender, reply_to) -> bool:
        if dest.node not in self.up:
            return False
        self.calls.append((dest, topic, payload, sender, reply_to))
        return True

    def signal(self, kind, dest, src, reason) -> bool:
        if dest.node not in self.up:
            return False
        self.signals.append((kind, dest, src, reason))
        return True

    def frames(self, node, conn_ids, frame) -> bool:
        if node not in self.up:
            return False
        self.frames_sent.append((node, sorted(conn_ids), frame))
        return True

    def interest(self, node, changes) -> None:
        self.interests.append((node, changes))

    def presence(self, node, snapshot, changes) -> None:
        self.presences.append((node, snapshot, changes))

    def publication(self, node, channel, envelope) -> bool:
        if node not in self.up:
            return False
        self.publications.append((node, channel, envelope))
        return True

    async def channel_request(self, node, args) -> Any:
        answer = self.answers.get(node)
        return None if answer is None else answer(args)

    def up_nodes(self) -> list[str]:
        return list(self.up)

    def is_up(self, node) -> bool:
        return node in self.up

    def peer_incarnation(self, node) -> Optional[int]:
        return self.up.get(node)

    async def register_global(self, name, pid) -> bool:
        holder = self.names.get(name)
        if holder is not None and holder != pid:
            return False
        self.names[name] = pid
        return True

    def whereis_global(self, name) -> Optional[wsrelay.Pid]:
        return self.names.get(name)

    def release_globals(self, pid) -> None:
        self.released.append(pid)
        for name in [n for n, p in self.names.items() if p == pid]:
            del self.names[name]


@contextlib.contextmanager
def joined_node(name: str = "a", transport: Optional[FakeTransport] = None) -> Iterator[tuple[Cluster, FakeTransport]]:
    """A fresh node ``name`` joined to a cluster through ``transport`` (a
    FakeTransport by default), made the interpreter's node for the block;
    it must end with no process of its own left (checked), and the node
    before it is put back."""
    from wsrelay._core.runtime import node as current

    before = current()
    fake = transport if transport is not None else FakeTransport()
    node = Node(name, before.mailbox_capacity)
    reset_node(node)
    try:
        cluster = wsrelay.join_cluster(fake)
        yield cluster, fake
        leaked = [pid for pid in node.pids() if pid != node.system.pid]
        assert not leaked, f"test left processes running: {leaked}"
    finally:
        node.terminate_all("test_teardown")
        reset_node(before)


__all__ = ["FakeTransport", "joined_node"]
