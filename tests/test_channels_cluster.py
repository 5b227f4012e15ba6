"""Channels across nodes (docs/cluster.md, "Channels"): real nodes (``wsrelay
serve`` children) on a real nats-server, driven by their control connections
(tests/cluster_support.py), with WebSocket clients of /ws/member on each.

A node announces its subscriber counts on the ordered stream it shares with
each other node, so a message sent from node X to node Y after a
subscription on X reaches Y after X's announcement: ``heard`` is that
barrier, an event rather than a wait.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests import test_cluster_core as core
from tests.cluster_support import DOWN_AFTER, CallError, Control, controlled_cluster, local_metrics
from tests.test_cluster_supervisor import kill_worker, supervised_server
from tests.wsclient import RawWebSocket
from wsrelay.client import AsyncClient
from wsrelay.cluster.broker import Broker

pytestmark = pytest.mark.timeout(120)

app = core.app


async def member(node: Any, *channels: str, user: str = "") -> tuple[RawWebSocket, str]:
    """A client of ``node`` granted ``channels`` (and ``user``), and its PID."""
    query = "&".join([f"ch={name}" for name in channels] + ([f"user={user}"] if user else []))
    ws = await RawWebSocket.connect(node, f"/ws/member?{query}")
    return ws, json.loads(await ws.recv_text())["me"]


async def heard(source: Control, dest: Control) -> None:
    """``dest``'s node has processed everything ``source``'s node sent it
    so far (a message on the same ordered stream, after it)."""
    await source.call("send", pid=dest.pid, topic="barrier")
    await dest.event("barrier")


async def publications(ws: RawWebSocket, count: int) -> list[Any]:
    out = []
    for _ in range(count):
        envelope = json.loads(await ws.recv_text())
        assert envelope["event"] == "publication", envelope
        out.append((envelope["channel"], envelope["data"]))
    return out


async def active_becomes(control: Control, expected: dict[str, Any], timeout: float = 10.0) -> None:
    """Until ``control``'s node sees ``expected`` as the active channels: for
    a change that announces no event (a client gone, a node lost)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (seen := await control.call("active")) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"active channels {seen}, not {expected}"
        await asyncio.sleep(0.02)


async def counter(node: Any, name: str, **labels: str) -> float:
    return (await local_metrics(node))(name, **labels)


