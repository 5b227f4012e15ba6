"""process.call across nodes (docs/cluster.md, "What crosses nodes"): real
nodes (``wsrelay serve`` children) on a real nats-server, driven by their
control connections (tests/cluster_support.py), as in
tests/test_cluster_core.py. The reply travels as an ordinary send to the
caller's waiter; the callee's end reaches the caller through the waiter's
monitor, and the loss of its node as ``noconnection``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import test_cluster_core as core
from tests.cluster_support import DOWN_AFTER, CallError, controlled_cluster, local_metrics
from tests.wsclient import http_request
from wsrelay.cluster.broker import Broker

pytestmark = pytest.mark.timeout(120)

# The nodes' app: the cluster tests' fixture, used here as it is.
app = core.app


def test_the_call_record() -> None:
    from wsrelay import Pid
    from wsrelay.cluster import codec, wire

    caller, waiter = Pid("app:p", 1, "a"), Pid("app:p", 2, "a")
    record = wire.record_call(7, "h", str(caller), "t", {"x": 1}, str(waiter))
    assert codec.decode(record) == [wire.CALL, 7, "h", str(caller), "t", {"x": 1}, str(waiter)]
    assert wire.CALL not in (wire.SEND, wire.SIGNAL, wire.FRAMES, wire.FRAGMENT)


async def alive(node) -> float:
    return (await local_metrics(node))("wsrelay_processes_alive")


async def test_a_call_and_its_reply_across_nodes(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        replier = await cb.call("spawn", fn="test:replier")
        before = await alive(a)
        assert await ca.call("call", pid=replier, topic="hello", payload={"x": [1, None]}) == \
            ["hello", {"x": [1, None]}, ca.pid]
        # Concurrent calls from one process: each gets its own reply.
        assert await ca.call("call_many", pid=replier, topic="n", count=50) == \
            [["n", i, ca.pid] for i in range(50)]
        # The waiters are gone from the caller's node once their calls are over.
        assert await alive(a) == before
        # The monitor went with each call, on both nodes: the callee's end
        # sends nothing to a, and tells nobody there.
        sent = (await local_metrics(b))("wsrelay_cluster_messages_out_total")
        await cb.call("monitor", pid=replier)
        await cb.call("send", pid=replier, topic="stop")
        await cb.event("@exit")
        # A round trip through b's loop: what its exit would send is out by then.
        await alive(b)
        assert (await local_metrics(b))("wsrelay_cluster_messages_out_total") == sent
        await ca.call("send", pid=ca.pid, topic="marker")
        await ca.event("marker")
        assert not [e for e in ca.events if e.get("event") == "@exit"]


async def test_a_callee_on_another_node_that_ends_gives_its_reason(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        replier = await cb.call("spawn", fn="test:replier")
        with pytest.raises(CallError, match="CallError: .* got no reply: error"):
            await ca.call("call", pid=replier, topic="crash")
        replier = await cb.call("spawn", fn="test:replier")
        with pytest.raises(CallError, match="CallError: .* got no reply: normal"):
            await ca.call("call", pid=replier, topic="stop")
        # Already gone: noproc, from its node's answer to the monitor.
        with pytest.raises(CallError, match="CallError: .* got no reply: noproc"):
            await ca.call("call", pid=replier, topic="t")
        # A node nobody has heard of: noconnection at once.
        nowhere = replier.replace("{b@", "{zz@")
        with pytest.raises(CallError, match="CallError: .* got no reply: noconnection"):
            await ca.call("call", pid=nowhere, topic="t")


async def test_an_async_handlers_call_that_fails_at_once_leaves_its_next_wait_alone(app: Path, broker: Broker) -> None:
    """An ``async def`` handler's call to a PID of an unknown node ends
    before it waits (noconnection); the handler's next wait, on a future,
    is woken by that future and nothing else."""
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        replier = await cb.call("spawn", fn="test:replier")
        nowhere = replier.replace("{b@", "{zz@")
        answer = await http_request(a, f"/ws/call?to={quote(nowhere)}", upgrade=True)
        assert (answer.status, answer.text) == (200, "CallError noconnection; waited")
        answer = await http_request(a, f"/ws/call?to={quote(replier)}", upgrade=True)
        assert answer.status == 200 and answer.text.endswith("; waited") and "'hello'" in answer.text


async def test_a_late_reply_from_another_node_is_dropped_and_counted(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        replier = await cb.call("spawn", fn="test:replier")
        dropped = (await local_metrics(a))("wsrelay_call_replies_dropped_total")
        with pytest.raises(CallError, match="TimeoutError"):
            await ca.call("call", pid=replier, topic="slow", payload=0.5, call_timeout=0.1)
        deadline = time.monotonic() + 10
        while (await local_metrics(a))("wsrelay_call_replies_dropped_total") < dropped + 1:
            assert time.monotonic() < deadline, "the late reply was not counted"
            await asyncio.sleep(0.05)
        # It reached nobody's inbox: the next call gets its own reply.
        assert await ca.call("call", pid=replier, topic="next") == ["next", None, ca.pid]
        assert not [e for e in ca.events if e.get("event") == "@reply"]


async def test_the_callees_node_killed_during_a_call_is_noconnection(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        replier = await cb.call("spawn", fn="test:replier", args=[cb.pid])
        call = asyncio.ensure_future(ca.call("call", timeout=30, call_timeout=30, pid=replier, topic="hold",
                                             payload=1))
        held = await cb.event("held")
        assert held["payload"] == 1
        b.kill()
        killed = time.monotonic()
        with pytest.raises(CallError, match="CallError: .* got no reply: noconnection"):
            await call
        elapsed = time.monotonic() - killed
        assert elapsed < DOWN_AFTER + 1.5, elapsed


async def test_a_request_that_finds_the_mailbox_full_is_dropped_and_counted(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", WSRELAY_MAILBOX_CAPACITY="16") as ((a, ca), (b, cb)):
        sleeper = await cb.call("spawn", fn="test:sleeper")  # reads nothing
        assert await ca.call("send_many", pid=sleeper, topic="fill", count=16) == [True] * 16
        full = (await local_metrics(b))("wsrelay_cluster_dropped_total", reason="mailbox_full")
        # MailboxFull cannot reach a caller on another node: its timeout tells it.
        with pytest.raises(CallError, match="TimeoutError"):
            await ca.call("call", pid=sleeper, topic="t", call_timeout=0.3)
        assert (await local_metrics(b))("wsrelay_cluster_dropped_total", reason="mailbox_full") == full + 1
