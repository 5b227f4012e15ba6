"""A relay connection's life seen from inside the gateway's own process:
a connection paused because its target is stuck (what the target finds in
its mailbox when it wakes up, a transfer, a stall, a vanished client), and
the ways a connection ends (its target exits or returns before the upgrade,
terminate(connection, reason), the sweep that pings and times out).
docs/guide.md section 3, "When the target falls behind", and section 4,
"Connections are processes"."""

from __future__ import annotations

import asyncio
import logging

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running, until
from tests.procs import relay_to
from tests.wsclient import RawWebSocket
from wsrelay import process
from wsrelay.http import register_middleware
from wsrelay.relay import WebSocketRelay

PATH = "/ws/chat"


def capacity() -> int:
    return wsrelay.node().mailbox_capacity


def counters():
    return wsrelay.node().counters


async def gated_client(gw, name="target"):
    """The gateway's one client, relayed to a relay:gated target; (ws, client
    pid, target pid)."""
    ws = await RawWebSocket.connect(gw, PATH)
    got, target = await expect("ready")
    assert got == name
    (conn,) = gw.services["test:gateway"].relay.connections
    return ws, conn.pid, target


async def fill_and_pause(ws, extra: int) -> int:
    """Send enough messages to fill the target's mailbox (its ws.join takes a
    slot) and ``extra`` more, and wait for the connection to pause; the
    number sent."""
    pauses = counters().relay_backpressure_pauses
    count = capacity() - 1 + extra
    for n in range(count):
        ws.send_text(str(n))
    await ws.drain()
    await until(lambda: counters().relay_backpressure_pauses > pauses, what="the connection pausing")
    return count


def gated_app(gate, name="target"):
    return relay_app(relay_handler("relay:gated", process.self(), gate, name))


# -- a paused connection -------------------------------------------------------------------------


async def test_a_target_that_exits_while_its_connection_is_paused_closes_at_once():
    """The paused connection reads again, so the client's answer to the close
    frame is heard and the socket does not wait out the close timeout. Held
    client messages are counted as dropped."""
    gate = asyncio.Event()
    async with running(gated_app(gate), close_timeout=30) as gw:
        ws, client, target = await gated_client(gw)
        dropped = counters().client_messages_dropped_target_gone
        sent = await fill_and_pause(ws, extra=40)
        process.monitor(client)
        process.terminate(target)
        close = await ws.answer_close(timeout=5)  # well within the 30 s close timeout
        assert close.close_code == 1011
        exit_event = await expect(wsrelay.EXIT)
        assert exit_event["reason"] == "target_exited"
        # ws.join and capacity - 1 messages went in; the rest had nowhere to go.
        assert counters().client_messages_dropped_target_gone - dropped == sent - (capacity() - 1)


async def test_a_transfer_while_paused_moves_the_wait_to_the_new_target():
    """The held messages go to the new target, and the wait for room is
    withdrawn from the old one: were it left there, the old target making
    room later would clear the pause without the connection reading again
    (a deaf connection)."""
    gate_a, gate_b = asyncio.Event(), asyncio.Event()
    async with running(gated_app(gate_a, "A")) as gw:
        ws, client, a = await gated_client(gw, "A")
        b = process.spawn("relay:gated", None, process.self(), gate_b, "B")
        assert await expect("ready") == ("B", b)
        sent = await fill_and_pause(ws, extra=50)
        assert process.send(client, "ws.control", {"target_pid": str(b)}) is True
        ws.send_text("after")
        gate_a.set()
        assert await expect("backlog") == ("A", capacity() + 1)  # ws.join, capacity - 1 messages, ws.leave
        seen_a = await expect("A")
        gate_b.set()
        await expect("backlog")
        await ws.close_handshake()
        seen_b = await expect("B")
        assert seen_a[0] == ("ws.join", None) and seen_a[-1] == ("ws.leave", "transferred")
        assert seen_b[0] == ("ws.join", None) and seen_b[-1] == ("ws.leave", "client_closed")
        data = [d for topic, d in seen_a + seen_b if topic == "ws.message"]
        assert data == [str(n) for n in range(sent)] + ["after"]
        process.send(a, "exit")


async def test_a_stalled_connection_tells_its_target_why_it_left():
    gate = asyncio.Event()
    async with running(gated_app(gate), stall_timeout=0.3) as gw:
        ws, client, target = await gated_client(gw)
        await fill_and_pause(ws, extra=5)
        close = await ws.answer_close(timeout=10)
        assert (close.close_code, close.close_reason) == (1013, b"target stalled")
        gate.set()
        await expect("backlog")
        seen = await expect("target")
        assert seen[-1] == ("ws.leave", "target_stalled")
        assert [d for t, d in seen if t == "ws.message"] == [str(n) for n in range(capacity() - 1)]


