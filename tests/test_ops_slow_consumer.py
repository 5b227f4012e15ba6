"""Slow consumers (docs/configuration.md, `WSRELAY_WRITE_BUFFER_LIMIT`): a
client that stops reading while its process keeps sending is
closed with 1008 (reason ``slow_consumer``) once its unsent bytes pass
WSRELAY_WRITE_BUFFER_LIMIT, instead of growing the gateway's memory; the
target gets ws.leave with that reason, and other clients are unaffected."""

from __future__ import annotations

import asyncio

import websockets

from tests.apps import relay_app, relay_handler
from tests.harness import expect, running, scrape
from tests.wsclient import BINARY, CLOSE, RawWebSocket
from wsrelay import node, process

LIMIT = 256 << 10      # WSRELAY_WRITE_BUFFER_LIMIT for this test
CHUNK = 8 << 10        # bytes per ws.send (frames over 8 KiB: see the last test)
FLOOD_CAP = 256 << 20  # the flooder gives up here: reaching it means no slow-consumer close
# What may go out before the close: the limit, plus what the kernel buffers
# take on both sides of the socket (the client's receive buffer is shrunk).
MAX_BEFORE_CLOSE = 16 << 20


def _app(observer):
    def flood(req, res):
        pid = process.spawn("relay:flooder", None, observer, CHUNK, FLOOD_CAP)
        res.header("X-WS-Relay", f'{{"target_pid": "{pid}"}}')

    def echo(req, res):
        pid = process.spawn("relay:echo")
        res.header("X-WS-Relay", f'{{"target_pid": "{pid}"}}')

    app = relay_app(flood, path="/flood")
    app.routers["test:ws"].endpoint("GET", "/echo", echo)
    return app


async def test_a_client_that_stops_reading_is_closed_with_1008():
    closes_before = node().counters.slow_consumer_closes
    async with running(_app(process.self()), write_buffer_limit=LIMIT, close_timeout=30) as gw:
        before = await scrape(gw)
        async with websockets.connect(gw.url("/ws/echo")) as other:
            await other.send("before")
            assert await asyncio.wait_for(other.recv(), 10) == "before"

            # A tiny receive window and a tiny stream buffer: the client reads
            # nothing until told to, so the gateway's write buffer must grow.
            slow = await RawWebSocket.connect(gw, "/ws/flood", rcvbuf=4096, limit=4096)
            client = await expect("flooding")

            stop = asyncio.Event()

            async def round_trips():
                n = 0
                while not stop.is_set():
                    await other.send(f"during {n}")
                    assert await asyncio.wait_for(other.recv(), 10) == f"during {n}"
                    n += 1
                return n

            during = asyncio.ensure_future(round_trips())
            try:
                sent, refused = await expect("stopped", timeout=60)
            finally:
                stop.set()
            await asyncio.wait_for(during, 30)
            assert refused, f"{sent} bytes went out and the connection was never closed as a slow consumer"
            assert LIMIT <= sent <= MAX_BEFORE_CLOSE, sent
            print(f"\nslow consumer: closed after {sent / 2**20:.2f} MiB sent "
                  f"(limit {LIMIT >> 10} KiB, client SO_RCVBUF 4 KiB)")

            # Now read: the data, then the close frame with 1008.
            frames, close = await slow.recv_until_close(30)
            assert all(f.opcode == BINARY for f in frames)
            received = sum(len(f.payload) for f in frames)
            assert close is not None, "no close frame"
            assert (close.close_code, close.close_reason) == (1008, b"slow consumer")
            assert received <= sent
            slow.send_frame(CLOSE, close.payload[:2])
            await slow.drain()
            await slow.expect_end(30)
            slow.close()

            leave = await expect("ws.leave")
            assert leave["client_pid"] == client
            assert (leave["reason"], leave["code"]) == ("slow_consumer", 1008)

            # The other client never noticed.
            await other.send("after")
            assert await asyncio.wait_for(other.recv(), 10) == "after"
        after = await scrape(gw)
    assert node().counters.slow_consumer_closes == closes_before + 1
    assert after("wsrelay_slow_consumer_closes_total") - before("wsrelay_slow_consumer_closes_total") == 1


async def test_large_frames_queued_for_a_backed_up_client_arrive_intact():
    """Frames over 8 KiB queued behind unsent data must reach the client as
    they were sent. (Found by the slow-consumer test: the header of a queued
    large frame was overwritten by the next frame sent on that connection,
    its close frame included.)"""
    count = 150
    sizes = [65536 if i % 2 == 0 else 20000 + i for i in range(count)]

    def handler(req, res):
        pid = process.spawn("relay:echo")
        res.header("X-WS-Relay", f'{{"target_pid": "{pid}"}}')

    async with running(relay_app(handler), write_buffer_limit=1 << 30) as gw:
        client = await RawWebSocket.connect(gw, "/ws/chat", rcvbuf=4096, limit=4096)
        conn = next(iter(gw.services["test:gateway"].relay.connections)).pid
        # The client reads nothing yet: after the first few hundred KiB every
        # frame waits in the gateway's write buffer.
        for i, size in enumerate(sizes):
            head = i.to_bytes(4, "big")
            if i % 2 == 0:
                process.send(conn, "ws.send", {"type": "binary", "data": head + bytes([i % 251]) * (size - 4)})
            else:
                process.send(conn, "ws.send", {"type": "text", "data": f"{i:08d}" + "t" * (size - 8)})
        process.send(conn, "ws.close", {"code": 1000, "reason": "all sent"})
        frames, close = await client.recv_until_close(60)
        got = [(f.opcode, len(f.payload)) for f in frames]
        expected = [(BINARY if i % 2 == 0 else 1, size) for i, size in enumerate(sizes)]
        first_bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
        assert got == expected, (f"{len(got)} of {len(expected)} frames as sent (first wrong one: {first_bad}), "
                                 f"then {close!r} code={close and close.close_code} "
                                 f"reason={close and close.close_reason[:16]!r}")
        for i, f in enumerate(frames):
            if i % 2 == 0:
                assert f.payload == i.to_bytes(4, "big") + bytes([i % 251]) * (sizes[i] - 4), i
            else:
                assert f.payload == (f"{i:08d}" + "t" * (sizes[i] - 8)).encode(), i
        assert close is not None and (close.close_code, close.close_reason) == (1000, b"all sent")
        client.send_close(1000)
        await client.expect_end(30)
        client.close()


async def test_frames_queued_for_the_flush_count_toward_the_write_buffer_limit():
    """Not only the transport's buffer counts: otherwise a process could
    queue any amount in one loop iteration."""
    async with running(relay_app(relay_handler("relay:recorder", process.self())),
                       write_buffer_limit=64 << 10) as gw:
        ws = await RawWebSocket.connect(gw, "/ws/chat")
        await expect("ready")
        client = (await expect("target"))[1]["client_pid"]
        slow = node().counters.frames_dropped_slow_consumer
        results = [process.send(client, "ws.send", {"type": "binary", "data": bytes(4096)}) for _ in range(100)]
        # Queued until more than the limit waited, then refused.
        assert results.index(False) <= (64 << 10) // 4096 + 1
        assert not any(results[results.index(False):])
        assert node().counters.frames_dropped_slow_consumer - slow == 1
        frames, close = await ws.recv_until_close()
        assert close is not None and close.close_code == 1008
        assert len(frames) == results.index(False)
