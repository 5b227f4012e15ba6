"""Limits (docs/configuration.md): WSRELAY_MAX_CONNECTIONS (503 beyond it),
WSRELAY_HANDSHAKE_TIMEOUT (a client that never finishes its upgrade request is
dropped) and WSRELAY_PING_INTERVAL / WSRELAY_PING_TIMEOUT (idle clients that do
not answer pings are dropped with reason ``timeout``)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time

import pytest
import websockets

from tests.apps import relay_app, relay_handler
from tests.harness import expect, running, scrape
from tests.wsclient import PING, PONG, ConnectionEnded, HandshakeRefused, RawWebSocket, address
from wsrelay import process


async def test_connections_beyond_the_limit_get_503():
    app = relay_app(relay_handler("relay:echo", process.self()))
    async with running(app, max_connections=2) as gw:
        before = await scrape(gw)
        first = await websockets.connect(gw.url("/ws/chat"))
        second = await websockets.connect(gw.url("/ws/chat"))
        await expect("ws.join")
        await expect("ws.join")
        for _ in range(3):
            with pytest.raises(HandshakeRefused) as refused:
                await RawWebSocket.connect(gw, "/ws/chat")
            assert refused.value.response.status == 503
        after = await scrape(gw)
        assert after("wsrelay_handshake_failures_total", reason="connection_limit") - \
            before("wsrelay_handshake_failures_total", reason="connection_limit") == 3
        assert after("wsrelay_connections_open") == 2
        # Existing connections still work; once one is gone there is room again.
        await second.send("still here")
        assert await asyncio.wait_for(second.recv(), 10) == "still here"
        await first.close()
        leave = await expect("ws.leave")
        assert leave["reason"] == "client_closed"
        async with websockets.connect(gw.url("/ws/chat")) as third:
            await expect("ws.join")
            await third.send("room again")
            assert await asyncio.wait_for(third.recv(), 10) == "room again"
        await expect("ws.leave")
        await second.close()
        await expect("ws.leave")


async def test_no_limit_when_zero():
    app = relay_app(relay_handler("relay:echo", process.self()))
    async with running(app, max_connections=0) as gw:
        clients = [await websockets.connect(gw.url("/ws/chat")) for _ in range(20)]
        for _ in clients:
            await expect("ws.join")
        for ws in clients:
            await ws.close()
        for _ in clients:
            await expect("ws.leave")


@pytest.mark.parametrize("sent", [b"", b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"],
                         ids=["silent", "partial-request"])
async def test_an_unfinished_upgrade_request_is_dropped_after_the_handshake_timeout(sent):
    timeout = 0.5
    spawned: list = []

    def handler(req, res):
        spawned.append(req.path)
        relay_handler("relay:echo")(req, res)

    async with running(relay_app(handler), handshake_timeout=timeout) as gw:
        reader, writer = await asyncio.open_connection(*address(gw))
        t0 = time.monotonic()
        writer.write(sent)
        await writer.drain()
        # Meanwhile the gateway serves others as usual.
        async with websockets.connect(gw.url("/ws/chat")) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 10) == "hi"
        data = await asyncio.wait_for(reader.read(), 30)  # EOF when the gateway drops us
        elapsed = time.monotonic() - t0
        writer.close()
        assert data == b""
        assert timeout * 0.8 <= elapsed <= timeout + 10, elapsed
        assert spawned == ["/ws/chat"]  # only the well-behaved client reached the handler


async def _idle_client(gw, answer_pings: bool, pings_wanted: int = 3):
    """Connect a raw client that sends nothing; it answers pings or not.
    Returns (pings seen, the close frame or None, seconds until the end)."""
    client = await RawWebSocket.connect(gw, "/ws/chat")
    t0 = time.monotonic()
    pings = 0
    try:
        while True:
            try:
                frame = await client.recv_frame(30)
            except ConnectionEnded:
                return client, pings, None, time.monotonic() - t0
            if frame.opcode == PING:
                pings += 1
                if answer_pings:
                    client.send_frame(PONG, frame.payload)
                    if pings >= pings_wanted:
                        return client, pings, None, time.monotonic() - t0
            elif frame.opcode == 0x8:
                return client, pings, frame, time.monotonic() - t0
    except BaseException:
        client.abort()
        raise


async def test_idle_clients_that_do_not_answer_pings_are_dropped_with_reason_timeout():
    interval, timeout = 0.3, 0.3
    app = relay_app(relay_handler("relay:echo", process.self()))
    async with running(app, ping_interval=interval, ping_timeout=timeout) as gw:
        silent, pings, close, elapsed = await _idle_client(gw, answer_pings=False)
        silent_join = await expect("ws.join")
        assert pings == 1
        assert elapsed >= timeout * 0.8  # dropped by the timeout, not at once
        if close is not None:  # the close frame may be lost: the socket is aborted right after it
            assert close.close_code == 1001
            await silent.expect_end(30)
        silent.close()
        leave = await expect("ws.leave")
        assert leave["client_pid"] == silent_join["client_pid"]
        assert leave["reason"] == "timeout"

        # A client that answers stays, ping after ping, and still works.
        polite, pings, close, _ = await _idle_client(gw, answer_pings=True, pings_wanted=3)
        polite_join = await expect("ws.join")
        assert (pings, close) == (3, None)
        polite.send_text("still alive")
        assert await polite.recv_text(10) == "still alive"
        polite.send_close(1000)
        await polite.recv_until_close(10)
        polite.close()
        leave = await expect("ws.leave")
        assert (leave["client_pid"], leave["reason"]) == (polite_join["client_pid"], "client_closed")


async def test_no_pings_when_the_interval_is_zero():
    """WSRELAY_PING_INTERVAL=0 turns pings off: an idle client that would
    fail the ping test above is still connected after many would-be intervals
    (measured by the heartbeats its target gets meanwhile), and was sent no ping."""
    inbox = process.inbox()
    app = relay_app(relay_handler("relay:forward", process.self(), heartbeat_interval="100ms"))
    async with running(app, ping_interval=0) as gw:
        client = await RawWebSocket.connect(gw, "/ws/chat")
        beats = 0
        while beats < 10:  # ~1 s: three ping intervals of the test above
            msg = await inbox.receive(timeout=10)
            topic, _ = msg.payload
            assert topic in ("ws.join", "ws.heartbeat"), topic
            beats += topic == "ws.heartbeat"
        client.send_close(1000)
        frames, close = await client.recv_until_close(10)
        assert frames == [], frames  # no ping came in all that time
        assert close is not None and close.close_code == 1000
        client.close()
        msg = await inbox.receive(timeout=10)
        while msg.payload[0] == "ws.heartbeat":
            msg = await inbox.receive(timeout=10)
        assert msg.payload[0] == "ws.leave" and msg.payload[1]["reason"] == "client_closed"


def _server_side_receive_buffer(server_port: int, client_port: int) -> int:
    """SO_RCVBUF of the gateway's socket for the client at ``client_port``
    (the gateway runs in this process: its sockets are among our files)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # closed since the listing
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ends = sock.getsockname()[1], sock.getpeername()[1]
            except OSError:
                continue  # a listening socket has no peer
            if ends == (server_port, client_port):
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    raise AssertionError(f"no socket of the gateway's port {server_port} for the client at {client_port}")


@pytest.mark.parametrize("size", [12 << 10, 100 << 10])
async def test_each_client_socket_gets_wsrelay_socket_receive_buffer(size):
    async with running(relay_app(relay_handler("relay:echo", process.self())), socket_receive_buffer=size) as gw:
        ws = await RawWebSocket.connect(gw, "/ws/chat")
        client_port = ws.writer.get_extra_info("sockname")[1]
        # Linux doubles what it is set to, for its own bookkeeping (socket(7)).
        assert _server_side_receive_buffer(address(gw)[1], client_port) == 2 * size
        await ws.close_handshake(1000)
