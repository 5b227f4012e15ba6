"""Hostile clients of the server API (docs/api.md, "Bounds") against a real
``wsrelay serve``, its RSS and open files measured while they do their
worst: a flood of wrong keys, many bodies at the limit at once, a body sent
a byte at a time; afterwards nothing is left open."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from tests.apps import write_app
from tests.harness import RssSampler, ServerProcess, scrape, serve_command, until
from tests.test_api import KEY

MiB = 1 << 20


@contextlib.asynccontextmanager
async def api_server(tmp_path, **env: str) -> AsyncIterator[ServerProcess]:
    async with ServerProcess(serve_command(write_app(tmp_path)),
                             env={"WSRELAY_LOG_LEVEL": "WARNING", "WSRELAY_API_KEY": KEY, **env}) as server:
        yield server


def post(method: str, body: bytes, key: str = KEY) -> bytes:
    return (f"POST /api/{method} HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def status_of(server: ServerProcess, request: bytes) -> int:
    """The status of the answer to ``request`` on a new connection, which is
    then read to its end (the server closes it, or it stays: then dropped)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split()[1])
    finally:
        writer.transport.abort()


async def settled(server: ServerProcess, fds: int) -> None:
    """The server back to ``fds`` open files: every connection closed."""
    await until(lambda: server.fd_count() <= fds, timeout=30, what=f"the server's open files back to {fds}")


async def warm(server: ServerProcess) -> tuple[int, int]:
    """One answered call of each kind (imports, allocator pools), then the
    server's RSS and open files: the baseline."""
    assert await status_of(server, post("publish", b'{"channel":"a","data":1}')) == 200
    assert await status_of(server, post("publish", b"{}", key="wrong")) == 401
    await asyncio.sleep(0.2)
    return server.rss(), server.fd_count()


async def test_a_flood_of_wrong_keys_is_answered_401_counted_and_closed(tmp_path):
    """2,000 requests with wrong keys, 50 connections at a time, each
    pipelining 20 more: every connection is answered 401 once and closed,
    the rest it sent is dropped unread; the flood shows in /metrics.
    Measured: no growth of the RSS (a refused connection's parser and buffer
    are freed when it closes, not at a garbage collection)."""
    async with api_server(tmp_path) as server:
        baseline, fds = await warm(server)
        flood = post("publish", b'{"channel":"a","data":1}', key="guess") * 20

        async def one() -> int:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                writer.write(flood)
                answers = (await asyncio.wait_for(reader.read(), 30)).count(b"HTTP/1.1 401")
                return answers
            except ConnectionResetError:
                return 1  # closed on unread requests after its answer: the answer was read before
            finally:
                writer.transport.abort()

        with RssSampler(server.pid) as rss:
            for _ in range(2000 // 50):
                assert await asyncio.gather(*(one() for _ in range(50))) == [1] * 50
        assert rss.peak - baseline < 2 * MiB, (rss.peak - baseline) / MiB
        metrics = await scrape(server)
        assert metrics("wsrelay_api_refused_total", reason="unauthorized") == 2001
        assert metrics("wsrelay_api_requests_total", method="publish", status="401") == 2001
        await settled(server, fds)
        # And the right key still works.
        assert await status_of(server, post("channels", b"{}")) == 200


async def test_many_bodies_at_the_limit_at_once_keep_the_rss_bounded(tmp_path):
    """100 connections each sending a 256 KiB body (the limit) at once,
    three times over: the server holds at most the bodies in flight."""
    limit = 256 << 10
    async with api_server(tmp_path, WSRELAY_API_MAX_BODY=str(limit)) as server:
        baseline, fds = await warm(server)
        frame = b'{"channel":"a","data":""}'
        body = b'{"channel":"a","data":"' + b"x" * (limit - len(frame)) + b'"}'
        assert len(body) == limit
        with RssSampler(server.pid) as rss:
            for _ in range(3):
                statuses = await asyncio.gather(*(status_of(server, post("publish", body)) for _ in range(100)))
                assert statuses == [200] * 100
        # 100 bodies of 256 KiB in flight are 25 MiB, each read in chunks,
        # joined, decoded and encoded once: measured 11 MiB over the baseline.
        assert rss.peak - baseline < 40 * MiB, (rss.peak - baseline) / MiB
        assert await status_of(server, post("publish", body + b" ")) == 413
        await settled(server, fds)


async def test_a_slow_loris_body_is_closed_at_the_request_timeout(tmp_path):
    """Connections that send a head, then their body a byte a second, are
    dropped once WSRELAY_HANDSHAKE_TIMEOUT has passed since their first
    byte, and counted."""
    async with api_server(tmp_path, WSRELAY_HANDSHAKE_TIMEOUT="1s") as server:
        _, fds = await warm(server)
        loop = asyncio.get_running_loop()

        async def loris() -> float:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            start = loop.time()
            try:
                # A first request answered, so the rest is the API's own connection.
                writer.write(post("channels", b"{}"))
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
                writer.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\n"
                             b"Content-Length: 1000\r\n\r\n{" % KEY.encode())
                start = loop.time()
                while True:
                    await asyncio.sleep(0.3)
                    writer.write(b" ")
                    await writer.drain()
                    if loop.time() - start > 20:
                        raise AssertionError("never closed")
            except ConnectionError:
                return loop.time() - start
            finally:
                writer.transport.abort()

        lasted = await asyncio.gather(*(loris() for _ in range(20)))
        assert all(0.9 < t < 5 for t in lasted), lasted
        metrics = await scrape(server)
        assert metrics("wsrelay_api_refused_total", reason="timeout") == 20
        await settled(server, fds)


async def test_a_request_cut_short_and_an_idle_connection_are_closed_at_the_timeout(tmp_path):
    """A connection that goes silent in the middle of its second request's
    head is dropped at the timeout and counted; one that is idle after its
    answer is closed after as long, and not counted."""
    async with api_server(tmp_path, WSRELAY_HANDSHAKE_TIMEOUT="1s") as server:
        _, fds = await warm(server)
        for rest, counted in ((b"POST /api/publish HTTP/1.1\r\nHost", 1), (b"", 1)):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                writer.write(post("channels", b"{}") + rest)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                assert await ended(reader)
            finally:
                writer.transport.abort()
            await settled(server, fds)
            assert (await scrape(server))("wsrelay_api_refused_total", reason="timeout") == counted


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends the connection (EOF or reset) within 10 s,
    sending nothing more."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True
