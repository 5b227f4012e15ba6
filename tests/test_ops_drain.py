"""Graceful drain (docs/guide.md section 10; docs/configuration.md,
`WSRELAY_DRAIN_TIMEOUT`): on SIGTERM or SIGINT a real ``wsrelay serve``
stops accepting, closes every connection with 1001, its targets get ws.leave
with reason ``shutdown``, and it exits 0 within WSRELAY_DRAIN_TIMEOUT; a
client that ignores the close does not hold it much past that timeout."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import websockets

from tests.apps import read_report, write_app
from tests.harness import ServerProcess, serve_command
from tests.procs import REPORT_ENV
from tests.wsclient import CLOSE, RawWebSocket

CLIENTS = 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_every_connection_and_exits_0(tmp_path, sig):
    drain_timeout = 5.0
    report = tmp_path / "report.txt"
    env = {"WSRELAY_DRAIN_TIMEOUT": f"{drain_timeout}s", REPORT_ENV: str(report)}
    async with ServerProcess(serve_command(write_app(tmp_path)), env=env) as served:
        url = served.url("/ws/echo")
        clients = [await websockets.connect(url) for _ in range(CLIENTS)]
        for i, ws in enumerate(clients):
            await ws.send(f"hello {i}")
            assert await asyncio.wait_for(ws.recv(), 10) == f"hello {i}"
        t0 = time.monotonic()
        served.signal(sig)
        for ws in clients:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), drain_timeout + 10)
            assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
        rc = await served.exited(drain_timeout + 10)
        elapsed = time.monotonic() - t0
        assert rc == 0, served.output()
        assert elapsed < drain_timeout, elapsed
        # Once it has exited nothing listens any more.
        with pytest.raises(OSError):
            await asyncio.open_connection(*served.address())
    leaves = read_report(report)
    assert len(leaves) == CLIENTS, f"{leaves}\n{served.output()}"
    assert all(line[:3] == ["ws.leave", "shutdown", "1001"] for line in leaves), leaves
    assert len({line[3] for line in leaves}) == CLIENTS  # one per client
    assert "drained" in served.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_client_that_ignores_the_close_does_not_hold_the_exit(tmp_path, sig):
    drain_timeout = 1.5
    report = tmp_path / "report.txt"
    # A long close timeout: only the drain timeout can end this client.
    env = {"WSRELAY_DRAIN_TIMEOUT": f"{drain_timeout}s", "WSRELAY_CLOSE_TIMEOUT": "60s",
           REPORT_ENV: str(report)}
    async with ServerProcess(serve_command(write_app(tmp_path)), env=env) as served:
        stubborn = await RawWebSocket.connect(served, "/ws/echo")
        polite = await websockets.connect(served.url("/ws/echo"))
        stubborn.send_text("ping?")
        assert await stubborn.recv_text(10) == "ping?"
        t0 = time.monotonic()
        served.signal(sig)
        frame = await stubborn.recv_frame(10)
        assert frame.opcode == CLOSE and frame.close_code == 1001
        # It has stopped accepting, while it is still draining.
        assert served.returncode is None
        with pytest.raises(OSError):
            await asyncio.open_connection(*served.address())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(polite.recv(), 10)
        assert polite.close_code == 1001
        # The stubborn client never answers; the server drops it at the drain timeout.
        await stubborn.expect_end(drain_timeout + 10)
        rc = await served.exited(drain_timeout + 10)
        elapsed = time.monotonic() - t0
        stubborn.close()
        assert rc == 0, served.output()
        assert drain_timeout * 0.9 <= elapsed <= drain_timeout + 3.0, elapsed
    assert "drain timeout" in served.output()
    leaves = read_report(report)
    assert sorted(line[:3] for line in leaves) == [["ws.leave", "shutdown", "1001"]] * 2, \
        f"{leaves}\n{served.output()}"
