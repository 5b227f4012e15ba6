"""The node-to-node transport (wsrelay/cluster/transport.py) on a real
nats-server: transports in this process and in child processes, with a
recording stand-in for the core's hooks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any, AsyncIterator

import nats
import pytest

from tests.cluster_support import DOWN_AFTER, ChildNode, Recorder, last
from wsrelay._core.pid import Pid
from wsrelay.cluster import wire
from wsrelay.cluster.broker import Broker
from wsrelay.cluster.errors import ClusterConnectError
from wsrelay.cluster.transport import COUNTERS, Counters, Transport


@contextlib.asynccontextmanager
async def transports(broker: Broker, *names: str, down_after: float = DOWN_AFTER,
                     **kwargs: Any) -> AsyncIterator[list[tuple[Transport, Recorder]]]:
    """Started transports, each with its recorder, all up with each other."""
    started: list[tuple[Transport, Recorder]] = []
    try:
        for name in names:
            hooks = Recorder()
            t = Transport(name, broker.url, token=broker.token, hooks=hooks, down_after=down_after, **kwargs)
            await t.start()
            started.append((t, hooks))
        for t, hooks in started:
            others = {n for n in names if n != t.node}
            await hooks.wait_for(lambda ev, o=others: o <= {e[1] for e in ev if e[0] == "up"})
        yield started
    finally:
        for t, _ in started:
            await t.stop()


def pid(t: Transport, n: int, host: str = "app:p") -> Pid:
    return Pid(host, (t.incarnation << 32) | n, t.node)


def sends(hooks: Recorder) -> list[Any]:
    return [e[4] for e in hooks.of("send")]


async def test_order_per_pair_over_many_iterations(broker: Broker) -> None:
    async with transports(broker, "a", "b") as [(a, _), (b, hb)]:
        dest, sender = pid(b, 1), pid(a, 1)
        for i in range(5000):
            assert a.send(dest, "t", i, sender)
            if i % 7 == 0:
                assert a.signal(wire.MONITOR, dest, sender, f"m{i}")
            if i % 97 == 0:
                await asyncio.sleep(0)
        await hb.wait_for(lambda ev: len(sends(hb)) == 5000)
        assert sends(hb) == list(range(5000))
        # Signals travel in the same stream: each MONITOR sits right after its send.
        kinds = [(e[0], e[4]) for e in hb.events if e[0] in ("send", "signal")]
        for index, (kind, value) in enumerate(kinds):
            if kind == "signal":
                assert kinds[index - 1] == ("send", int(value[1:]))
        first = hb.of("send")[0]
        assert first[1:4] == (dest.id, dest.host, "t") and first[5] == sender


async def test_one_publish_per_destination_per_iteration(broker: Broker) -> None:
    async with transports(broker, "a", "b", "c") as [(a, _), (b, hb), (c, hc)]:
        await asyncio.sleep(0)
        before = a.counters.batches_out
        for i in range(300):
            assert a.send(pid(b, 1), "t", i, pid(a, 1))
            assert a.send(pid(c, 1), "t", i, pid(a, 1))
        await hb.wait_for(lambda ev: len(sends(hb)) == 300)
        await hc.wait_for(lambda ev: len(sends(hc)) == 300)
        # 600 messages to two nodes in one iteration: two publishes (a
        # heartbeat's keepalive may add an empty batch per peer at most).
        assert 2 <= a.counters.batches_out - before <= 4
        assert a.counters.messages_out >= 600


async def test_frames_and_large_records(broker: Broker) -> None:
    async with transports(broker, "a", "b") as [(a, _), (b, hb)]:
        big = bytes(range(256)) * 12_000  # 3 MB: larger than a NATS message
        assert a.frames("b", [1, 2, 3], b"\x81\x02hi")
        assert a.send(pid(b, 1), "big", big, pid(a, 1))
        assert a.send(pid(b, 1), "after", 1, pid(a, 1))
        await hb.wait_for(lambda ev: len(sends(hb)) == 2)
        assert hb.of("frames") == [("frames", [1, 2, 3], b"\x81\x02hi")]
        assert sends(hb) == [big, 1]
        assert hb.events.index(hb.of("frames")[0]) < hb.events.index(hb.of("send")[0])


async def test_payload_codec_refuses_at_the_call(broker: Broker) -> None:
    async with transports(broker, "a", "b") as [(a, _), (b, hb)]:
        dest, sender = pid(b, 1), pid(a, 1)
        for bad in ({1, 2}, object(), {1: "int key"}, 2 ** 64, [1, {"x": 1j}]):
            with pytest.raises(TypeError, match="cluster codec"):
                a.send(dest, "t", bad, sender)
        # Refused even to a node that does not exist: the payload is checked first.
        with pytest.raises(TypeError):
            a.send(Pid("app:p", 1, "nowhere"), "t", {1, 2}, sender)
        assert a.send(Pid("app:p", 1, "nowhere"), "t", 1, sender) is False
        good = {"n": None, "b": True, "i": -5, "f": 1.5, "s": "é", "y": b"\x00", "l": [1, (2, 3)], "p": sender}
        assert a.send(dest, "t", good, sender)
        await hb.wait_for(lambda ev: sends(hb))
        assert sends(hb) == [{**good, "l": [1, [2, 3]]}]
        assert isinstance(sends(hb)[0]["p"], Pid) and sends(hb)[0]["p"] == sender


async def test_node_down_within_down_after_on_sigkill(broker: Broker) -> None:
    async with transports(broker, "a") as [(a, ha)]:
        child = ChildNode("k1", broker.url, broker.token, DOWN_AFTER)
        try:
            up = await ha.wait_for(last("up", "k1"))
            assert up[2] == child.incarnation
            k1_pid = Pid("app:p", (child.incarnation << 32) | 1, "k1")
            # A PID of k1's run is sent to; one of an earlier run of k1 is dead.
            assert a.send(k1_pid, "t", 1, pid(a, 1))
            assert a.send(Pid("app:p", 1, "k1"), "t", 1, pid(a, 1)) is False
            child.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            down = await ha.wait_for(last("down", "k1"), timeout=DOWN_AFTER * 3)
            elapsed = time.monotonic() - killed
            assert down == ("down", "k1", child.incarnation, "noconnection")
            assert elapsed <= DOWN_AFTER + 0.3, elapsed
            assert a.send(k1_pid, "t", 1, pid(a, 1)) is False
            assert a.peers()["k1"] == "down"
        finally:
            child.kill()


async def test_graceful_stop_is_seen_at_once_after_its_messages(broker: Broker) -> None:
    async with transports(broker, "a") as [(a, ha)]:
        child = ChildNode("g1", broker.url, broker.token, down_after=30.0)
        try:
            await ha.wait_for(last("up", "g1"))
            await child.await_event("up", node="a")
            child.command(op="send", dest=str(pid(a, 1)), sender=f"{{g1@app:p|0x{child.incarnation << 32:05x}}}",
                          count=500)
            child.command(op="stop")
            start = time.monotonic()
            await ha.wait_for(last("down", "g1"), timeout=5)
            assert time.monotonic() - start < 5  # far less than its down_after of 30 s
            assert sends(ha) == list(range(500))
            assert ha.events[-1][0] == "down"
            assert child.proc.wait(10) == 0
        finally:
            child.kill()


async def test_leaving_ends_our_view_of_peers_but_not_their_names(broker: Broker) -> None:
    async with transports(broker, "b") as [(b, hb)]:
        ha = Recorder()
        a = Transport("a", broker.url, token=broker.token, hooks=ha, down_after=DOWN_AFTER)
        await a.start()
        try:
            await ha.wait_for(last("up", "b"))
            await hb.wait_for(last("up", "a"))
            assert await b.register_global("kept", pid(b, 1))
            assert await _until(lambda: a.whereis_global("kept") == pid(b, 1))
        finally:
            await a.stop()
        # a's core hears that b is out of reach, b hears a leave at once.
        assert ha.events[-1] == ("down", "b", b.incarnation, "noconnection")
        await hb.wait_for(last("down", "a"))
        assert a.send(pid(b, 1), "t", 1, pid(a, 1)) is False
        # b's name is b's: a's leaving did not release it.
        nc = await nats.connect(broker.url, token=broker.token)
        try:
            kv = await nc.jetstream().key_value("wsrelay_names")
            keys = await kv.keys()
        finally:
            await nc.close()
        assert len(keys) == 1 and b.whereis_global("kept") == pid(b, 1)


async def test_order_between_processes_and_echo(broker: Broker) -> None:
    async with transports(broker, "a") as [(a, ha)]:
        child = ChildNode("e1", broker.url, broker.token, DOWN_AFTER)
        try:
            await ha.wait_for(last("up", "e1"))
            await child.await_event("up", node="a")
            sender = f"{{e1@app:p|0x{(child.incarnation << 32) | 9:05x}}}"
            child.command(op="send", dest=str(pid(a, 1)), sender=sender, count=20000, per_iteration=500)
            await ha.wait_for(lambda ev: len(sends(ha)) == 20000, timeout=30)
            assert sends(ha) == list(range(20000))
            assert {str(e[5]) for e in ha.of("send")} == {sender}
            child.command(op="echo")
            await asyncio.get_running_loop().run_in_executor(None, child.wait_event, "sent")
            dest = Pid.parse(sender)
            for i in range(1000):
                assert a.send(dest, "back", -i, pid(a, 2))
            await ha.wait_for(lambda ev: len(sends(ha)) == 21000)
            assert sends(ha)[20000:] == [-i for i in range(1000)]
        finally:
            child.kill()


async def test_gap_is_peer_loss_then_a_new_session(broker: Broker) -> None:
    async with transports(broker, "a", "b") as [(a, ha), (b, hb)]:
        nc = await nats.connect(broker.url, token=broker.token)
        try:
            # Watch the stream a -> b as b receives it.
            seen: asyncio.Queue[wire.Header] = asyncio.Queue()

            async def watch(msg: Any) -> None:
                seen.put_nowait(wire.parse_batch(msg.data)[0])

            await nc.subscribe(wire.inbox_subject("b"), cb=watch)
            await nc.flush()
            assert a.send(pid(b, 1), "t", 0, pid(a, 1))
            await hb.wait_for(lambda ev: sends(hb) == [0])
            header = await seen.get()
            # A batch from "a" in its live session, far past the next sequence
            # number, as when the bus lost some: 500 records were in them. Its
            # numbers follow what b has taken in of the session, not the batch
            # watched: under load the watcher was seen to get a's keepalive
            # after the send as its first batch (1 in ~40 runs), whose count
            # already includes the send, and b then counted 502.
            taken = b._peers.by_node["a"]
            forged = wire.batch(header._replace(seq=taken.in_seq + 1000, sent=taken.in_records + 500),
                                [wire.record_send(1, "app:p", str(pid(a, 1)), "t", "forged")])
            await nc.publish(wire.inbox_subject("b"), forged)
            await nc.flush()
        finally:
            await nc.close()
        await hb.wait_for(last("down", "a"))
        # b restarted the session: a saw b lost too, then both came up again.
        await ha.wait_for(lambda ev: [e[0] for e in ev if e[1:2] == ("b",)][-2:] == ["down", "up"])
        await hb.wait_for(lambda ev: [e[0] for e in ev if e[1:2] == ("a",)][-2:] == ["down", "up"])
        assert "forged" not in sends(hb)
        assert b.counters.stream_resets == 1
        assert b.counters.undeliverable == 500 + 1  # those lost, and the forged one, dropped
        assert a.send(pid(b, 1), "t", 1, pid(a, 1))
        await hb.wait_for(lambda ev: sends(hb)[-1:] == [1])
        assert sends(hb) == [0, 1]


async def test_incarnation_change_is_down_then_up(broker: Broker) -> None:
    async with transports(broker, "a") as [(a, ha)]:
        first = ChildNode("r1", broker.url, broker.token, down_after=30.0)
        try:
            await ha.wait_for(last("up", "r1"))
            first.kill()
            # Restarted long before its silence would be noticed (30 s).
            second = ChildNode("r1", broker.url, broker.token, down_after=30.0)
            try:
                assert second.incarnation > first.incarnation
                up = await ha.wait_for(lambda ev: [e for e in ev if e[0] == "up" and e[2] == second.incarnation])
                r1 = [e for e in ha.events if e[1] == "r1"]
                assert r1 == [("up", "r1", first.incarnation), ("down", "r1", first.incarnation, "noconnection"),
                              up[0]]
                assert a.peer_incarnation("r1") == second.incarnation
                # A PID of the old incarnation is addressed to a node that is
                # up again: the core recognises it as dead by its high bits.
                stale = Pid("app:p", (first.incarnation << 32) | 1, "r1")
                assert stale.id >> 32 != a.peer_incarnation("r1")
            finally:
                second.kill()
        finally:
            first.kill()


async def test_malformed_input_is_dropped_counted_and_survived(broker: Broker) -> None:
    async with transports(broker, "a", "b") as [(a, _), (b, hb)]:
        good = wire.batch(wire.Header("a", a.incarnation, "b", b.incarnation, 1, 10**6, 0, 0), [])
        garbage = [
            b"\xc1\xff\x00not msgpack",
            good[:-3],                                            # truncated
            wire.encode([[99, "a", 1, "b", 1, 1, 1, 0, 0]]),        # unknown version
            wire.batch(wire.Header("a", a.incarnation, "zz", b.incarnation, 1, 1, 0, 0), []),  # wrong destination
            wire.encode("a string"),
            wire.batch(wire.Header("a.rpc", 1, "b", b.incarnation, 1, 1, 0, 0), []),  # not a node name
        ]
        nc = await nats.connect(broker.url, token=broker.token)
        try:
            for data in garbage:
                await nc.publish(wire.inbox_subject("b"), data)
            await nc.publish(wire.HEARTBEAT_SUBJECT, b"\x93\x01\x02")
            await nc.publish(wire.HEARTBEAT_SUBJECT, wire.heartbeat("x.*", 1, "m", 1))
            await nc.publish(wire.rpc_subject("b"), b"junk")
            await nc.flush()
        finally:
            await nc.close()
        assert a.send(pid(b, 1), "t", "still here", pid(a, 1))
        await hb.wait_for(lambda ev: sends(hb) == ["still here"])
        assert await _until(lambda: b.counters.malformed >= len(garbage) + 3)
        assert b.counters.malformed == len(garbage) + 3
        assert set(b.peers()) == {"a"}
        assert b.counters.stream_resets == 0 and not hb.of("down")


async def test_malformed_record_in_a_live_session_breaks_the_stream(broker: Broker) -> None:
    async with transports(broker, "b") as [(b, hb)]:
        # A node "f" played by hand: it opens session 1 with b, then sends a
        # batch whose second record is of no known kind.
        sender = str(Pid("app:p", 1, "f"))

        def batch(seq: int, records: list[bytes]) -> bytes:
            return wire.batch(wire.Header("f", 7, "b", b.incarnation, 1, seq, seq - 1, 0), records)

        nc = await nats.connect(broker.url, token=broker.token)
        try:
            await nc.publish(wire.inbox_subject("b"), batch(1, [wire.record_send(1, "app:p", sender, "t", 1)]))
            await nc.publish(wire.inbox_subject("b"), batch(2, [wire.record_send(1, "app:p", sender, "t", 2),
                                                              wire.encode([77, 1])]))
            await nc.publish(wire.inbox_subject("b"), batch(3, [wire.record_send(1, "app:p", sender, "t", 3)]))
            await nc.flush()
        finally:
            await nc.close()
        await hb.wait_for(last("down", "f"))
        assert [e[0] for e in hb.events] == ["up", "send", "send", "down"]
        assert sends(hb) == [1, 2]  # 3 came after the break: dropped with its session
        assert b.counters.malformed == 1 and b.counters.stream_resets == 1
        assert await _until(lambda: b.counters.undeliverable >= 1)
        assert b.peers()["f"] == "joining"


async def test_broker_restart_under_traffic(broker: Broker) -> None:
    async with transports(broker, "a", "b", down_after=2.0) as [(a, _), (b, hb)]:
        dest, sender = pid(b, 1), pid(a, 1)
        sent = 0
        running = True

        async def traffic() -> None:
            nonlocal sent
            while running:
                for _ in range(20):
                    if a.send(dest, "t", sent, sender):
                        sent += 1
                await asyncio.sleep(0.002)

        task = asyncio.ensure_future(traffic())
        await hb.wait_for(lambda ev: len(sends(hb)) > 500)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, broker.stop)
        # While the bus is away the loop keeps running: local work goes on.
        ticks = 0
        start = loop.time()
        while loop.time() - start < 0.5:
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks >= 20
        await loop.run_in_executor(None, broker.start)
        mark = sent
        await hb.wait_for(lambda ev: any(e[4] > mark for e in ev if e[0] == "send"), timeout=20)
        running = False
        await task
        received = sends(hb)
        # Never reordered, and any message lost is accounted for by a loss of
        # the peer between the last one before it and the first one after.
        positions = {id(e): i for i, e in enumerate(hb.events)}
        send_events = hb.of("send")
        for previous, current in zip(send_events, send_events[1:]):
            assert current[4] > previous[4]
            if current[4] != previous[4] + 1:
                between = hb.events[positions[id(previous)]:positions[id(current)]]
                assert ("down", "a", a.incarnation, "noconnection") in between, (previous[4], current[4])
        assert received[-1] > mark
        # Every message accepted by send() arrived, or is counted undeliverable
        # (lost at publish, dropped with its session, or lost on the bus and
        # counted by the receiver from the gap in the records' count).
        await hb.wait_for(lambda ev: a.is_up("b") and b.is_up("a"))
        assert a.send(dest, "t", "last", sender)
        await hb.wait_for(lambda ev: sends(hb)[-1] == "last")
        assert sent + 1 == len(sends(hb)) + a.counters.undeliverable + b.counters.undeliverable, (
            sent, len(sends(hb)), a.counters, b.counters)


async def test_wrong_token_names_the_url_never_the_token(broker: Broker) -> None:
    t = Transport("w", broker.url, token="not-the-token", connect_timeout=10)
    start = time.monotonic()
    with pytest.raises(ClusterConnectError) as info:
        await t.start()
    assert time.monotonic() - start < 5
    assert broker.url in str(info.value) and "not-the-token" not in str(info.value)
    assert broker.token not in str(info.value)


async def test_unreachable_broker(broker: Broker) -> None:
    url = broker.url
    broker.stop()
    t = Transport("w", url, token=broker.token, connect_timeout=1.0)
    with pytest.raises(ClusterConnectError, match=url):
        await t.start()


async def test_global_names(broker: Broker) -> None:
    async with transports(broker, "a", "b") as [(a, _), (b, _)]:
        pa, pb = pid(a, 1), pid(b, 1)
        assert await a.register_global("lobby", pa)
        assert a.whereis_global("lobby") == pa
        assert await b.register_global("lobby", pb) is False
        assert await _until(lambda: b.whereis_global("lobby") == pa)
        assert await a.register_global("lobby", pa)  # the holder again: still True
        assert await a.register_global("odd name/é.", pa)
        assert await _until(lambda: b.whereis_global("odd name/é.") == pa)
        a.release_globals(pa)
        assert a.whereis_global("lobby") is None
        assert await _until(lambda: b.whereis_global("lobby") is None)
        assert await b.register_global("lobby", pb)
        assert await _until(lambda: a.whereis_global("lobby") == pb)
        assert set(b.global_names()) == {"lobby"}


async def test_global_names_of_a_lost_node_are_released(broker: Broker) -> None:
    async with transports(broker, "a") as [(a, ha)]:
        child = ChildNode("n1", broker.url, broker.token, DOWN_AFTER)
        try:
            await ha.wait_for(last("up", "n1"))
            holder = f"{{n1@app:p|0x{(child.incarnation << 32) | 3:05x}}}"
            child.command(op="register", name="leader", pid=holder)
            assert (await child.await_event("registered"))["ok"] is True
            assert await _until(lambda: str(a.whereis_global("leader")) == holder)
            assert await a.register_global("leader", pid(a, 1)) is False
            child.kill()
            await ha.wait_for(last("down", "n1"), timeout=DOWN_AFTER * 3)
            # Its node is known lost: no holder in the view at once, and the
            # key is deleted from the bucket.
            assert a.whereis_global("leader") is None
            assert await _until(lambda: "leader" not in a.global_names())
            assert await a.register_global("leader", pid(a, 1))
        finally:
            child.kill()


async def test_a_dead_holder_unknown_to_us_is_replaced(broker: Broker) -> None:
    async with transports(broker, "a"):
        child = ChildNode("n2", broker.url, broker.token, DOWN_AFTER)
        holder = f"{{n2@app:p|0x{(child.incarnation << 32) | 3:05x}}}"
        child.command(op="register", name="solo", pid=holder)
        assert (await child.await_event("registered"))["ok"] is True
        child.kill()
        child.kill()
    # A node that never heard of n2 probes it before taking the name over.
    async with transports(broker, "b") as [(b, _)]:
        assert await _until(lambda: str(b.whereis_global("solo")) == holder)
        assert await b.register_global("solo", pid(b, 1))


async def test_ping_and_metrics_gathering(broker: Broker) -> None:
    bodies = {"a": b"a_total 1\n", "b": b"b_total 2\n"}
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for name in ("a", "b"):
            hooks = Recorder()
            t = Transport(name, broker.url, token=broker.token, hooks=hooks, down_after=DOWN_AFTER,
                          machine="m1", metrics=lambda n=name: bodies[n])
            await t.start()
            stack.push_async_callback(t.stop)
            started.append((t, hooks))
        (a, ha), (b, hb) = started
        await ha.wait_for(last("up", "b"))
        rtt = await a.ping("b")
        assert rtt is not None and rtt < 1.0
        assert await a.ping("nobody", timeout=0.5) is None
        assert await a.gather_metrics() == bodies
        child = ChildNode("m-other", broker.url, broker.token, DOWN_AFTER)
        try:
            await ha.wait_for(last("up", "m-other"))
            # Another machine's node is not gathered.
            assert set(await a.gather_metrics()) == {"a", "b"}
        finally:
            child.kill()


async def test_metrics_of_a_node_that_does_not_answer_is_none(broker: Broker) -> None:
    async with transports(broker, "a", machine="m2", metrics=lambda: b"x 1\n") as [(a, ha)]:
        child = ChildNode("q1", broker.url, broker.token, down_after=30.0, machine="m2")
        try:
            await ha.wait_for(last("up", "q1"))
            child.proc.send_signal(signal.SIGSTOP)  # alive, silent
            start = time.monotonic()
            assert await a.gather_metrics(timeout=0.3) == {"a": b"x 1\n", "q1": None}
            assert time.monotonic() - start < 1.0
        finally:
            child.proc.send_signal(signal.SIGCONT)
            child.kill()


def test_counters_are_declared_once() -> None:
    assert [name for name, _, _ in COUNTERS] == list(Counters().as_dict())
    assert all(metric.startswith("wsrelay_cluster_") for _, metric, _ in COUNTERS)


async def _until(predicate: Any, timeout: float = 5.0) -> bool:
    """For what changes with no event to wait on (the KV view, updated by a
    watch; counters): polled every 10 ms up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_merged_metrics_label_every_series_with_its_node() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from wsrelay.cluster.metrics import merge_expositions

    body = ("# HELP wsrelay_connections_total WebSocket connections accepted\n"
            "# TYPE wsrelay_connections_total counter\nwsrelay_connections_total {n}\n"
            "# HELP wsrelay_handshake_failures_total Refused upgrade requests\n"
            "# TYPE wsrelay_handshake_failures_total counter\n"
            'wsrelay_handshake_failures_total{{reason="origin"}} {n}\n')
    merged = merge_expositions({"w-0": body.format(n=3).encode(), "w-1": body.format(n=5).encode(), "w-2": None})
    families = {f.name: f for f in text_string_to_metric_families(merged.decode())}
    assert {(s.labels["node"], s.value) for s in families["wsrelay_connections"].samples} == {("w-0", 3), ("w-1", 5)}
    assert {(s.labels["node"], s.labels["reason"]) for s in families["wsrelay_handshake_failures"].samples} == {
        ("w-0", "origin"), ("w-1", "origin")}
    assert {(s.labels["node"], s.value) for s in families["wsrelay_cluster_node_up"].samples} == {
        ("w-0", 1), ("w-1", 1), ("w-2", 0)}
    assert merged.count(b"# TYPE wsrelay_connections_total counter") == 1
