"""One test per defect the read of the old connection core found (issue "The
connection core, rebuilt"), each failing on the old core, and the SPEC §6
behaviours that are best seen from inside the gateway's own process: what a
stuck target finds in its mailbox when it wakes up."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest
import uvloop

import wsrelay
from tests import procs, relay_procs  # noqa: F401  (process functions)
from tests.harness import WSRELAY, ServerProcess
from tests.support import expect, relay_app, relay_handler, running, scrape, until
from tests.wsclient import RawWebSocket
from wsrelay import process
from wsrelay.http import register_middleware
from wsrelay.relay import WebSocketRelay

PATH = "/ws/chat"
REPO = Path(__file__).resolve().parent.parent


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


# -- 1. a target that exits while its connection is paused --------------------------------------


async def test_1_a_target_that_exits_while_its_connection_is_paused_closes_at_once():
    """Before: the paused connection never read again, so the client's answer
    to the close frame went unheard and the socket waited out the close
    timeout. Held client messages are counted as dropped (defect 7)."""
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


# -- 2. a transfer withdraws the room waiter from the old target ---------------------------------


async def test_2_a_transfer_while_paused_moves_the_wait_to_the_new_target():
    """Before: the held messages were forced into the old target, and when it
    later made room its waiter ran against the new target, clearing the pause
    without reading again: the connection went deaf."""
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


# -- 3. the exit cascade goes on past a failing signal --------------------------------------------


@wsrelay.register("reg:waiting")
async def _waiting(target) -> None:
    process.monitor(target)
    await process.inbox().receive()


def test_3_an_error_while_signalling_one_monitor_does_not_stop_the_cascade(caplog):
    """A monitor whose loop was closed under it cannot be woken (its loop
    refuses the callback). Before: that error ended the exit cascade, so the
    monitors and links after it never heard of the exit. Now it is logged,
    counted, and the cascade goes on."""
    caplog.set_level(logging.ERROR, logger="wsrelay.runtime")
    main, doomed = uvloop.new_event_loop(), uvloop.new_event_loop()
    errors = counters().runtime_errors

    async def start():
        target = process.spawn("test:sleeper")
        linked = process.spawn("test:link_sleeper", None, process.self(), target)
        assert await expect("ready") == linked
        watcher = process.spawn("reg:waiting", None, target)
        await asyncio.sleep(0)  # it starts and monitors
        process.monitor(target)
        return target, linked, watcher

    async def orphan(target):
        pid = process.spawn("reg:waiting", None, target)
        await asyncio.sleep(0)  # it monitors the target and waits on this loop
        return pid

    async def end(target, linked, watcher):
        process.monitor(linked)
        process.monitor(watcher)
        process.terminate(target, "ended")
        events = {}
        for _ in range(3):
            msg = await process.inbox().receive(timeout=5)
            events[msg.payload["pid"]] = msg.payload["reason"]
        return events

    try:
        target, linked, watcher = main.run_until_complete(start())
        stranded = doomed.run_until_complete(orphan(target))
        doomed.close()
        events = main.run_until_complete(end(target, linked, watcher))
        # The test's own monitor, the watcher's (it got EXIT and returned)
        # and the link (it killed the linked process) all went through.
        assert events == {target: "ended", linked: "ended", watcher: "normal"}
        assert counters().runtime_errors - errors == 1
        assert any("runtime error while telling" in r.getMessage() for r in caplog.records)
    finally:
        async def strand_ends():
            process.terminate(stranded)
            assert not process.is_alive(stranded)

        main.run_until_complete(strand_ends())
        main.run_until_complete(main.shutdown_asyncgens())
        main.close()


# -- 4. terminate(connection, reason) ------------------------------------------------------------


async def test_4_terminating_a_connection_ends_it_at_once_with_that_reason():
    """Before: monitors saw ``server_closed``, and the process lived until
    the client answered the close (or the close timeout)."""
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


# -- 5. a target that ended normally before the connection was attached -------------------------


class _EndingRelay(WebSocketRelay):
    """The relay middleware, extended by an application whose target is done
    as soon as the relay is set up (it ends normally before the upgrade)."""

    def after(self, req, res):
        listener = super().after(req, res)
        if listener is not None:
            process.terminate(req.header("X-Target"), "normal")
        return listener


register_middleware("test_ending_relay", _EndingRelay)


async def test_5_a_target_that_returned_before_the_upgrade_closes_with_1000():
    """Before: 1011, as if it had failed (SPEC §4.5: 1000 for a normal exit)."""
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


# -- 6. frames waiting for the flush count toward the write-buffer limit -------------------------


async def test_6_frames_queued_for_the_flush_count_toward_the_write_buffer_limit():
    """Before: only the transport's buffer counted, so a process could queue
    any amount in one loop iteration."""
    async with running(relay_app(relay_handler("relay:recorder", process.self())),
                       write_buffer_limit=64 << 10) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        client = (await expect("target"))[1]["client_pid"]
        slow = counters().frames_dropped_slow_consumer
        results = [process.send(client, "ws.send", {"type": "binary", "data": bytes(4096)}) for _ in range(100)]
        # Queued until more than the limit waited, then refused.
        assert results.index(False) <= (64 << 10) // 4096 + 1
        assert not any(results[results.index(False):])
        assert counters().frames_dropped_slow_consumer - slow == 1
        frames, close = await ws.recv_until_close()
        assert close is not None and close.close_code == 1008
        assert len(frames) == results.index(False)


# -- 7. drops counted, refusals logged without a flood ------------------------------------------


async def test_7_refused_sends_are_counted_each_and_logged_at_most_once_a_second(caplog):
    """Before: a WARNING for every refused send."""
    caplog.set_level(logging.WARNING, logger="wsrelay.runtime")
    sleeper = process.spawn("test:sleeper")
    for n in range(capacity()):
        process.send(sleeper, "fill", n)
    refused = counters().mailbox_full
    for n in range(1000):
        with pytest.raises(wsrelay.MailboxFull):
            process.send(sleeper, "more", n)
    assert counters().mailbox_full - refused == 1000
    lines = [r for r in caplog.records if "is full" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    process.terminate(sleeper)


# -- 8. the sweep survives an error ------------------------------------------------------------


async def test_8_the_sweep_goes_on_after_an_error(caplog):
    """Before: any exception ended the sweeper task for good, and no
    connection was pinged again. Here the sweep meets something that is not
    a connection (the only way to make it fail from outside)."""
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


# -- 9. counters never go down; drops by reason -------------------------------------------------


def test_9_no_counter_is_ever_decremented():
    """Prometheus counters must never go down: the core only ever adds to
    them (before, flushing to a gone connection took back what was counted)."""
    sources = (REPO / "wsrelay" / "_core").glob("*.pyx")
    decrements = [f"{path.name}: {line.strip()}" for path in sources for line in path.read_text().splitlines()
                  if re.search(r"counters\.\w+\s*-=", line)]
    assert decrements == []


async def test_9_dropped_frames_are_reported_by_reason():
    async with running(relay_app(relay_handler("test:sleeper"))) as gw:
        metrics = await scrape(gw)
        for reason in ("closing", "slow_consumer", "unwritten"):
            assert ("wsrelay_frames_dropped_total", (("reason", reason),)) in metrics.samples
        for reason in ("target_gone", "closing", "connection_lost"):
            assert ("wsrelay_client_messages_dropped_total", (("reason", reason),)) in metrics.samples
        assert not metrics.has("wsrelay_sends_after_close_total")


# -- 10. one parser for the relay settings -------------------------------------------------------


async def test_10_ws_control_takes_what_the_header_takes():
    """Before: ``metadata: null`` was {} in X-WS-Relay and a ValueError in
    ws.control."""
    app = relay_app(relay_handler("relay:recorder", process.self(), metadata=None))
    async with running(app) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        join = (await expect("target"))[1]
        assert join["metadata"] == {}
        client = join["client_pid"]
        assert process.send(client, "ws.control", {"metadata": {"room": 1}}) is True
        assert process.send(client, "ws.control", {"metadata": None}) is True
        ws.send_text("hi")
        assert (await expect("target"))[1]["metadata"] == {}
        await ws.close_handshake()


# -- 11. a router on the root --------------------------------------------------------------------


@pytest.mark.parametrize("prefix, path", [("/", "/chat"), ("", "/chat"), ("/ws/", "/ws/chat")])
async def test_11_a_router_prefix_of_slash_is_the_root(prefix, path):
    app = wsrelay.App("test")
    app.service("gateway", "127.0.0.1:0")
    router = app.router("root", "gateway", prefix, post_middleware=["websocket_relay"])
    router.endpoint("GET", "/chat", relay_handler("relay:recorder", process.self()))
    async with running(app) as gw:
        ws = await RawWebSocket.connect(gw, path)
        await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        await ws.close_handshake()


# -- 12. an unknown WSRELAY_* variable is named at start -----------------------------------------


def test_12_a_misspelt_variable_is_named_with_the_closest_known_one(tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text('version: "1.0"\nnamespace: t\nentries:\n  - {name: gw, kind: http.service, addr: ":0"}\n')
    with ServerProcess([WSRELAY, "check", app], env={"WSRELAY_MAX_CONECTIONS": "5"}, ready=None) as checked:
        assert checked.wait() == 0
    warning = "unknown environment variable WSRELAY_MAX_CONECTIONS is ignored; did you mean WSRELAY_MAX_CONNECTIONS?"
    assert any(warning in line for line in checked.stderr), checked.output()


# -- SPEC §6 from inside ---------------------------------------------------------------------------


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
    """SPEC §6: ws.leave, EXIT and LINK_DOWN pass the mailbox bound, one per
    connection or monitor. 1,500 clients of one stuck target come and go:
    its mailbox holds its capacity and a ws.leave for each client that got a
    ws.join, nothing for the others (before: a ws.join and a ws.leave each)."""
    gate = asyncio.Event()
    target = process.spawn("relay:gated", None, process.self(), gate)
    await expect("ready")

    def handler(req, res):
        res.header("X-WS-Relay", json.dumps({"target_pid": str(target)}))

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
