"""SPEC §5: GET /health and GET /metrics (Prometheus text format, parsed with
prometheus_client's own parser) on every service, and the numbers move as
traffic flows."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

import wsrelay
from tests import (
    ops_procs,  # noqa: F401  (registers the ops:* process functions)
    procs,  # noqa: F401
)
from tests.ops_support import HandshakeRefused, RawWS, host_port, http_get, scrape
from tests.support import relay_app, relay_handler, running
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


async def _expect(inbox, topic, timeout=30):
    msg = await inbox.receive(timeout=timeout)
    assert msg.topic == topic, (msg.topic, msg.payload)
    return msg.payload


async def test_health():
    inbox = process.inbox()
    async with running(relay_app(relay_handler("ops:echo", process.self()))) as gw:
        host, port = host_port(gw.url())
        status, headers, body = await http_get(host, port, "/health")
        assert status == 200
        assert headers["content-type"] == "application/json"
        idle = json.loads(body)
        assert idle["status"] == "ok" and idle["connections"] == 0
        async with websockets.connect(gw.url("/ws/chat")):
            await _expect(inbox, "ws.join")
            status, _, body = await http_get(host, port, "/health")
            busy = json.loads(body)
            assert status == 200 and busy["connections"] == 1
            assert busy["processes"] == idle["processes"] + 2  # the connection and its target
        await _expect(inbox, "ws.leave")
        # /health and /metrics answer on any path prefix configuration, without a router.
        status, _, _ = await http_get(host, port, "/metrics")
        assert status == 200


async def test_metrics_move_with_traffic():
    inbox = process.inbox()
    app = relay_app(relay_handler("ops:echo", process.self()), origins="https://ok.example")
    async with running(app, max_message_size=4096) as gw:
        host, port = host_port(gw.url())
        m0 = await scrape(host, port)
        for family, kind in FAMILIES.items():
            assert m0.families.get(family) == kind, (family, m0.families.get(family))

        # One connection, some text and binary traffic, echoed back.
        texts = ["a", "hello", "z" * 1000]  # ASCII: see the next test for the rest
        blobs = [b"\x00" * 100, b"\xff" * 3000]
        async with websockets.connect(gw.url("/ws/chat"), origin="https://ok.example") as ws:
            await _expect(inbox, "ws.join")
            m1 = await scrape(host, port)
            assert m1("wsrelay_connections_total") == m0("wsrelay_connections_total") + 1
            assert m1("wsrelay_connections_open") == m0("wsrelay_connections_open") + 1
            assert m1("wsrelay_processes_alive") == m0("wsrelay_processes_alive") + 2
            for item in texts + blobs:
                await ws.send(item)
                assert await asyncio.wait_for(ws.recv(), 10) == item
            m2 = await scrape(host, port)
        await _expect(inbox, "ws.leave")
        size = sum(len(t.encode()) for t in texts) + sum(len(b) for b in blobs)
        n = len(texts) + len(blobs)
        assert m2("wsrelay_messages_in_total") - m1("wsrelay_messages_in_total") == n
        assert m2("wsrelay_bytes_in_total") - m1("wsrelay_bytes_in_total") == size
        assert m2("wsrelay_messages_out_total") - m1("wsrelay_messages_out_total") == n
        assert m2("wsrelay_bytes_out_total") - m1("wsrelay_bytes_out_total") == size

        # Refused upgrades, counted by reason.
        with pytest.raises(HandshakeRefused) as refused:
            await RawWS.connect(host, port, "/ws/chat", extra_headers=["Origin: https://evil.example"])
        assert refused.value.status == 403
        status, _, _ = await http_get(host, port, "/ws/chat")  # not an upgrade
        assert status == 426

        # A message over WSRELAY_MAX_MESSAGE_SIZE: closed with 1009, counted as closed.
        async with websockets.connect(gw.url("/ws/chat"), origin="https://ok.example") as ws:
            await _expect(inbox, "ws.join")
            await ws.send("x" * 5000)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009
        leave = await _expect(inbox, "ws.leave")
        assert leave["reason"] == "message_too_big"

        # A send refused at a full mailbox.
        victim = process.spawn("test:sleeper")
        flooder = process.spawn_monitored("ops:mailbox_flooder", None, process.self(), victim)
        capacity = await _expect(inbox, "full")
        exit_event = await _expect(inbox, wsrelay.EXIT)
        assert exit_event["pid"] == flooder and isinstance(exit_event["error"], wsrelay.MailboxFull)
        m3 = await scrape(host, port)
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
    inbox = process.inbox()
    async with running(relay_app(relay_handler("ops:echo", process.self()))) as gw:
        host, port = host_port(gw.url())
        async with websockets.connect(gw.url("/ws/chat")) as ws:
            await _expect(inbox, "ws.join")
            m1 = await scrape(host, port)
            await ws.send("ü" * 10)
            assert await asyncio.wait_for(ws.recv(), 10) == "ü" * 10
            m2 = await scrape(host, port)
        await _expect(inbox, "ws.leave")
    assert m2("wsrelay_bytes_out_total") - m1("wsrelay_bytes_out_total") == 20
    assert m2("wsrelay_bytes_in_total") - m1("wsrelay_bytes_in_total") == 20


async def test_metrics_on_every_service():
    app = relay_app(relay_handler("ops:echo"))
    app.service("admin", "127.0.0.1:0")
    async with running(app) as gw:
        for sid in gw.services:
            host, port = gw.address(sid)
            metrics = await scrape(host, port)
            assert metrics.has("wsrelay_connections_total")
            status, _, body = await http_get(host, port, "/health")
            assert status == 200 and json.loads(body)["status"] == "ok"
