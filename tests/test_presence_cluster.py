"""Presence across nodes (docs/cluster.md, "Presence"): real nodes (``wsrelay
serve`` children) on a real nats-server, driven by their control
connections (tests/cluster_support.py), with WebSocket clients of
/ws/member on each.

Each node tells the others of its entries on the ordered stream it shares
with each, so a message sent from node X to node Y after a change on X
reaches Y after it: ``heard`` is that barrier. What announces no event (a
client gone, a node lost, the broker back) is polled, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.apps import CLUSTER_APP_YAML
from tests.cluster_support import DOWN_AFTER, Control, all_up, controlled_cluster, node_process
from tests.harness import health
from tests.test_channels_cluster import heard, member, node_of
from tests.test_cluster_supervisor import kill_worker, supervised_server
from tests.wsclient import RawWebSocket
from wsrelay.cluster.broker import Broker

pytestmark = pytest.mark.timeout(120)

ROOM = "room:x"
LIVE = "live:x"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The cluster nodes' app, with presence on room:* and, with join/leave
    events, on live:*."""
    path = tmp_path / "presence_app.yaml"
    path.write_text(CLUSTER_APP_YAML
                    + '  - {name: rooms, kind: channel.namespace, pattern: "room:*", presence: true}\n'
                    + '  - {name: live, kind: channel.namespace, pattern: "live:*", presence: true, '
                      'join_leave: true}\n')
    return path


def entry(pid: str, user: Any = None, info: Any = None) -> dict[str, Any]:
    return {"client": pid, "user": user, "info": info or {}}


async def presence(control: Control, channel: str = ROOM) -> list[dict[str, Any]]:
    return sorted((await control.call("presence", channel=channel))["presence"], key=lambda e: e["client"])


