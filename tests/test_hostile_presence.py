"""Presence against hostile clients (docs/guide.md, "Presence"), from
outside: a real ``wsrelay serve``, its RSS, open files and /metrics
(``wsrelay_presence_entries``) measured while clients join and leave a
room with join/leave events by the hundred, and hold thousands of
entries; everything comes back once they are gone."""

from __future__ import annotations

import asyncio
import json

from tests.apps import CHANNELS_APP_YAML, write_channels_app
from tests.harness import RssSampler, ServerProcess, scrape, serve_command
from tests.test_hostile_channels import _all_closed
from tests.wsclient import RawWebSocket

MiB = 1 << 20
CAP = 100

# room:* with presence, join/leave events capped at CAP members.
APP = CHANNELS_APP_YAML.replace("presence: true", f"presence: true, join_leave: true, presence_max_members: {CAP}")


def _served(tmp_path, **env: str) -> ServerProcess:
    return ServerProcess(serve_command(write_channels_app(tmp_path, APP)),
                         env={"WSRELAY_LOG_LEVEL": "WARNING", **env})


async def _member(server: ServerProcess, names: list[str], user: str) -> RawWebSocket:
    """A client granted ``names``; returned once it is joined (its {"me"}
    follows the join events it received first)."""
    ws = await RawWebSocket.connect(server, f"/ws/member?user={user}&" + "&".join(f"ch={n}" for n in names))
    while "me" not in json.loads(await ws.recv_text()):
        pass
    return ws


async def _entries(server: ServerProcess) -> float:
    return (await scrape(server))("wsrelay_presence_entries", origin="local")


async def test_a_join_leave_storm_over_the_cap_leaves_nothing_behind(tmp_path):
    """Three rounds of 2 x CAP clients joining one room with join/leave
    events one after another (each of the first CAP tells everyone; past the
    cap, nobody is told) and vanishing (RST) together, none of them reading
    what it is sent after its join."""
    async with _served(tmp_path) as server:
        warm = await _member(server, ["room:storm"], "warm")
        await warm.close_handshake()
        await _all_closed(server)
        baseline = server.rss()
        files = server.fd_count()
        with RssSampler(server.pid) as rss:
            for round_ in range(3):
                clients = [await _member(server, ["room:storm"], f"r{round_}u{i % 50}") for i in range(2 * CAP)]
                assert await _entries(server) == 2 * CAP
                for ws in clients:
                    ws.abort()
                metrics = await _all_closed(server)
                assert metrics("wsrelay_presence_entries", origin="local") == 0
                assert metrics("wsrelay_channels") == 0
        # (Polled: a socket its client has just closed, a scrape's or a
        # vanished member's, may be open on the server's side a moment more;
        # seen once in a few runs on the busy machine.)
        deadline = asyncio.get_running_loop().time() + 5
        while server.fd_count() > files:
            assert asyncio.get_running_loop().time() < deadline, (server.fd_count(), files)
            await asyncio.sleep(0.05)
        # (measured: ~1.3 MiB peak)
        assert rss.peak - baseline < 16 * MiB, (rss.peak - baseline) / MiB


async def test_ten_thousand_entries_cost_what_they_hold_and_nothing_once_gone(tmp_path):
    """500 clients, each in 20 presence rooms (10,000 entries, over the cap
    of each room: no events), twice; the RSS they cost per entry is bounded
    and the table is empty after each round."""
    async with _served(tmp_path) as server:
        names = [f"room:r{j}" for j in range(20)]
        warm = await _member(server, names, "warm")
        await warm.close_handshake()
        await _all_closed(server)
        baseline = server.rss()
        with RssSampler(server.pid) as rss:
            for _ in range(2):
                clients = [await _member(server, names, f"u{i}") for i in range(500)]
                assert await _entries(server) == 10_000
                for ws in clients:
                    ws.abort()
                metrics = await _all_closed(server)
                assert metrics("wsrelay_presence_entries", origin="local") == 0
        # 500 connections and 10,000 subscriptions with presence (measured:
        # ~5.6 MiB peak, most of it the connections and their subscriptions).
        assert rss.peak - baseline < 16 * MiB, (rss.peak - baseline) / MiB
