"""The core's side of the cluster (wsrelay._core.remote) through its declared
seam, without NATS: a FakeTransport records what the core sends, and the
tests play the other nodes by calling the Cluster's hooks."""

from __future__ import annotations

import asyncio

import pytest

import wsrelay
from tests import procs
from tests.fake_transport import FakeTransport, joined_node
from tests.harness import until
from wsrelay import EXIT, LINK_DOWN, Group, Pid, node, process
from wsrelay._core.signals import Signal
from wsrelay._core.vocab import NOCONNECTION, NOPROC, REPLY

# A process of node "b", which is up in its incarnation 7.
REMOTE = Pid("app", (7 << 32) | 5, "b")


def _fake() -> FakeTransport:
    return FakeTransport(up={"b": 7, "c": 3})


async def _event(topic: str):
    msg = await process.inbox().receive(timeout=5)
    assert msg.topic == topic, msg
    return msg.payload


async def test_a_send_to_a_remote_pid_reaches_the_transport() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        assert process.send(REMOTE, "hello", 1) is True
        assert process.send(str(REMOTE), "again", [2]) is True
        me = process.self()
        assert fake.sent == [(REMOTE, "hello", 1, me), (REMOTE, "again", [2], me)]


async def test_a_send_to_a_node_that_is_down_is_counted_unreachable() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        assert process.send(Pid("app", 5, "z"), "hello") is False
        assert fake.sent == []
        assert node().counters.cluster_dropped_unreachable == 1


async def test_monitor_and_link_of_a_remote_pid_signal_its_node() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        me = process.self()
        process.monitor(REMOTE)
        process.unmonitor(REMOTE)
        process.link(REMOTE)
        process.unlink(REMOTE)
        assert fake.signals == [(Signal.MONITOR, REMOTE, me, None), (Signal.DEMONITOR, REMOTE, me, None),
                                (Signal.LINK, REMOTE, me, None), (Signal.UNLINK, REMOTE, me, None)]
        assert all(type(kind) is int for kind, *_ in fake.signals)


async def test_an_exit_signal_fires_the_local_monitor_once() -> None:
    with joined_node(transport=_fake()) as (cluster, _):
        me = process.self()
        process.monitor(REMOTE)
        cluster.on_signal(Signal.EXIT, me, REMOTE, "boom")
        event = await _event(EXIT)
        assert (event["pid"], event["reason"]) == (REMOTE, "boom")
        cluster.on_signal(Signal.EXIT, me, REMOTE, "again")
        assert process.inbox().receive_nowait() is None


async def test_a_link_exit_signal_reaches_a_process_that_traps_exits() -> None:
    with joined_node(transport=_fake()) as (cluster, _):
        me = process.self()  # the system process, which traps exits
        process.link(REMOTE)
        cluster.on_signal(Signal.LINK_EXIT, me, REMOTE, "boom")
        event = await _event(LINK_DOWN)
        assert (event["pid"], event["reason"]) == (REMOTE, "boom")


async def test_a_node_reported_down_fires_its_monitors_and_links_with_noconnection() -> None:
    with joined_node(transport=_fake()) as (cluster, _):
        process.monitor(REMOTE)
        process.link(REMOTE)
        cluster.on_node_down("b", 7, NOCONNECTION)
        events = {}
        for _ in range(2):
            msg = await process.inbox().receive(timeout=5)
            events[msg.topic] = msg.payload
        assert events[EXIT]["reason"] == events[LINK_DOWN]["reason"] == NOCONNECTION
        assert events[EXIT]["pid"] == REMOTE
        assert node().counters.cluster_node_losses == 1


async def test_a_monitor_of_a_pid_on_a_node_not_up_fires_at_once() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        stranger = Pid("app", 5, "z")
        process.monitor(stranger)
        event = await _event(EXIT)
        assert (event["pid"], event["reason"]) == (stranger, NOCONNECTION)
        assert fake.signals == []


async def test_a_monitor_from_another_node_of_a_dead_pid_is_answered_noproc() -> None:
    with joined_node(transport=_fake()) as (cluster, fake):
        gone = Pid("local", 12345, "a")
        cluster.on_signal(Signal.MONITOR, gone, REMOTE, None)
        cluster.on_signal(Signal.LINK, gone, REMOTE, None)
        assert fake.signals == [(Signal.EXIT, REMOTE, gone, NOPROC), (Signal.LINK_EXIT, REMOTE, gone, NOPROC)]