async def test_a_publication_reaches_every_node_with_subscribers_once(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", "c") as ((a, ca), (b, cb), (c, cc)):
        a1, _ = await member(a, "room:x")
        a2, _ = await member(a, "room:x")
        b1, _ = await member(b, "room:x")
        for src, dst in ((ca, cb), (ca, cc), (cb, ca), (cb, cc)):
            await heard(src, dst)
        # Every node sees the channel's subscribers on every node.
        for control in (ca, cb, cc):
            assert await control.call("active") == {"room:x": {"subscribers": 3}}
        assert await ca.call("publish", channel="room:x", data={"n": 1}) == {}
        assert await cb.call("publish", channel="room:x", data={"n": 2}) == {}
        # c has no subscribers: what it publishes goes to a and b, once each.
        assert await cc.call("publish", channel="room:x", data={"n": 3}) == {}
        # From one publisher, in order; each once (the last one follows at once).
        await cc.call("publish", channel="room:x", data={"n": 4})
        for ws in (a1, a2, b1):
            received = [d["n"] for _, d in await publications(ws, 4)]
            assert sorted(received) == [1, 2, 3, 4] and received.index(3) < received.index(4)
        # Shipped once per node (a's two subscribers, one publication from
        # each of b and c), and c, with no subscribers, got nothing.
        assert await counter(a, "wsrelay_channel_publications_total", origin="remote") == 3
        assert await counter(b, "wsrelay_channel_publications_total", origin="remote") == 3
        assert await counter(c, "wsrelay_channel_publications_total", origin="remote") == 0
        assert await counter(a, "wsrelay_channel_deliveries_total") == 8
        # A node whose last subscriber leaves is shipped nothing more.
        b1.close()
        await active_becomes(cb, {"room:x": {"subscribers": 2}})
        await heard(cb, ca)
        assert await ca.call("active") == {"room:x": {"subscribers": 2}}
        await ca.call("publish", channel="room:x", data={"n": 5})
        for ws in (a1, a2):
            assert await publications(ws, 1) == [("room:x", {"n": 5})]
        await heard(ca, cb)
        assert await counter(b, "wsrelay_channel_publications_total", origin="remote") == 3


async def test_a_connection_of_another_node_is_subscribed_and_unsubscribed(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        ws, pid = await member(b)
        assert pid.startswith("{b@")
        # From a: b subscribes it and announces it before answering.
        assert await ca.call("subscribe", pid=pid, channel="news") == "news"
        assert await ca.call("active") == {"news": {"subscribers": 1}}
        await ca.call("publish", channel="news", data="first")
        assert await publications(ws, 1) == [("news", "first")]
        # Unsubscribing is asked of b; its client is told.
        assert await ca.call("unsubscribe", pid=pid, channel="news") is True
        assert json.loads(await ws.recv_text()) == {"channel": "news", "event": "unsubscribed"}
        await heard(cb, ca)
        assert await ca.call("active") == {}
        # b's errors come back to a as they are.
        with pytest.raises(CallError, match="ValueError: channels.subscribe: .* is not a WebSocket connection"):
            await ca.call("subscribe", pid=cb.pid, channel="news")
        with pytest.raises(CallError, match="ValueError: channel name"):
            await ca.call("subscribe", pid=pid, channel="bad name")
        ws.close()
        await heard(cb, ca)
        with pytest.raises(CallError, match="ProcessLookupError: channels.subscribe: connection .* is not alive"):
            await ca.call("subscribe", pid=pid, channel="news")


async def test_over_the_limit_on_another_node(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", WSRELAY_MAX_CHANNELS_PER_CONNECTION="2") as \
            ((a, ca), (b, cb)):
        ws, pid = await member(b, "one", "two")
        with pytest.raises(CallError, match="ValueError: .* already in 2 channels, the limit"):
            await ca.call("subscribe", pid=pid, channel="three")
        ws.close()


async def test_disconnect_a_user_on_every_node(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        mine = [await member(a, user="ada"), await member(b, user="ada"), await member(b, user="ada")]
        other, other_pid = await member(b, user="bob")
        assert await ca.call("disconnect", user="ada", code=4000, reason="signed out") == 3
        for ws, _ in mine:
            frame = await ws.expect_close()
            assert (frame.close_code, frame.close_reason) == (4000, b"signed out")
        # One connection, of another node, by its PID.
        assert await ca.call("disconnect", pid=other_pid) == 1
        assert (await other.expect_close()).close_code == 1000
        assert await ca.call("disconnect", pid=other_pid) == 0
        assert await ca.call("disconnect", user="nobody") == 0
        with pytest.raises(CallError, match="ValueError: ws.close code 999"):
            await ca.call("disconnect", user="ada", code=999)
        with pytest.raises(CallError, match="give client or user"):
            await ca.call("disconnect")


async def test_an_idempotency_key_is_claimed_for_every_node(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", WSRELAY_API_KEY="k") as ((a, ca), (b, cb)):
        ws, _ = await member(b, "news")
        await heard(cb, ca)
        async with AsyncClient(a.url("", scheme="http"), "k") as via_a, \
                AsyncClient(b.url("", scheme="http"), "k") as via_b:
            assert await via_a.publish("news", "once", idempotency_key="k-1") == {}
            # Received before going on: a publication made on a reaches b's
            # subscriber over the nodes' stream, and one made on b meanwhile may
            # come first (publications through different nodes have no order).
            assert await publications(ws, 1) == [("news", "once")]
            # The retry through the other node is accepted, and not published:
            # b's next publication is the next one its subscriber gets.
            assert await via_b.publish("news", "once", idempotency_key="k-1") == {}
            assert await via_b.publish("news", "next") == {}
        assert await publications(ws, 1) == [("news", "next")]


async def test_a_lost_node_takes_its_subscribers_with_it(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        clients = [await member(a, "room:y"), await member(b, "room:y"), await member(b, "room:y")]
        await heard(cb, ca)
        assert await ca.call("active") == {"room:y": {"subscribers": 3}}
        b.kill()
        # Within WSRELAY_CLUSTER_DOWN_AFTER, a counts only its own.
        await active_becomes(ca, {"room:y": {"subscribers": 1}}, timeout=DOWN_AFTER * 5)
        for ws, _ in clients[1:]:
            await ws.wait_eof()


async def test_across_workers_a_publish_through_any_reaches_all_once(app: Path) -> None:
    server = supervised_server(app, WSRELAY_WORKERS="2", WSRELAY_NODE="w")
    server.start()
    try:
        # The kernel spreads the connections: open some until both workers have
        # a control connection and two members.
        controls: dict[str, Control] = {}
        members: dict[str, list[RawWebSocket]] = {"w-0": [], "w-1": []}
        for _ in range(60):
            if len(controls) == 2 and all(len(m) >= 2 for m in members.values()):
                break
            control = await Control.open(server)
            controls.setdefault(node_of(control.pid), control)
            ws, pid = await member(server, "room:w")
            members[node_of(pid)].append(ws)
        assert len(controls) == 2 and all(len(m) >= 2 for m in members.values()), members
        c0, c1 = controls["w-0"], controls["w-1"]
        await heard(c0, c1)
        await heard(c1, c0)
        everyone = members["w-0"] + members["w-1"]
        assert await c0.call("active") == {"room:w": {"subscribers": len(everyone)}}
        await c0.call("publish", channel="room:w", data=0)
        await c1.call("publish", channel="room:w", data=1)
        await c0.call("publish", channel="room:w", data=2)
        for ws in everyone:
            received = [d for _, d in await publications(ws, 3)]
            # Each once; from one publisher (c0), in order.
            assert sorted(received) == [0, 1, 2] and received.index(0) < received.index(2)
        # Nothing more was on its way: after what each node shipped, the next
        # publications are the next ones each client receives.
        await heard(c0, c1)
        await heard(c1, c0)
        await c0.call("publish", channel="room:w", data="end0")
        await c1.call("publish", channel="room:w", data="end1")
        for ws in everyone:
            assert sorted(d for _, d in await publications(ws, 2)) == ["end0", "end1"]
        # A SIGKILLed worker's subscribers are gone from the other's view
        # within WSRELAY_CLUSTER_DOWN_AFTER (its supervisor says so at once).
        kill_worker(server, 1)
        await active_becomes(c0, {"room:w": {"subscribers": len(members["w-0"])}}, timeout=4.0)
        await c0.call("publish", channel="room:w", data=3)
        for ws in members["w-0"]:
            assert await publications(ws, 1) == [("room:w", 3)]
    finally:
        server.kill()


def node_of(pid: str) -> str:
    return pid[1:pid.index("@")]