async def presence_becomes(control: Control, expected: list[dict[str, Any]], channel: str = ROOM,
                           timeout: float = 10.0) -> None:
    expected = sorted(expected, key=lambda e: e["client"])
    deadline = asyncio.get_running_loop().time() + timeout
    while (seen := await presence(control, channel)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"presence {seen}, not {expected}"
        await asyncio.sleep(0.02)


async def test_every_node_sees_every_nodes_entries_and_a_user_counts_once(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", "c") as ((a, ca), (b, cb), (c, cc)):
        ws_a1, a1 = await member(a, ROOM, user="ada")
        ws_b1, b1 = await member(b, ROOM, user="ada")
        wb2, b2 = await member(b, ROOM)
        # Another node's connection, subscribed by a, with info: b has told
        # a of the entry before it answers.
        assert await ca.call("subscribe", pid=b2, channel="room:y", info={"seat": 2}) == "room:y"
        assert await presence(ca, "room:y") == [entry(b2, None, {"seat": 2})]
        for src, dst in ((ca, cb), (ca, cc), (cb, ca), (cb, cc)):
            await heard(src, dst)
        expected = sorted([entry(a1, "ada"), entry(b1, "ada"), entry(b2)], key=lambda e: e["client"])
        for control in (ca, cb, cc):
            assert await presence(control) == expected
            assert await control.call("presence_stats", channel=ROOM) == {"clients": 3, "users": 1}
        # Gone from the other nodes when its client goes.
        wb2.close()
        await presence_becomes(cb, [entry(a1, "ada"), entry(b1, "ada")])
        await heard(cb, ca)
        await heard(cb, cc)
        for control in (ca, cc):
            assert await presence(control) == await presence(cb)
            assert await presence(control, "room:y") == []


async def test_join_and_leave_events_of_another_nodes_subscribers(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        ws = await RawWebSocket.connect(a, f"/ws/member?ch={LIVE}&user=ann")
        own = json.loads(await ws.recv_text())
        assert own["event"] == "join" and own["info"]["user"] == "ann"
        mine = own["info"]["client"]
        assert json.loads(await ws.recv_text()) == {"me": mine}
        await heard(ca, cb)  # b knows of ann before bob joins
        other = await RawWebSocket.connect(b, f"/ws/member?ch={LIVE}&user=bob")
        joined = json.loads(await ws.recv_text())
        assert joined["event"] == "join" and joined["channel"] == LIVE and joined["info"]["user"] == "bob"
        bob = joined["info"]["client"]
        assert node_of(bob) == "b"
        # b's member hears its own join only: ann's was before it.
        events = [json.loads(await other.recv_text()) for _ in range(2)]
        assert events == [{"channel": LIVE, "event": "join", "info": entry(bob, "bob")}, {"me": bob}]
        other.close()
        assert json.loads(await ws.recv_text()) == {"channel": LIVE, "event": "leave", "info": entry(bob, "bob")}
        ws.close()


async def test_a_node_that_comes_up_gets_every_entry_and_a_lost_node_takes_its_own(app: Path,
                                                                                  broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        ws_a1, a1 = await member(a, ROOM, user="ann")
        ws_b1, b1 = await member(b, ROOM, user="bob")
        late = node_process(app, broker, "c")
        try:
            await asyncio.to_thread(late.start)
            await all_up([a, b, late])
            cc = await Control.open(late)
            await heard(ca, cc)
            await heard(cb, cc)
            assert await presence(cc) == sorted([entry(a1, "ann"), entry(b1, "bob")], key=lambda e: e["client"])
            b.kill()
            # Within WSRELAY_CLUSTER_DOWN_AFTER, b's entry is gone everywhere.
            for control in (ca, cc):
                await presence_becomes(control, [entry(a1, "ann")], timeout=DOWN_AFTER * 5)
        finally:
            late.kill()


@pytest.mark.parametrize("outage", ["seen", "brief"])
async def test_after_a_broker_restart_presence_converges_with_no_zombie_and_no_duplicate(
        app: Path, broker: Broker, outage: str) -> None:
    """``seen``: the broker is away until each node has seen the other lost
    (each then holds its own entries only); ``brief``: it is back at once,
    with changes made while it was away (held by the client, or lost and
    the stream reset)."""
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        ws_a1, a1 = await member(a, ROOM, user="ann")
        leaving, b1 = await member(b, ROOM, user="bob")
        ws_b2, b2 = await member(b, ROOM, user="cy")
        await heard(cb, ca)
        assert len(await presence(ca)) == 3
        broker.stop()
        if outage == "seen":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DOWN_AFTER * 10
            while (await health(a))["peers"].get("b") != "down" or (await health(b))["peers"].get("a") != "down":
                assert loop.time() < deadline, "the nodes did not see each other lost"
                await asyncio.sleep(0.05)
        leaving.close()
        ws_b3, b3 = await member(b, ROOM, user="dee")
        # While it is away each node holds its own entries, and, until it has
        # seen the other lost, the other's.
        held_by_b = [entry(b2, "cy"), entry(b3, "dee")]
        await presence_becomes(cb, held_by_b if outage == "seen" else held_by_b + [entry(a1, "ann")])
        if outage == "seen":
            assert await presence(ca) == [entry(a1, "ann")]
        broker.start()
        await all_up([a, b], timeout=30)
        expected = [entry(a1, "ann"), entry(b2, "cy"), entry(b3, "dee")]
        for control in (ca, cb):
            await presence_becomes(control, expected, timeout=10)
        assert await ca.call("presence_stats", channel=ROOM) == {"clients": 3, "users": 3}
        assert b1 not in [e["client"] for e in await presence(ca)]


async def test_across_workers_a_killed_workers_entries_are_gone(app: Path) -> None:
    server = supervised_server(app, WSRELAY_WORKERS="2", WSRELAY_NODE="w")
    server.start()
    try:
        # The kernel spreads the connections: open some until both workers
        # have a control connection and two members.
        controls: dict[str, Control] = {}
        members: dict[str, list[str]] = {"w-0": [], "w-1": []}
        sockets = []
        for i in range(60):
            if len(controls) == 2 and all(len(m) >= 2 for m in members.values()):
                break
            control = await Control.open(server)
            controls.setdefault(node_of(control.pid), control)
            ws, pid = await member(server, ROOM, user=f"u{i}")
            sockets.append(ws)
            members[node_of(pid)].append(pid)
        assert len(controls) == 2 and all(len(m) >= 2 for m in members.values()), members
        c0, c1 = controls["w-0"], controls["w-1"]
        await heard(c0, c1)
        await heard(c1, c0)
        everyone = sorted(members["w-0"] + members["w-1"])
        for control in (c0, c1):
            assert [e["client"] for e in await presence(control)] == everyone
        # SIGKILLed: its supervisor says so at once, well within DOWN_AFTER (2 s here).
        kill_worker(server, 1)
        deadline = asyncio.get_running_loop().time() + 2.0
        while [e["client"] for e in await presence(c0)] != sorted(members["w-0"]):
            assert asyncio.get_running_loop().time() < deadline, await presence(c0)
            await asyncio.sleep(0.02)
        stats = await c0.call("presence_stats", channel=ROOM)
        assert stats == {"clients": len(members["w-0"]), "users": len(members["w-0"])}
    finally:
        server.kill()