async def test_a_send_from_another_node_reaches_the_local_process() -> None:
    with joined_node(transport=_fake()) as (cluster, _):
        me = process.self()
        cluster.on_send(me.id, me.host, "hello", {"n": 1}, REMOTE)
        msg = await process.inbox().receive(timeout=5)
        assert (msg.topic, msg.payload, msg.sender) == ("hello", {"n": 1}, REMOTE)


async def test_a_call_to_a_remote_pid_reaches_the_transport_as_a_call() -> None:
    with joined_node(transport=_fake()) as (cluster, fake):
        me = process.self()
        call = asyncio.ensure_future(process.call(REMOTE, "get", {"k": 1}))
        await until(lambda: fake.calls, 5, "the call's request")
        [(dest, topic, payload, sender, waiter)] = fake.calls
        assert (dest, topic, payload, sender) == (REMOTE, "get", {"k": 1}, me)
        # The request carries the monitor, and the reply from the callee's
        # node takes it down: no MONITOR, no DEMONITOR.
        cluster.on_send(waiter.id, waiter.host, REPLY, "blue", REMOTE)
        assert await call == "blue"
        assert fake.signals == [] and fake.sent == []


async def test_a_remote_call_that_times_out_tells_the_callees_node_to_demonitor() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        with pytest.raises(TimeoutError):
            await process.call(REMOTE, "get", None, timeout=0.01)
        [(_, _, _, _, waiter)] = fake.calls
        assert fake.signals == [(Signal.DEMONITOR, REMOTE, waiter, None)]


async def test_a_call_from_another_node_is_answered_through_the_transport() -> None:
    with joined_node(transport=_fake()) as (cluster, fake):
        # (The joined node is fresh: nothing is registered on it yet.)
        wsrelay.register("test:call_server")(procs.call_server)
        srv = process.spawn("test:call_server")
        caller, waiter = Pid("app", (7 << 32) | 1, "b"), Pid("app", (7 << 32) | 2, "b")
        cluster.on_call(srv.id, srv.host, "q", 1, caller, waiter)
        await until(lambda: fake.sent, 5, "the reply")
        assert fake.sent == [(waiter, REPLY, ("q", 1), srv)]
        # The monitor its request set up went with the reply: the callee's
        # end tells node b nothing.
        process.monitor(srv)
        process.terminate(srv, "done")
        await _event(EXIT)
        assert fake.signals == []
        # A request for a process that is gone is answered noproc at once.
        cluster.on_call(srv.id, srv.host, "q", 2, caller, waiter)
        assert fake.signals == [(Signal.EXIT, waiter, srv, NOPROC)]


async def test_a_group_send_to_remote_members_ships_one_frame_per_node() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        me = process.self()
        members = [Pid("svc", (7 << 32) | 1, "b"), Pid("svc", (7 << 32) | 2, "b"), Pid("svc", (3 << 32) | 9, "c")]
        group = Group()
        assert all(group.add(pid) for pid in members)
        # The node watches each member, to take it out when it ends.
        assert fake.signals == [(Signal.MONITOR, pid, me, None) for pid in members]
        assert group.send({"type": "text", "data": "hi"}) == 3
        assert [(node, ids) for node, ids, _ in fake.frames_sent] == [
            ("b", [members[0].id, members[1].id]), ("c", [members[2].id])]
        frames = {frame for _, _, frame in fake.frames_sent}
        assert len(frames) == 1 and frames.pop().endswith(b"hi")
        assert group.discard(members[0]) is True
        assert len(group) == 2


async def test_global_names_go_through_the_transport() -> None:
    with joined_node(transport=_fake()) as (_, fake):
        me = process.self()
        assert await process.register_global("svc") is True
        assert fake.names == {"svc": me}
        assert process.whereis_global("svc") == me
        assert await process.register_global("svc", REMOTE) is False


async def test_each_drop_is_counted_under_its_reason() -> None:
    with joined_node(transport=_fake()) as (cluster, _):
        counters = node().counters
        cluster.on_send(12345, "local", "hello", None, REMOTE)  # nobody of that id here
        cluster.on_signal(Signal.KILL, node().system.pid, REMOTE, "bye")  # the system process is not killed
        cluster.on_frames([12345], b"\x81\x02hi")  # no such connection
        assert process.send(Pid("app", 5, "z"), "hello") is False  # node z is not up
        assert (counters.cluster_dropped_noproc, counters.cluster_dropped_rejected,
                counters.cluster_dropped_unreachable, counters.cluster_dropped_mailbox_full) == (2, 1, 1, 0)
