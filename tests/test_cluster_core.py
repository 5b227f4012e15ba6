"""The cluster (docs/cluster.md) through the process API: nodes (``wsrelay
serve`` children) joined to a real nats-server, each driven by a control
connection (tests/cluster_support.py). Sends, monitors, links, terminate, relays and groups cross
nodes with Erlang's semantics; a lost node fires every monitor and link of
its PIDs with ``noconnection``; a restarted node is a new incarnation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from pathlib import Path

import pytest

from tests.apps import write_cluster_app
from tests.cluster_support import (
    DOWN_AFTER,
    CallError,
    Control,
    all_up,
    cluster,
    controlled_cluster,
    local_metrics,
    node_process,
)
from tests.harness import ServerProcess, scrape, serve_command
from tests.wsclient import RawWebSocket
from wsrelay.cluster.broker import Broker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return write_cluster_app(tmp_path)


async def test_send_monitor_and_terminate_across_nodes(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        echo = await cb.call("spawn", fn="test:echo")
        assert echo.startswith("{b@")
        await ca.call("monitor", pid=echo)
        assert await ca.call("send", pid=echo, topic="hello", payload={"x": [1, "two", None]}) is True
        reply = await ca.event("echo")
        assert (reply["payload"], reply["sender"]) == ({"x": [1, "two", None]}, echo)
        assert await ca.call("terminate", pid=echo, reason="bye") is True
        exited = await ca.event("@exit")
        assert (exited["payload"]["pid"], exited["payload"]["reason"]) == (echo, "bye")
        # A payload the cluster's codec cannot carry fails at the call.
        with pytest.raises(CallError, match="TypeError"):
            await ca.call("send_set", pid=await cb.call("spawn", fn="test:sleeper"))


async def test_messages_and_the_exit_keep_their_order(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        echo = await cb.call("spawn", fn="test:echo")
        await ca.call("monitor", pid=echo)
        assert await ca.call("send_many", pid=echo, topic="n", count=200) == [True] * 200
        await ca.call("send", pid=echo, topic="stop")
        seen = []
        while len(seen) < 201:
            message = await ca.event("echo") if len(seen) < 200 else await ca.event("@exit")
            seen.append(message["payload"])
        assert seen[:200] == list(range(200))
        assert seen[200]["reason"] == "normal"


async def test_links_across_nodes(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        doomed = await cb.call("spawn", fn="test:echo")
        await ca.call("link", pid=doomed)
        # Once its echo is back, the link (sent before, on the same stream) is in place.
        await ca.call("send", pid=doomed, topic="ping")
        await ca.event("echo")
        await cb.call("terminate", pid=doomed, reason="boom")
        down = await ca.event("@link_down")
        assert (down["payload"]["pid"], down["payload"]["reason"]) == (doomed, "boom")
        # A normal exit breaks the link and tells nobody; a later abnormal
        # exit of another linked process still comes through.
        normal = await cb.call("spawn", fn="test:echo")
        other = await cb.call("spawn", fn="test:echo")
        await ca.call("link", pid=normal)
        await ca.call("link", pid=other)
        await ca.call("send", pid=normal, topic="stop")
        await ca.call("send", pid=other, topic="crash")
        down = await ca.event("@link_down")
        assert (down["payload"]["pid"], down["payload"]["reason"]) == (other, "error")
        assert not [e for e in ca.events if e.get("event") == "@link_down"]


async def test_a_dead_or_unknown_remote_pid(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        echo = await cb.call("spawn", fn="test:echo")
        await cb.call("monitor", pid=echo)
        await cb.call("send", pid=echo, topic="stop")
        await cb.event("@exit")
        await ca.call("monitor", pid=echo)
        noproc = await ca.event("@exit")
        assert (noproc["payload"]["pid"], noproc["payload"]["reason"]) == (echo, "noproc")
        # Linking to it is an exit signal, noproc (trapped here: LINK_DOWN).
        await ca.call("link", pid=echo)
        down = await ca.event("@link_down")
        assert (down["payload"]["pid"], down["payload"]["reason"]) == (echo, "noproc")
        # A node nobody has heard of: unreachable.
        nowhere = echo.replace("{b@", "{zz@")
        assert await ca.call("send", pid=nowhere, topic="t") is False
        await ca.call("monitor", pid=nowhere)
        assert (await ca.event("@exit"))["payload"]["reason"] == "noconnection"


async def test_a_lost_node_fires_monitors_and_links_with_noconnection(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        watched = await cb.call("spawn", fn="test:echo")
        linked = await cb.call("spawn", fn="test:echo")
        await ca.call("monitor", pid=watched)
        await ca.call("link", pid=linked)
        await ca.call("send", pid=linked, topic="ping")
        await ca.event("echo")
        b.kill()
        killed = time.monotonic()
        exited = await ca.event("@exit", timeout=10)
        down = await ca.event("@link_down", timeout=10)
        elapsed = time.monotonic() - killed
        assert (exited["payload"]["pid"], exited["payload"]["reason"]) == (watched, "noconnection")
        assert (down["payload"]["pid"], down["payload"]["reason"]) == (linked, "noconnection")
        assert elapsed < DOWN_AFTER + 1.5, elapsed
        assert await ca.call("send", pid=watched, topic="t") is False
        assert (await local_metrics(a))("wsrelay_cluster_node_losses_total") >= 1


async def test_a_restarted_node_is_a_new_incarnation(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        old = await cb.call("spawn", fn="test:echo")
        b.stop()
        again = node_process(app, broker, "b")
        try:
            await asyncio.to_thread(again.start)
            await all_up([a, again])
            cb2 = await Control.open(again)
            fresh = await cb2.call("spawn", fn="test:echo")
            assert fresh != old and fresh.split("|")[0] == old.split("|")[0]
            assert await ca.call("send", pid=old, topic="hello") is False
            await ca.call("monitor", pid=old)
            assert (await ca.event("@exit"))["payload"]["reason"] == "noproc"
            assert await ca.call("send", pid=fresh, topic="hello", payload=1) is True
            assert (await ca.event("echo"))["sender"] == fresh
        finally:
            again.kill()


async def test_a_relay_to_a_target_on_another_node(app: Path, broker: Broker) -> None:
    async with cluster(app, broker, "a", "b") as (a, b):
        cb = await Control.open(b)
        target = await cb.call("spawn", fn="relay:joined_echo")
        ws = await RawWebSocket.connect(a, f"/ws/relay?to={target}")
        joined = json.loads(await ws.recv_text())
        assert (joined["event"], joined["target"]) == ("joined", target)
        for n in range(50):
            ws.send_text(f"m{n}")
        assert [await ws.recv_text() for _ in range(50)] == [f"m{n}" for n in range(50)]
        ws.send_binary(b"\x00\x01")
        assert await ws.recv_binary() == b"\x00\x01"
        await ws.close_handshake()


async def test_backpressure_holds_across_nodes(app: Path, broker: Broker) -> None:
    """The target reads nothing for 2 s: its node holds at most a mailbox's
    worth per connection, the connection stops reading, nothing is lost."""
    async with cluster(app, broker, "a", "b", WSRELAY_MAILBOX_CAPACITY="16") as (a, b):
        cb = await Control.open(b)
        target = await cb.call("spawn", fn="relay:joined_echo", args=[2.0])
        ws = await RawWebSocket.connect(a, f"/ws/relay?to={target}")
        pauses = (await local_metrics(a))("wsrelay_relay_backpressure_pauses_total")
        count = 2000

        async def read() -> list[str]:
            got = [await ws.recv_text(timeout=30)]  # "joined"
            while len(got) < count + 1:
                got.append(await ws.recv_text(timeout=30))
            return got

        reader = asyncio.ensure_future(read())
        for n in range(count):
            ws.send_text(str(n))
        await ws.drain()
        got = await reader
        assert got[1:] == [str(n) for n in range(count)]
        assert (await local_metrics(a))("wsrelay_relay_backpressure_pauses_total") > pauses
        await ws.close_handshake()


async def test_a_remote_target_found_dead_after_the_upgrade_closes_with_1011(app: Path, broker: Broker) -> None:
    async with cluster(app, broker, "a", "b") as (a, b):
        cb = await Control.open(b)
        target = await cb.call("spawn", fn="test:echo")
        await cb.call("monitor", pid=target)
        await cb.call("send", pid=target, topic="stop")
        await cb.event("@exit")
        ws = await RawWebSocket.connect(a, f"/ws/relay?to={target}")
        close = await ws.expect_close()
        assert close.close_code == 1011


async def test_groups_and_global_names_span_nodes(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        room = await ca.call("spawn", fn="relay:room")
        assert await ca.call("register_global", name="room", pid=room) is True
        assert await cb.call("register_global", name="room", pid=await cb.call("spawn", fn="test:sleeper")) is False
        deadline = time.monotonic() + 10
        while await cb.call("whereis_global", name="room") != room:  # b's view follows a watch
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        members = []
        for node in (a, a, b, b):
            ws = await RawWebSocket.connect(node, "/ws/room")
            assert json.loads(await ws.recv_text())["event"] == "joined"
            members.append(ws)
        members[2].send_text("hello from b")
        for ws in members:
            assert await ws.recv_text() == "hello from b"
        members[0].send_text("count")
        assert json.loads(await members[0].recv_text()) == {"event": "count", "members": 4}
        # A send to the name from b reaches the room on a.
        assert await cb.call("send", pid="room", topic="count") is True
        assert (await cb.event("count"))["payload"] == 4
        # A name is released when its PID ends.
        short_lived = await ca.call("spawn", fn="test:sleeper")
        assert await ca.call("register_global", name="short", pid=short_lived) is True
        await ca.call("terminate", pid=short_lived)
        deadline = time.monotonic() + 10
        while await cb.call("whereis_global", name="short") is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await cb.call("register_global", name="short", pid=await cb.call("spawn", fn="test:sleeper")) is True
        # b is lost: its members leave by themselves, its names are released.
        holder = await cb.call("spawn", fn="test:sleeper")
        assert await cb.call("register_global", name="b-name", pid=holder) is True
        b.kill()
        deadline = time.monotonic() + 10
        while True:
            members[0].send_text("count")
            if json.loads(await members[0].recv_text()) == {"event": "count", "members": 2}:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 10
        while await ca.call("whereis_global", name="b-name") is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_ws_topics_to_a_connection_on_another_node(app: Path, broker: Broker) -> None:
    async with cluster(app, broker, "a", "b") as (a, b):
        cb = await Control.open(b)
        target = await cb.call("spawn", fn="relay:joined_echo")
        ws = await RawWebSocket.connect(a, f"/ws/relay?to={target}")
        client = json.loads(await ws.recv_text())["client"]
        assert client.startswith("{a@")
        assert await cb.call("send", pid=client, topic="ws.send", payload={"type": "text", "data": "from b"}) is True
        assert await ws.recv_text() == "from b"
        with pytest.raises(CallError, match="ValueError: ws.send of type 'text' needs str data"):
            await cb.call("send", pid=client, topic="ws.send", payload={"type": "text", "data": 5})
        with pytest.raises(CallError, match="ValueError: ws.close code"):
            await cb.call("send", pid=client, topic="ws.close", payload={"code": 1005})
        assert await cb.call("send", pid=client, topic="ws.close", payload={"code": 4000, "reason": "from b"}) is True
        close = await ws.expect_close()
        assert (close.close_code, close.close_reason) == (4000, b"from b")


async def test_metrics_answer_for_every_node_of_the_machine(app: Path, broker: Broker) -> None:
    async with cluster(app, broker, "a", "b") as (a, b):
        # A node is gathered once a's heartbeats from it say it is on this
        # machine, and reported down for a scrape it does not answer in time:
        # on this busy machine, ask again for a while (polled: no event says it).
        deadline = time.monotonic() + 20
        while (merged := await scrape(a))("wsrelay_cluster_node_up", node="b") != 1:
            assert time.monotonic() < deadline, merged.text[-2000:]
            await asyncio.sleep(0.2)
        assert merged("wsrelay_cluster_node_up", node="a") == 1
        assert merged("wsrelay_cluster_node_up", node="b") == 1
        assert merged.has("wsrelay_connections_open")
        assert ("wsrelay_connections_open", (("node", "b"),)) in merged.samples
        local = await local_metrics(a)
        assert not local.has("wsrelay_cluster_node_up")
        assert local("wsrelay_cluster_peers", state="up") == 1


async def test_a_killed_worker_is_lost_to_its_peers_and_restarted(app: Path) -> None:
    """WSRELAY_WORKERS=2: a monitor from worker 0 of a process on worker 1
    fires with noconnection when worker 1 is SIGKILLed (the supervisor
    announces the death at once), and the supervisor starts it again."""
    import psutil

    with ServerProcess(serve_command(app), env={"WSRELAY_WORKERS": "2", "WSRELAY_NODE": "w",
                                                 "WSRELAY_ADDR": "127.0.0.1:0"}) as server:
        controls: dict[str, Control] = {}
        for _ in range(40):  # the kernel picks the worker of each new socket
            control = await Control.open(server)
            controls.setdefault(control.pid.split("@")[0][1:], control)
            if len(controls) == 2:
                break
        assert set(controls) == {"w-0", "w-1"}, set(controls)
        c0, c1 = controls["w-0"], controls["w-1"]
        sleeper = await c1.call("spawn", fn="test:echo")
        await c0.call("monitor", pid=sleeper)
        await c0.call("send", pid=sleeper, topic="ping")
        await c0.event("echo")
        (victim,) = [p for p in psutil.Process(server.pid).children() if p.cmdline()[-2:] == ["--worker", "1"]]
        victim.kill()
        killed = time.monotonic()
        exited = await c0.event("@exit", timeout=10)
        assert (exited["payload"]["pid"], exited["payload"]["reason"]) == (sleeper, "noconnection")
        assert time.monotonic() - killed < 5.0  # WSRELAY_CLUSTER_DOWN_AFTER, the default
        server.wait_text(r"worker 1 \(pid \d+\) ready", start=server.wait_text(r"worker 1 .* restarting").end())
        assert server.stop() == 0


async def test_a_broker_restart_under_traffic(app: Path, broker: Broker) -> None:
    """Local traffic goes on while the broker is away; cross-node traffic
    resumes when it is back; what was sent meanwhile arrives, or its loss is
    counted and reported as the peer's loss (noconnection), never passed over."""
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        remote_echo = await cb.call("spawn", fn="test:echo")
        await ca.call("monitor", pid=remote_echo)
        local_target = await ca.call("spawn", fn="relay:joined_echo")
        client = await RawWebSocket.connect(a, f"/ws/relay?to={local_target}")
        await client.recv_text()
        await asyncio.to_thread(broker.stop)
        for n in range(20):
            client.send_text(f"local {n}")
            assert await client.recv_text() == f"local {n}"
        during = await ca.call("send_many", pid=remote_echo, topic="n", count=10)
        await asyncio.to_thread(broker.start)
        # Cross-node traffic resumes: a round trip gets through (the first
        # ones may be lost, counted, while the two nodes settle on a new
        # session), then every one does.
        await all_up([a, b], timeout=30)
        cb2 = await Control.open(b)
        fresh = await cb2.call("spawn", fn="test:echo")
        deadline = time.monotonic() + 30
        for attempt in itertools.count():
            assert time.monotonic() < deadline, "no cross-node round trip 30 s after the broker came back"
            await ca.call("send", pid=fresh, topic="after", payload=f"after {attempt}")
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await ca.event("echo", timeout=2, where=lambda m, n=attempt: m["payload"] == f"after {n}")
                break
        for n in range(20):
            assert await ca.call("send", pid=fresh, topic="steady", payload=f"s{n}") is True
            assert (await ca.event("echo", timeout=5, where=lambda m, n=n: m["payload"] == f"s{n}"))["sender"] == fresh
        # The 10 sends of the outage: all echoed, in order, or the stream's
        # loss reported (the monitor fired) and counted.
        echoed = [m["payload"] for m in ca.events if m.get("event") == "echo" and m["sender"] == remote_echo]
        lost = [m for m in ca.events if m.get("event") == "@exit" and m["payload"]["pid"] == remote_echo]
        if echoed != list(range(10)):
            assert lost and lost[0]["payload"]["reason"] == "noconnection", (during, echoed, ca.events)
            # Counted where they were lost: the sender or the receiver.
            counted = 0.0
            for node in (a, b):
                counters = await local_metrics(node)
                counted += sum(counters(f"wsrelay_cluster_{name}_total")
                               for name in ("undeliverable", "refused", "stream_resets"))
            assert counted > 0
        await client.close_handshake()