async def test_a_target_that_never_reads_grows_by_at_most_one_event_per_peer_that_left():
    """ws.leave, EXIT and LINK_DOWN pass the mailbox bound, one per
    connection or monitor (docs/guide.md section 9, "A full mailbox").
    1,500 clients of one stuck target come and go: its mailbox holds its
    capacity and a ws.leave for each client that got a ws.join, nothing for
    the others (not a ws.join and a ws.leave each)."""
    gate = asyncio.Event()
    target = process.spawn("relay:gated", None, process.self(), gate)
    await expect("ready")

    def handler(req, res):
        relay_to(res, target)

    async with running(relay_app(handler), stall_timeout=0.3) as gw:
        for _ in range(1500):
            ws = await RawWebSocket.connect(gw, PATH)
            ws.send_text("hello")
            await ws.drain()
            ws.abort()
        await until(lambda: gw.connection_count() == 0, timeout=60, what="the churned connections ending")
        gate.set()
        _, backlog = await expect("backlog")
        # capacity() messages (ws.join and client messages), plus one
        # ws.leave per connection that had its ws.join.
        assert backlog <= 2 * capacity(), backlog
        process.terminate(target)


async def test_the_sweep_notices_a_vanished_client_of_a_paused_connection():
    """Pings go on while a connection is paused: a client that vanished is
    noticed by the ping timeout at the latest, even with no stall timeout."""
    gate = asyncio.Event()
    async with running(gated_app(gate), stall_timeout=0, ping_interval=0.3, ping_timeout=0.3) as gw:
        ws, client, target = await gated_client(gw)
        await fill_and_pause(ws, extra=3)
        process.monitor(client)
        ws.abort()
        exit_event = await expect(wsrelay.EXIT, timeout=10)
        assert exit_event["pid"] == client and exit_event["reason"] in ("connection_lost", "timeout")
        gate.set()
        await expect("backlog")
        process.terminate(target)


# -- how a connection ends -----------------------------------------------------------------------


async def test_terminating_a_connection_ends_it_at_once_with_that_reason():
    """Monitors see the reason given, not ``server_closed``, and the process
    does not live on until the client answers the close (or the close
    timeout)."""
    async with running(relay_app(relay_handler("relay:recorder", process.self())), close_timeout=30) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        client = (await expect("target"))[1]["client_pid"]
        process.monitor(client)
        assert process.terminate(client, "kicked") is True
        assert not process.is_alive(client)
        assert (await expect(wsrelay.EXIT))["reason"] == "kicked"
        topic, leave, _ = await expect("target")
        assert (topic, leave["reason"], leave["code"]) == ("ws.leave", "server_closed", 1000)
        assert (await ws.answer_close()).close_code == 1000


class _EndingRelay(WebSocketRelay):
    """The relay middleware, extended by an application whose target is done
    as soon as the relay is set up (it ends normally before the upgrade)."""

    def after(self, req, res):
        listener = super().after(req, res)
        if listener is not None:
            process.terminate(req.header("X-Target"), "normal")
        return listener


register_middleware("test_ending_relay", _EndingRelay)


async def test_a_target_that_returned_before_the_upgrade_closes_with_1000():
    """1000 for a normal exit, not 1011 as if it had failed (docs/guide.md
    section 3, "Close codes")."""
    app = wsrelay.App("test")
    app.service("gateway", "127.0.0.1:0")
    router = app.router("ws", "gateway", "/ws", post_middleware=["test_ending_relay"])

    def handler(req, res):
        pid = process.spawn("test:sleeper")
        req.headers["X-Target"] = str(pid)
        res.header("X-WS-Relay", f'{{"target_pid": "{pid}"}}')

    router.endpoint("GET", "/chat", handler)
    async with running(app) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        close = await ws.answer_close()
        assert close.close_code == 1000, close


async def test_the_sweep_goes_on_after_an_error(caplog):
    """An exception must not end the sweeper task for good, or no connection
    would be pinged again. Here the sweep meets something that is not a
    connection (the only way to make it fail from outside)."""
    caplog.set_level(logging.ERROR, logger="wsrelay.runtime")
    async with running(relay_app(relay_handler("relay:recorder", process.self())), ping_interval=0.2,
                       ping_timeout=0.2) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        _, target = await expect("ready")
        process.monitor(target)
        relay = gw.services["test:gateway"].relay
        errors = counters().runtime_errors
        intruder = object()
        relay.connections.add(intruder)
        try:
            for _ in range(3):  # a ping, answered, and the next one: the sweep still runs
                frame = await ws.recv_frame(timeout=10)
                assert frame.opcode == 0x9, frame
                ws.send_pong(frame.payload)
        finally:
            relay.connections.discard(intruder)
        assert counters().runtime_errors > errors
        assert any("runtime error while sweeping" in r.getMessage() for r in caplog.records)
        await ws.close_handshake()
        while (await process.inbox().receive(timeout=10)).topic != wsrelay.EXIT:
            pass  # what the recorder saw: not what this test is about
