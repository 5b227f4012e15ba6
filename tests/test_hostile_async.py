"""A slow and a flooded ``async def`` endpoint against a real ``wsrelay
serve``: while a thousand requests wait for their handler, established
connections go on and new ones are accepted; what each waiting request holds
stays within the handshake bounds (its socket and at most the 16 KiB head
limit, whatever the client sends meanwhile); each is answered 504 after
WSRELAY_HANDLER_TIMEOUT and leaves no file, process or memory behind."""

from __future__ import annotations

import asyncio
import resource

import pytest

from tests.apps import write_app
from tests.harness import ServerProcess, scrape, serve_command
from tests.wsclient import RawWebSocket

CLIENTS = 1000
MiB = 1 << 20
KiB = 1 << 10
# What a waiting request holds beside its bytes: its task and handler, the
# process the handler spawned, the socket's transport (13.7 KiB measured).
BOOKKEEPING = 16 * KiB
# The request head limit: what a client sends while it waits is kept up to it.
HEAD_LIMIT = 16 * KiB
REQUEST = (b"GET /ws/slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


@pytest.mark.parametrize("flood", [False, True], ids=["slow", "flooded"])
async def test_waiting_async_endpoints_are_bounded_and_cost_others_nothing(tmp_path, flood):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    env = {"WSRELAY_LOG_LEVEL": "ERROR", "WSRELAY_HANDLER_TIMEOUT": "4s"}
    async with ServerProcess(serve_command(write_app(tmp_path)), env=env) as server:
        established = await RawWebSocket.connect(server, "/ws/async_echo")
        established.send_text("warm")
        assert await established.recv_text() == "warm"
        files, rss = server.fd_count(), server.rss()
        processes = (await scrape(server))("wsrelay_processes_alive")
        waiting = []
        for _ in range(CLIENTS):
            reader, writer = await asyncio.open_connection(*server.address())
            writer.write(REQUEST)
            if flood:
                # What a client sends while its handler waits is kept up to
                # the head limit, then reading pauses: the rest stays in the
                # kernel's buffers, not in the server's memory.
                writer.write(b"x" * (256 << 10))
            waiting.append((reader, writer))
        # Every request is in and waiting: each handler spawned its process.
        while (await scrape(server))("wsrelay_processes_alive") < processes + CLIENTS:
            established.send_text("ping")
            assert await established.recv_text() == "ping"
        held = server.rss() - rss
        # Established connections go on, and new ones are accepted.
        established.send_text("still here")
        assert await established.recv_text() == "still here"
        fresh = await RawWebSocket.connect(server, "/ws/async_echo")
        fresh.send_text("new")
        assert await fresh.recv_text() == "new"
        # Each waiting request is answered 504 once the handler timeout passes.
        for reader, writer in waiting:
            answer = await asyncio.wait_for(reader.read(), 30)
            assert answer.startswith(b"HTTP/1.1 504 "), answer[:80]
            writer.close()
        metrics = await scrape(server)
        assert metrics("wsrelay_handshake_failures_total", reason="handler_timeout") == CLIENTS
        # Nothing left: the processes the handlers spawned, their files.
        while (await scrape(server))("wsrelay_processes_alive") > processes + 1:
            established.send_text("ping")
            assert await established.recv_text() == "ping"
        assert server.fd_count() <= files + 2
        # A waiting request held its bookkeeping and at most the head limit
        # of bytes, never the flood (256 KiB each).
        bound = CLIENTS * (BOOKKEEPING + (HEAD_LIMIT if flood else 0))
        assert held < bound, f"{held / MiB:.1f} MiB for {CLIENTS} waiting requests (bound {bound / MiB:.0f} MiB)"
        print(f"{CLIENTS} waiting requests ({'flooding' if flood else 'quiet'}): {held / MiB:.1f} MiB")
        for ws in (established, fresh):
            await ws.close_handshake()
