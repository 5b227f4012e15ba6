"""History against hostile clients (docs/configuration.md,
WSRELAY_RECOVERY_MAX; docs/guide.md, "History and recovery"), from outside: a
real ``wsrelay serve`` of the channels app (``room:*`` keeps 10 publications
for a minute), its RSS and /metrics measured while clients send absurd
``recover`` parameters and a thousand reconnect at once with positions."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

from tests.apps import write_channels_app
from tests.harness import RssSampler, ServerProcess, scrape, serve_command
from tests.wsclient import RawWebSocket, http_request

MiB = 1 << 20
ROOM = "room:lobby"


def _served(tmp_path: Any, **env: str) -> ServerProcess:
    return ServerProcess(serve_command(write_channels_app(tmp_path)), env={"WSRELAY_LOG_LEVEL": "WARNING", **env})


async def _member(server: ServerProcess, recover: Any = None, names: tuple[str, ...] = (ROOM,)) -> tuple[
        RawWebSocket, dict[str, Any]]:
    """A client of /ws/member granted ``names``, and its subscribed event
    (of the first channel); ``recover`` is sent as given (a str) or as JSON."""
    query = "&".join(f"ch={name}" for name in names)
    if recover is not None:
        query += "&recover=" + quote(recover if isinstance(recover, str) else json.dumps(recover))
    ws = await RawWebSocket.connect(server, f"/ws/member?{query}")
    subscribed = None
    while subscribed is None:
        message = json.loads(await ws.recv_text(timeout=30))
        if message.get("event") == "subscribed":
            subscribed = message
    return ws, subscribed


async def _publish(server: ServerProcess, count: int) -> None:
    """``count`` publications to ROOM, through a chat client (its room publishes
    the client's join and each of its messages), read back by that client."""
    ws = await RawWebSocket.connect(server, f"/ws/chat?ch={ROOM}")
    for n in range(count):
        ws.send_text(json.dumps({"n": n}))
    seen = 0
    while seen < count + 1:  # its join, then its messages
        if json.loads(await ws.recv_text(timeout=30)).get("event") == "publication":
            seen += 1
    ws.abort()


async def test_absurd_recover_parameters_are_ignored_counted_and_never_fail_the_upgrade(tmp_path):
    async with _served(tmp_path) as server:
        ws, subscribed = await _member(server)
        epoch = subscribed["epoch"]
        ws.abort()
        cases = [
            # More channels than a connection may have (128 by default): malformed.
            {f"r:{i}": {"epoch": epoch, "offset": 1} for i in range(140)},
            '{"room:lobby": {"epoch": "e", "offset": 1000000000000000000000000000000}}',
            {ROOM: {"epoch": epoch, "offset": -5}},
            {ROOM: {"epoch": "x" * 1000, "offset": 1}},
            {ROOM: [epoch, 1]},
            "[" * 2000,
            "not json at all",
        ]
        before = (await scrape(server))("wsrelay_history_recover_malformed_total")
        for recover in cases:
            ws, subscribed = await _member(server, recover)
            assert subscribed["recovered"] is False, recover
            ws.abort()
        metrics = await scrape(server)
        assert metrics("wsrelay_history_recover_malformed_total") == before + len(cases)
        # Well formed, but absurd: an offset far ahead of the channel, another epoch.
        for position in ({"epoch": epoch, "offset": (1 << 63) - 1}, {"epoch": "nope", "offset": 0}):
            ws, subscribed = await _member(server, {ROOM: position})
            assert (subscribed["recovered"], subscribed["epoch"]) == (False, epoch)
            ws.abort()
        assert (await scrape(server))("wsrelay_history_recoveries_total", outcome="not_recovered") == 2
        # Thousands of channels cannot even be sent: the request head is bounded (431).
        huge = quote(json.dumps({f"room:{i}": {"epoch": epoch, "offset": 1} for i in range(5000)}))
        answer = await http_request(server, f"/ws/member?ch={ROOM}&recover={huge}", upgrade=True)
        assert answer.status == 431, answer.status


async def test_a_thousand_clients_reconnecting_at_once_with_positions_are_bounded(tmp_path):
    async with _served(tmp_path, WSRELAY_RECOVERY_MAX="8") as server:
        first, subscribed = await _member(server)
        epoch = subscribed["epoch"]
        first.abort()
        await _publish(server, 5)
        assert (await scrape(server))("wsrelay_history_channels") == 1
        baseline = server.rss()
        behind = {ROOM: {"epoch": epoch, "offset": 0}}  # 6 publications since: the join and 5 messages
        with RssSampler(server.pid) as rss:
            clients = []
            for _ in range(10):
                clients += await asyncio.gather(*(_member(server, behind) for _ in range(100)))
            assert all(s["recovered"] is True and s["offset"] == 6 for _, s in clients)
            for ws, _ in clients[:50]:
                offsets = [json.loads(await ws.recv_text(timeout=30))["offset"] for _ in range(6)]
                assert offsets == [1, 2, 3, 4, 5, 6]
            # Further behind than WSRELAY_RECOVERY_MAX (8): not recovered, nothing replayed.
            await _publish(server, 5)
            late, subscribed = await _member(server, behind)
            assert (subscribed["recovered"], subscribed["offset"]) == (False, 12)
            for ws, _ in clients + [(late, None)]:
                ws.abort()
        metrics = await scrape(server)
        assert metrics("wsrelay_history_recoveries_total", outcome="recovered") == 1000
        # The history is bounded by history_size (10), whoever reads it, and 1,000
        # recoveries of 6 publications cost their connections, not more
        # (measured: about 10 MiB at the peak).
        assert metrics("wsrelay_history_bytes") < 10 * 200
        assert rss.peak - baseline < 64 * MiB, (rss.peak - baseline) / MiB
