"""GET /health and GET /metrics (docs/configuration.md, "Health and metrics") (Prometheus text format, parsed with
prometheus_client's own parser) on every service, and the numbers move as
traffic flows."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import websockets

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import REPO, expect, running, scrape
from tests.wsclient import HandshakeRefused, RawWebSocket, http_request
from wsrelay import process

FAMILIES = {
    "wsrelay_connections": "counter",
    "wsrelay_connections_closed": "counter",
    "wsrelay_connections_open": "gauge",
    "wsrelay_messages_in": "counter",
    "wsrelay_bytes_in": "counter",
    "wsrelay_messages_out": "counter",
    "wsrelay_bytes_out": "counter",
    "wsrelay_handshake_failures": "counter",
    "wsrelay_mailbox_full": "counter",
    "wsrelay_relay_backpressure_pauses": "counter",
    "wsrelay_slow_consumer_closes": "counter",
    "wsrelay_processes_alive": "gauge",
}


async def test_health():
    async with running(relay_app(relay_handler("relay:echo", process.self()))) as gw:
        res = await http_request(gw, "/health")
        assert res.status == 200
        assert res.headers["content-type"] == "application/json"
        idle = json.loads(res.body)
        assert idle["status"] == "ok" and idle["connections"] == 0
        async with websockets.connect(gw.url("/ws/chat")):
            await expect("ws.join")
            res = await http_request(gw, "/health")
            busy = json.loads(res.body)
            assert res.status == 200 and busy["connections"] == 1
            assert busy["processes"] == idle["processes"] + 2  # the connection and its target
        await expect("ws.leave")
        # /health and /metrics answer on any path prefix configuration, without a router.
        assert (await http_request(gw, "/metrics")).status == 200


async def test_metrics_move_with_traffic():
    app = relay_app(relay_handler("relay:echo", process.self()), origins="https://ok.example")
    async with running(app, max_message_size=4096) as gw:
        m0 = await scrape(gw)
        for family, kind in FAMILIES.items():
            assert m0.families.get(family) == kind, (family, m0.families.get(family))

        # One connection, some text and binary traffic, echoed back.
        texts = ["a", "hello", "z" * 1000]  # ASCII: see the next test for the rest
        blobs = [b"\x00" * 100, b"\xff" * 3000]
        async with websockets.connect(gw.url("/ws/chat"), origin="https://ok.example") as ws:
            await expect("ws.join")
            m1 = await scrape(gw)
            assert m1("wsrelay_connections_total") == m0("wsrelay_connections_total") + 1
            assert m1("wsrelay_connections_open") == m0("wsrelay_connections_open") + 1
            assert m1("wsrelay_processes_alive") == m0("wsrelay_processes_alive") + 2
            for item in texts + blobs:
                await ws.send(item)
                assert await asyncio.wait_for(ws.recv(), 10) == item
            m2 = await scrape(gw)
        await expect("ws.leave")
        size = sum(len(t.encode()) for t in texts) + sum(len(b) for b in blobs)
        n = len(texts) + len(blobs)
        assert m2("wsrelay_messages_in_total") - m1("wsrelay_messages_in_total") == n
        assert m2("wsrelay_bytes_in_total") - m1("wsrelay_bytes_in_total") == size
        assert m2("wsrelay_messages_out_total") - m1("wsrelay_messages_out_total") == n
        assert m2("wsrelay_bytes_out_total") - m1("wsrelay_bytes_out_total") == size

        # Refused upgrades, counted by reason.
        with pytest.raises(HandshakeRefused) as refused:
            await RawWebSocket.connect(gw, "/ws/chat", {"Origin": "https://evil.example"})
        assert refused.value.response.status == 403
        assert (await http_request(gw, "/ws/chat")).status == 426  # not an upgrade

        # A message over WSRELAY_MAX_MESSAGE_SIZE: closed with 1009, counted as closed.
        async with websockets.connect(gw.url("/ws/chat"), origin="https://ok.example") as ws:
            await expect("ws.join")
            await ws.send("x" * 5000)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009
        leave = await expect("ws.leave")
        assert leave["reason"] == "message_too_big"

        # A send refused at a full mailbox.
        victim = process.spawn("test:sleeper")
        flooder = process.spawn_monitored("test:mailbox_flooder", None, process.self(), victim)
        capacity = await expect("full")
        exit_event = await expect(wsrelay.EXIT)
        assert exit_event["pid"] == flooder and isinstance(exit_event["error"], wsrelay.MailboxFull)
        m3 = await scrape(gw)
        assert capacity == wsrelay.node().mailbox_capacity
        process.terminate(victim)

    assert m3("wsrelay_handshake_failures_total", reason="origin") - \
        m2("wsrelay_handshake_failures_total", reason="origin") == 1
    assert m3("wsrelay_handshake_failures_total", reason="bad_upgrade") - \
        m2("wsrelay_handshake_failures_total", reason="bad_upgrade") == 1
    assert m3("wsrelay_connections_closed_total") - m0("wsrelay_connections_closed_total") == 2
    assert m3("wsrelay_connections_open") == m0("wsrelay_connections_open")
    assert m3("wsrelay_mailbox_full_total") - m2("wsrelay_mailbox_full_total") == 1
    # The victim (still alive when scraped) is the only process left over.
    assert m3("wsrelay_processes_alive") == m0("wsrelay_processes_alive") + 1


async def test_bytes_in_counts_utf8_bytes_of_text_messages():
    """wsrelay_bytes_in_total is in bytes, as wsrelay_bytes_out_total is: a
    text message of 10 'ü' is 20 bytes on the wire, both ways."""
    async with running(relay_app(relay_handler("relay:echo", process.self()))) as gw:
        async with websockets.connect(gw.url("/ws/chat")) as ws:
            await expect("ws.join")
            m1 = await scrape(gw)
            await ws.send("ü" * 10)
            assert await asyncio.wait_for(ws.recv(), 10) == "ü" * 10
            m2 = await scrape(gw)
        await expect("ws.leave")
    assert m2("wsrelay_bytes_out_total") - m1("wsrelay_bytes_out_total") == 20
    assert m2("wsrelay_bytes_in_total") - m1("wsrelay_bytes_in_total") == 20


async def test_metrics_on_every_service():
    app = relay_app(relay_handler("relay:echo"))
    app.service("admin", "127.0.0.1:0")
    async with running(app) as gw:
        for sid in gw.services:
            metrics = await scrape(gw.address(sid))
            assert metrics.has("wsrelay_connections_total")
            res = await http_request(gw.address(sid), "/health")
            assert res.status == 200 and json.loads(res.body)["status"] == "ok"


# -- counters only go up; drops by reason ------------------------------------------------------


def test_no_counter_is_ever_decremented():
    """Prometheus counters must never go down: the core only ever adds to
    them (flushing to a gone connection, for one, must not take back what was
    counted)."""
    sources = (REPO / "wsrelay" / "_core").glob("*.pyx")
    decrements = [f"{path.name}: {line.strip()}" for path in sources for line in path.read_text().splitlines()
                  if re.search(r"counters\.\w+\s*-=", line)]
    assert decrements == []


async def test_dropped_frames_are_reported_by_reason():
    async with running(relay_app(relay_handler("test:sleeper"))) as gw:
        metrics = await scrape(gw)
        for reason in ("closing", "slow_consumer", "unwritten"):
            assert ("wsrelay_frames_dropped_total", (("reason", reason),)) in metrics.samples
        for reason in ("target_gone", "closing", "connection_lost"):
            assert ("wsrelay_client_messages_dropped_total", (("reason", reason),)) in metrics.samples
        assert not metrics.has("wsrelay_sends_after_close_total")
