"""History and recovery on one node over real sockets (docs/guide.md,
"History and recovery"): offsets and the epoch in the envelope, the
``subscribed`` event, recovery at the grant from the ``recover`` query
parameter (and every reason it does not recover), ``channels.history``, the
bounds of a channel's history, and a new epoch when history is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Iterator, Optional
from urllib.parse import parse_qs, quote

import pytest
import websockets

import wsrelay
from tests.apps import relay_app, write_channels_app
from tests.harness import ServerProcess, drain_inbox, expect, serve_command, until
from wsrelay import channels, process
from wsrelay._core import history as core_history

ROOM = "room:lobby"
SIZE = 5


def history_app(size: int = SIZE, ttl: float = 60.0) -> Any:
    """Relays /ws/chat?ch=a&ch=b to a sink process with that grant; channels
    ``room:*`` keep ``size`` publications for ``ttl`` seconds."""

    observer = process.self()

    def handler(req: Any, res: Any) -> None:
        res.relay(process.spawn("test:history_sink", None, observer), channels=parse_qs(req.query_string).get("ch"))

    app = relay_app(handler)
    app.channel_namespace("rooms", "room:*", history_size=size, history_ttl=ttl)
    app.channel_namespace("plain", "plain:*")
    return app


@wsrelay.register("test:history_sink")
async def history_sink(observer: wsrelay.Pid) -> None:
    """Tells ``observer`` of its client ("joined", client); ends on ws.leave."""
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            process.send(observer, "joined", msg.payload["client_pid"])
        elif msg.topic == "ws.leave":
            return


@pytest.fixture(autouse=True)
def no_history_left() -> Iterator[None]:
    """Each test begins with no channel history, as a fresh process would."""
    core_history.forget()
    yield
    core_history.forget()


@contextlib.contextmanager
def limits(max_bytes: int = 1 << 20, recovery_max: int = 300) -> Iterator[None]:
    core_history.configure(max_bytes, recovery_max)
    try:
        yield
    finally:
        core_history.configure(1 << 20, 300)


def recover_query(positions: dict[str, Any]) -> str:
    return "&recover=" + quote(json.dumps(positions))


async def recv_json(ws: Any, timeout: float = 10) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def nothing_more(ws: Any, channel: str = ROOM) -> None:
    """No message is waiting: a publication to ``channel``, which the client
    is in, is the next thing it reads."""
    channels.publish(channel, "probe")
    message = await recv_json(ws)
    assert (message["channel"], message["data"]) == (channel, "probe"), message


@contextlib.asynccontextmanager
async def client(gw: Any, *names: str, recover: Optional[dict[str, Any]] = None) -> AsyncIterator[Any]:
    query = "&".join(f"ch={name}" for name in names) + (recover_query(recover) if recover is not None else "")
    async with websockets.connect(gw.url(f"/ws/chat?{query}"), max_queue=None) as ws:
        yield ws


def publication(data: Any, offset: int, epoch: str, channel: str = ROOM) -> dict[str, Any]:
    return {"channel": channel, "event": "publication", "data": data, "offset": offset, "epoch": epoch}


# -- offsets, the epoch and the subscribed event ----------------------------------------------


async def test_publications_carry_offsets_growing_by_one_and_the_epoch():
    async with running_app() as gw, client(gw, ROOM, "plain:x") as ws:
        subscribed = await recv_json(ws)
        epoch = subscribed["epoch"]
        assert subscribed == {"channel": ROOM, "event": "subscribed", "offset": 0, "epoch": epoch,
                              "recovered": False}
        results = [channels.publish(ROOM, {"n": n}) for n in range(1, 8)]
        assert results == [{"offset": n, "epoch": epoch} for n in range(1, 8)]
        for n in range(1, 8):
            assert await recv_json(ws) == publication({"n": n}, n, epoch)
        # A channel without history: no subscribed event, no offset, {} from publish.
        assert channels.publish("plain:x", 1) == {}
        assert await recv_json(ws) == {"channel": "plain:x", "event": "publication", "data": 1}


async def test_a_subscription_begins_with_subscribed_at_the_latest_offset():
    async with running_app() as gw:
        for n in range(3):
            channels.publish(ROOM, n)
        async with client(gw) as ws:
            pid = await expect("joined")
            sub = await channels.subscribe(pid, ROOM)
            assert (sub.channel, sub.recovered, sub.offset) == (ROOM, False, 3)
            assert await recv_json(ws) == {"channel": ROOM, "event": "subscribed", "offset": 3,
                                           "epoch": sub.epoch, "recovered": False}
            channels.publish(ROOM, "live")
            assert await recv_json(ws) == publication("live", 4, sub.epoch)
            again = await channels.subscribe(pid, ROOM)  # already in it: no second event
            assert (again.offset, again.epoch) == (4, sub.epoch)
            plain = await channels.subscribe(pid, "plain:y")
            assert (plain.recovered, plain.offset, plain.epoch) == (False, None, None)
            await nothing_more_after_probe(ws, pid)


async def nothing_more_after_probe(ws: Any, pid: wsrelay.Pid) -> None:
    await channels.subscribe(pid, "room:probe")
    assert (await recv_json(ws))["event"] == "subscribed"
    await nothing_more(ws, "room:probe")


# -- recovery ---------------------------------------------------------------------------------


async def test_a_client_that_reconnects_gets_exactly_what_it_missed_then_live():
    async with running_app(size=100) as gw:
        async with client(gw, ROOM) as ws:
            epoch = (await recv_json(ws))["epoch"]
            channels.publish(ROOM, "seen")
            last = (await recv_json(ws))["offset"]
        for n in range(10):
            channels.publish(ROOM, n)
        async with client(gw, ROOM, recover={ROOM: {"epoch": epoch, "offset": last}}) as ws:
            assert await recv_json(ws) == {"channel": ROOM, "event": "subscribed", "offset": last + 10,
                                           "epoch": epoch, "recovered": True}
            for n in range(10):
                assert await recv_json(ws) == publication(n, last + 1 + n, epoch)
            channels.publish(ROOM, "live")
            assert await recv_json(ws) == publication("live", last + 11, epoch)
        counters = wsrelay.node().counters
        assert counters.history_recovered >= 1


async def test_recovery_at_the_latest_offset_gives_nothing_but_is_recovered():
    async with running_app() as gw:
        result = channels.publish(ROOM, "x")
        async with client(gw, ROOM, recover={ROOM: {"epoch": result["epoch"], "offset": 1}}) as ws:
            assert (await recv_json(ws))["recovered"] is True
            await nothing_more(ws)


@pytest.mark.parametrize("case", ["other_epoch", "trimmed_by_size", "ahead", "over_recovery_max", "expired"])
async def test_what_cannot_be_recovered_gives_recovered_false_and_live_only(case):
    ttl = 0.3 if case == "expired" else 60.0
    async with running_app(size=SIZE, ttl=ttl) as gw:
        with limits(recovery_max=3):
            epoch = channels.publish(ROOM, 0)["epoch"]
            position = {"epoch": epoch, "offset": 1}
            if case == "other_epoch":
                position["epoch"] = "another"
            elif case == "trimmed_by_size":
                for n in range(SIZE + 1):
                    channels.publish(ROOM, n)
                position["offset"] = 0  # offsets 1 and 2 are gone; 3 would still be there
                with limits(recovery_max=100):
                    await expect_not_recovered(gw, position, SIZE + 2, epoch)
                return
            elif case == "ahead":
                position["offset"] = 5
            elif case == "over_recovery_max":
                for n in range(4):
                    channels.publish(ROOM, n)
            elif case == "expired":
                channels.publish(ROOM, 1)
                await asyncio.sleep(0.4)
                with limits(recovery_max=300):
                    await expect_not_recovered(gw, position, 2, epoch)
                return
            await expect_not_recovered(gw, position, core_history.channel_log(ROOM).offset, epoch)
        assert wsrelay.node().counters.history_not_recovered >= 1


async def expect_not_recovered(gw: Any, position: dict[str, Any], latest: int, epoch: str) -> None:
    async with client(gw, ROOM, recover={ROOM: position}) as ws:
        assert await recv_json(ws) == {"channel": ROOM, "event": "subscribed", "offset": latest, "epoch": epoch,
                                       "recovered": False}
        channels.publish(ROOM, "live")
        assert await recv_json(ws) == publication("live", latest + 1, epoch)


async def test_a_position_for_a_channel_not_granted_recovers_nothing():
    async with running_app() as gw:
        epoch = channels.publish(ROOM, "secret")["epoch"]
        other = channels.publish("room:other", "mine")["epoch"]
        recover = {ROOM: {"epoch": epoch, "offset": 0}, "room:other": {"epoch": other, "offset": 0}}
        async with client(gw, "room:other", recover=recover) as ws:
            assert (await recv_json(ws))["recovered"] is True
            assert await recv_json(ws) == publication("mine", 1, other, "room:other")
            channels.publish("room:other", "next")
            assert (await recv_json(ws))["data"] == "next"


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"room:lobby": 5}', '{"room:lobby": {"epoch": "e"}}',
                                 '{"room:lobby": {"epoch": 1, "offset": 1}}',
                                 '{"room:lobby": {"epoch": "e", "offset": -1}}',
                                 '{"room:lobby": {"epoch": "e", "offset": 1e300}}',
                                 '{"room:lobby": {"epoch": "e", "offset": 99999999999999999999999}}',
                                 '{"bad name": {"epoch": "e", "offset": 1}}'])
async def test_a_malformed_recover_is_ignored_counted_and_the_upgrade_goes_on(raw):
    async with running_app() as gw:
        before = wsrelay.node().counters.history_recover_malformed
        async with websockets.connect(gw.url(f"/ws/chat?ch={ROOM}&recover={quote(raw)}")) as ws:
            assert (await recv_json(ws))["recovered"] is False
        assert wsrelay.node().counters.history_recover_malformed == before + 1


async def test_recover_naming_more_channels_than_a_connection_may_have_is_malformed():
    from wsrelay._core.relayspec import max_channels_per_connection

    many = {f"room:{i}": {"epoch": "e", "offset": 1} for i in range(max_channels_per_connection() + 1)}
    with pytest.raises(ValueError, match="over the limit"):
        core_history.parse_recover(json.dumps(many), max_channels_per_connection())


# -- channels.history -------------------------------------------------------------------------


async def test_history_gives_what_is_kept_oldest_first_since_and_limit():
    async with running_app(size=SIZE):
        for n in range(1, 8):
            epoch = channels.publish(ROOM, {"n": n})["epoch"]
        whole = await channels.history(ROOM)
        assert whole == {"epoch": epoch, "offset": 7,
                         "publications": [{"offset": n, "epoch": epoch, "data": {"n": n}} for n in range(3, 8)]}
        assert [p["offset"] for p in (await channels.history(ROOM, since=4))["publications"]] == [5, 6, 7]
        assert [p["offset"] for p in (await channels.history(ROOM, since=4, limit=2))["publications"]] == [5, 6]
        assert (await channels.history(ROOM, since=7))["publications"] == []
        fresh = await channels.history("room:never")
        assert (fresh["offset"], fresh["publications"]) == (0, [])
        with pytest.raises(ValueError, match="no history"):
            await channels.history("plain:x")
        with pytest.raises(ValueError, match="since"):
            await channels.history(ROOM, since=-1)
        with pytest.raises(ValueError, match="limit"):
            await channels.history(ROOM, limit="3")


async def test_history_max_bytes_bounds_a_channel_whatever_its_size():
    async with running_app(size=1000):
        with limits(max_bytes=2000):
            for _ in range(100):
                channels.publish(ROOM, "x" * 100)
            kept = (await channels.history(ROOM))["publications"]
            assert 10 <= len(kept) < 20
            assert [p["offset"] for p in kept] == list(range(101 - len(kept), 101))
            assert core_history.logs()[1] <= 2000


async def test_the_kept_publications_are_the_latest_in_order_as_the_history_grows_and_wraps():
    # 20 kept: the Log's ring grows (8, 16, 20 slots) and then wraps around.
    async with running_app(size=20):
        for last in (1, 7, 8, 9, 16, 17, 20, 21, 39, 40, 41, 75):
            while channels.publish(ROOM, {"n": "x"})["offset"] < last:
                pass
            kept = (await channels.history(ROOM))["publications"]
            assert [p["offset"] for p in kept] == list(range(max(1, last - 19), last + 1)), last


@pytest.mark.parametrize("epoch, offset", [("0badcafe", 2**63 - 3), ('an "epoch" \\ \u00e9', 41)])
async def test_an_envelope_is_the_json_of_its_fields_at_any_offset_and_epoch(epoch, offset):
    # A Log taken over (as a cluster's keeper does) at a large offset, or
    # with an epoch that JSON escapes: the publication's envelope is still
    # exactly the JSON of its fields.
    async with running_app() as gw, client(gw, ROOM) as ws:
        await recv_json(ws)  # subscribed, to the first Log
        core_history.adopt(ROOM, SIZE, 60.0, epoch, offset, [])
        assert channels.publish(ROOM, {"n": 1}) == {"offset": offset + 1, "epoch": epoch}
        raw = await asyncio.wait_for(ws.recv(), 10)
        assert json.loads(raw) == publication({"n": 1}, offset + 1, epoch)
        assert raw == json.dumps(publication({"n": 1}, offset + 1, epoch), separators=(",", ":"), ensure_ascii=False)


async def test_an_idle_history_is_dropped_and_comes_back_with_a_new_epoch():
    async with running_app(ttl=0.2) as gw:
        first = channels.publish(ROOM, 1)
        await until(lambda: core_history.logs()[0] == 0, what="the idle history dropped")
        second = channels.publish(ROOM, 2)
        assert second["offset"] == 1 and second["epoch"] != first["epoch"]
        # While the channel has a subscriber here its history stays, with its epoch.
        async with client(gw, ROOM) as ws:
            epoch = (await recv_json(ws))["epoch"]
            await asyncio.sleep(0.5)
            assert channels.publish(ROOM, 3)["epoch"] == epoch


async def test_a_restarted_server_is_a_new_epoch(tmp_path):
    path = write_channels_app(tmp_path)
    epochs = []
    for _ in range(2):
        async with ServerProcess(serve_command(path)) as server:
            async with websockets.connect(server.url(f"/ws/chat?ch={ROOM}")) as ws:
                subscribed = await recv_json(ws)
                assert subscribed["event"] == "subscribed"
                joined = await recv_json(ws)  # the room publishes each join
                assert joined["offset"] == subscribed["offset"] + 1 and joined["epoch"] == subscribed["epoch"]
                epochs.append(subscribed["epoch"])
            assert await server.stopped() == 0, server.output()
    assert epochs[0] != epochs[1]


@contextlib.asynccontextmanager
async def running_app(size: int = SIZE, ttl: float = 60.0) -> AsyncIterator[Any]:
    from tests.harness import running

    async with running(history_app(size, ttl)) as gw:
        yield gw
    await drain_inbox()
