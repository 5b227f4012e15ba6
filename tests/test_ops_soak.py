"""Soak: WSRELAY_SOAK_CYCLES (default 100 000) connect / message / close
cycles against one ``wsrelay serve`` subprocess, spread over concurrent
clients. Afterwards the PID table, the open connections, the file
descriptors and the gateway's RSS are back to their warmed-up baseline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from tests.apps import write_app
from tests.harness import RssSampler, ServerProcess, scrape, serve_command
from tests.wsclient import CLOSE, TEXT, build_request, close_payload, encode_frame, http_request

CYCLES = int(os.environ.get("WSRELAY_SOAK_CYCLES", "100000"))
WARMUP = 5000
CONCURRENCY = 64
RSS_TOLERANCE = 8 << 20  # RSS after the soak may exceed the warmed-up baseline by this much
# Several loopback source addresses, so 100k connections in a few minutes
# do not crowd one address's ephemeral ports (the server side keeps TIME_WAIT).
SOURCES = [f"127.0.0.{i}" for i in range(1, 9)]


async def _cycles(host: str, port: int, count: int, source: str, done: list[int]) -> None:
    message = encode_frame(TEXT, b"soak")
    close = encode_frame(CLOSE, close_payload(1000))
    request, _ = build_request(host, port, "/ws/echo")
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
            writer.write(message)
            assert await reader.readexactly(6) == b"\x81\x04soak"
            writer.write(close)
            assert await reader.readexactly(4) == b"\x88\x02\x03\xe8"
            assert await reader.read() == b""  # the server closes the TCP connection
        finally:
            writer.close()
        done[0] += 1


async def _run(host: str, port: int, total: int) -> float:
    done = [0]
    per_client, extra = divmod(total, CONCURRENCY)
    t0 = time.monotonic()
    await asyncio.gather(*(
        _cycles(host, port, per_client + (i < extra), SOURCES[i % len(SOURCES)], done) for i in range(CONCURRENCY)
    ))
    assert done[0] == total
    return time.monotonic() - t0


async def _settled(served: ServerProcess, processes: int, timeout: float = 60.0) -> dict:
    """/health once the gateway has ended every connection and target:
    polled (each poll is an HTTP round trip) until it is, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        health = json.loads((await http_request(served, "/health")).body)
        if health["connections"] == 0 and health["processes"] == processes:
            return health
        assert time.monotonic() < deadline, f"not back to baseline: {health}"


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_soak_connect_message_close(tmp_path):
    async with ServerProcess(serve_command(write_app(tmp_path)), env={"WSRELAY_LOG_LEVEL": "WARNING"}) as served:
        processes = json.loads((await http_request(served, "/health")).body)["processes"]  # the system process
        await _run(served.host, served.port, WARMUP)
        await _settled(served, processes)
        base_rss, base_fds = served.rss(), served.fd_count()
        before = await scrape(served)

        with RssSampler(served.pid, interval=0.05) as sampler:
            elapsed = await _run(served.host, served.port, CYCLES)
        health = await _settled(served, processes)
        after = await scrape(served)
        rss, fds = served.rss(), served.fd_count()

        assert await served.stopped(signal.SIGTERM, 30) == 0, served.output()

    rate = CYCLES / elapsed
    print(f"\nsoak: {CYCLES} cycles in {elapsed:.1f} s ({rate:.0f} cycles/s, {CONCURRENCY} clients); "
          f"RSS {base_rss / 2**20:.1f} -> {rss / 2**20:.1f} MiB (peak {sampler.peak / 2**20:.1f} MiB), "
          f"fds {base_fds} -> {fds}, processes {health['processes']}")
    for counter in ("wsrelay_connections_total", "wsrelay_connections_closed_total", "wsrelay_messages_in_total",
                    "wsrelay_messages_out_total", "wsrelay_processes_spawned_total"):
        assert after(counter) - before(counter) == CYCLES, counter
    assert after("wsrelay_processes_exited_total") - before("wsrelay_processes_exited_total") == 2 * CYCLES
    assert after("wsrelay_connections_open") == 0
    assert after("wsrelay_processes_alive") == processes
    assert abs(fds - base_fds) <= 2, (base_fds, fds)  # an in-flight /health socket may come or go
    assert rss - base_rss <= RSS_TOLERANCE, f"RSS grew by {(rss - base_rss) / 2**20:.1f} MiB"
    assert "Traceback" not in served.output() and "ERROR" not in served.output(), served.output()
