"""Presence on one node over real sockets (docs/guide.md, "Presence"): the
entries of a namespace with ``presence: true`` (client, user, info), as
subscriptions begin and end for any reason, ``presence_stats`` (a user
with several connections counts once), join/leave events and their cap,
the namespace option; and the core's cluster side through its seam
(tests/fake_transport.py): what this node tells the others, and what it
holds of theirs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator
from urllib.parse import parse_qs

import pytest
import websockets

from tests import procs
from tests.apps import relay_app
from tests.fake_transport import FakeTransport, joined_node
from tests.harness import running, until
from wsrelay import App, Pid, channels, node, process
from wsrelay.client import APIError, AsyncClient
from wsrelay.config import build_app
from wsrelay.errors import ConfigError

ROOM = "room:lobby"


def presence_app(join_leave: bool = True, max_members: int = 1000) -> App:
    """/ws/chat?ch=a&ch=b&user=u&info={...}: a relay:member (it tells its
    client {"me": pid} on ws.join) granted those channels, each with that
    info; room:* has presence."""

    def handler(req: Any, res: Any) -> None:
        names = parse_qs(req.query_string).get("ch")
        info = req.query("info")
        grant: Any = names if info is None or names is None else {n: {"info": json.loads(info)} for n in names}
        res.relay(process.spawn("relay:member"), channels=grant, user=req.query("user"))

    app = relay_app(handler)
    app.channel_namespace("rooms", "room:*", presence=True, join_leave=join_leave, presence_max_members=max_members)
    app.channel_namespace("quiet", "quiet:*", presence=True)
    return app


API_KEY = "presence-key"


@contextlib.asynccontextmanager
async def served(**options: Any) -> AsyncIterator[Any]:
    async with running(presence_app(**options), api_key=API_KEY) as gw:
        try:
            yield gw
        finally:
            build_app({"version": "1.0", "entries": []}).install()


class Client:
    """A client of /ws/chat; ``pid`` once it has read its {"me": ...}, and
    the channel events it received before that."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pid = ""
        self.early: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, gw: Any, query: str) -> Client:
        client = cls(await websockets.connect(gw.url(f"/ws/chat?{query}")))
        while "me" not in (message := await client.recv()):
            client.early.append(message)
        client.pid = message["me"]
        return client

    async def recv(self) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), 10))


def entry(client: Client, user: Any = None, info: Any = None) -> dict[str, Any]:
    return {"client": client.pid, "user": user, "info": info or {}}


def by_client(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(answer["presence"], key=lambda e: e["client"])


def event(kind: str, who: dict[str, Any], channel: str = ROOM) -> dict[str, Any]:
    return {"channel": channel, "event": kind, "info": who}


# -- entries -----------------------------------------------------------------------------------


async def test_an_entry_appears_with_the_subscription_and_goes_with_it_whatever_ends_it():
    async with served(join_leave=False) as gw:
        assert await channels.presence(ROOM) == {"presence": []}
        assert await channels.presence_stats(ROOM) == {"clients": 0, "users": 0}
        ann = await Client.open(gw, f"ch={ROOM}&user=ann&info=%7B%22color%22%3A%22red%22%7D")
        anon = await Client.open(gw, f"ch={ROOM}")
        assert by_client(await channels.presence(ROOM)) == sorted(
            [entry(ann, "ann", {"color": "red"}), entry(anon)], key=lambda e: e["client"])
        # A process subscribes a connection, with info; then unsubscribes it.
        await channels.subscribe(anon.pid, "room:side", info={"seat": 3})
        assert (await channels.presence("room:side"))["presence"] == [entry(anon, None, {"seat": 3})]
        await channels.subscribe(anon.pid, "room:side", info={"seat": 4})  # already in: its info changes
        assert (await channels.presence("room:side"))["presence"] == [entry(anon, None, {"seat": 4})]
        assert channels.unsubscribe(anon.pid, "room:side") is True
        assert await channels.presence("room:side") == {"presence": []}
        # Closed: gone at once (by the time the server has seen it end).
        await ann.ws.close()
        await until(lambda: channels.subscribers(ROOM) == [Pid.parse(anon.pid)], what="ann to leave")
        assert (await channels.presence(ROOM))["presence"] == [entry(anon)]
        await anon.ws.close()
        await until(lambda: channels.active() == {}, what="the channels to be dropped")
        assert await channels.presence(ROOM) == {"presence": []}
        assert await channels.presence_stats(ROOM) == {"clients": 0, "users": 0}


async def test_stats_count_connections_and_distinct_users():
    async with served(join_leave=False) as gw:
        tabs = [await Client.open(gw, f"ch={ROOM}&user=ada") for _ in range(3)]
        bob = await Client.open(gw, f"ch={ROOM}&user=bob")
        anonymous = [await Client.open(gw, f"ch={ROOM}") for _ in range(2)]
        assert await channels.presence_stats(ROOM) == {"clients": 6, "users": 2}
        await tabs[0].ws.close()
        await bob.ws.close()
        await until(lambda: channels.active()[ROOM]["subscribers"] == 4, what="two to leave")
        assert await channels.presence_stats(ROOM) == {"clients": 4, "users": 1}
        for client in tabs[1:] + anonymous:
            await client.ws.close()


async def test_presence_is_refused_where_the_namespace_has_none():
    async with served():
        for call in (channels.presence, channels.presence_stats):
            with pytest.raises(ValueError, match="presence is not enabled"):
                await call("user:1")
            with pytest.raises(ValueError, match="position 4"):
                await call("room lobby")


async def test_the_server_api_answers_presence_and_presence_stats():
    async with served(join_leave=False) as gw, AsyncClient(gw.url("", scheme="http"), API_KEY) as api:
        assert await api.presence(ROOM) == {"presence": []}
        ada = await Client.open(gw, f"ch={ROOM}&user=ada&info=%7B%22n%22%3A1%7D")
        anon = await Client.open(gw, f"ch={ROOM}")
        assert by_client(await api.presence(ROOM)) == sorted([entry(ada, "ada", {"n": 1}), entry(anon)],
                                                              key=lambda e: e["client"])
        assert await api.presence_stats(ROOM) == {"clients": 2, "users": 1}
        for method in (api.presence, api.presence_stats):
            with pytest.raises(APIError) as info:
                await method("user:1")
            assert (info.value.code, info.value.status) == ("presence_not_enabled", 400)
            assert "'user:1'" in info.value.message
            with pytest.raises(APIError, match="channel: ") as info:
                await method("room lobby")
            assert info.value.code == "bad_request"
        await ada.ws.close()
        await anon.ws.close()


# -- join and leave ----------------------------------------------------------------------------


async def test_join_and_leave_events_reach_every_member():
    async with served() as gw:
        ann = await Client.open(gw, f"ch={ROOM}&user=ann")
        # The newcomer is a member as it joins: it hears its own join.
        assert ann.early == [event("join", entry(ann, "ann"))]
        bob = await Client.open(gw, f"ch={ROOM}&user=bob&info=%7B%22n%22%3A1%7D")
        joined = event("join", entry(bob, "bob", {"n": 1}))
        assert bob.early == [joined]
        assert await ann.recv() == joined
        # A subscription by a process, and its end.
        await channels.subscribe(ann.pid, "room:other")
        assert await ann.recv() == event("join", entry(ann, "ann"), "room:other")
        channels.unsubscribe(ann.pid, "room:other")
        assert await ann.recv() == {"channel": "room:other", "event": "unsubscribed"}
        await bob.ws.close()
        assert await ann.recv() == event("leave", entry(bob, "bob", {"n": 1}))
        # Nothing else came: the next message is this publication.
        channels.publish(ROOM, "end")
        assert await ann.recv() == {"channel": ROOM, "event": "publication", "data": "end"}
        await ann.ws.close()


async def test_without_join_leave_no_event_is_sent():
    async with served(join_leave=False) as gw:
        ann = await Client.open(gw, f"ch={ROOM}&user=ann")
        bob = await Client.open(gw, f"ch={ROOM}&user=bob")
        await bob.ws.close()
        await until(lambda: channels.active()[ROOM]["subscribers"] == 1, what="bob to leave")
        channels.publish(ROOM, "only this")
        assert ann.early == []
        assert await ann.recv() == {"channel": ROOM, "event": "publication", "data": "only this"}
        await ann.ws.close()


async def test_past_presence_max_members_join_and_leave_stop_and_stats_still_answer():
    async with served(max_members=2) as gw:
        first = await Client.open(gw, f"ch={ROOM}&user=u1")
        second = await Client.open(gw, f"ch={ROOM}&user=u2")
        assert await first.recv() == event("join", entry(second, "u2"))
        third = await Client.open(gw, f"ch={ROOM}&user=u3")  # the third member: no events
        assert third.early == []
        assert await channels.presence_stats(ROOM) == {"clients": 3, "users": 3}
        assert len((await channels.presence(ROOM))["presence"]) == 3
        await third.ws.close()  # from 3 members: no event
        await until(lambda: channels.active()[ROOM]["subscribers"] == 2, what="the third to leave")
        await second.ws.close()  # from 2: within the cap again
        assert await first.recv() == event("leave", entry(second, "u2"))
        await first.ws.close()


# -- the namespace option ----------------------------------------------------------------------


def _namespace(**fields: Any) -> dict[str, Any]:
    entry = {"name": "rooms", "kind": "channel.namespace", "pattern": "room:*", "presence": True, **fields}
    return {"version": "1.0", "entries": [entry]}


def test_presence_max_members_is_read_with_its_default():
    assert build_app(_namespace()).namespace_of("room:x").presence_max_members == 1000
    rooms = build_app(_namespace(join_leave=True, presence_max_members=50)).namespace_of("room:x")
    assert (rooms.presence, rooms.join_leave, rooms.presence_max_members) == (True, True, 50)
    assert rooms.options()["presence_max_members"] == 50


@pytest.mark.parametrize("value", [-1, "many", True, 1.5])
def test_a_bad_presence_max_members_is_named(value):
    with pytest.raises(ConfigError, match="presence_max_members"):
        build_app(_namespace(presence_max_members=value))


# -- the cluster side, through the seam (no NATS) ----------------------------------------------

B1 = "{b@cl:gateway|0x0000000700000001}"
B2 = "{b@cl:gateway|0x0000000700000002}"
C1 = "{c@cl:gateway|0x0000000300000001}"


@contextlib.contextmanager
def presence_node() -> Any:
    with joined_node(transport=FakeTransport(up={"b": 7, "c": 3})) as (cluster, fake):
        build_app(_namespace()).install()
        try:
            yield cluster, fake
        finally:
            build_app({"version": "1.0", "entries": []}).install()


async def test_the_other_nodes_entries_are_held_replaced_by_a_snapshot_and_dropped_with_their_node():
    with presence_node() as (cluster, _):
        cluster.on_presence("b", False, [["room:x", [[B1, "bob", None], [B2, None, {"k": 1}]], []]])
        cluster.on_presence("c", False, [["room:x", [[C1, "bob", None]], []], ["room:y", [[C1, "bob", None]], []]])
        assert by_client(await channels.presence("room:x")) == [
            {"client": B1, "user": "bob", "info": {}}, {"client": B2, "user": None, "info": {"k": 1}},
            {"client": C1, "user": "bob", "info": {}}]
        assert await channels.presence_stats("room:x") == {"clients": 3, "users": 1}
        # A change: present again with other info, and a leave (twice: no harm).
        cluster.on_presence("b", False, [["room:x", [[B1, "bob", {"away": True}]], [B2]]])
        cluster.on_presence("b", False, [["room:x", [], [B2]]])
        assert by_client(await channels.presence("room:x"))[0] == {"client": B1, "user": "bob",
                                                                    "info": {"away": True}}
        assert await channels.presence_stats("room:x") == {"clients": 2, "users": 1}
        # A snapshot replaces everything b had: B1 is gone, B2 is back.
        cluster.on_presence("b", True, [["room:y", [[B2, "eve", None]], []]])
        assert (await channels.presence("room:x"))["presence"] == [{"client": C1, "user": "bob", "info": {}}]
        assert await channels.presence_stats("room:y") == {"clients": 2, "users": 2}
        # c is lost: its entries go with it.
        cluster.on_node_down("c", 3, "noconnection")
        assert await channels.presence("room:x") == {"presence": []}
        assert (await channels.presence("room:y"))["presence"] == [{"client": B2, "user": "eve", "info": {}}]
        cluster.on_node_down("b", 7, "noconnection")
        from wsrelay._core.presence import here

        assert here() == (0, 0, 0)


async def test_malformed_changes_are_dropped_and_the_rest_kept():
    with presence_node() as (cluster, _):
        cluster.on_presence("b", False, [
            "junk", ["room:x", "joins", []], ["room:x", [[B1, 5, None], [B2, "ok", None], [7, None, None]], [9]],
            ["user:1", [[B1, "not here", None]], []],  # a channel without presence here
        ])
        assert (await channels.presence("room:x"))["presence"] == [{"client": B2, "user": "ok", "info": {}}]
        cluster.on_node_down("b", 7, "noconnection")


async def test_this_nodes_entries_are_announced_per_iteration_and_all_of_them_to_a_node_that_comes_up():
    with presence_node() as (cluster, fake):
        node().register_function("relay:member", procs.member)  # a fresh node knows no function yet
        async with running(presence_app(join_leave=False)) as gw:
            # (running() installed the app's namespaces: room:* has presence.)
            ann = await Client.open(gw, "ch=room:x&ch=user:1&user=ann")
            bob = await Client.open(gw, "ch=room:x")
            await until(lambda: len(fake.presences) >= 2, what="the announcements")
            sent = [(to, snapshot, [[name, sorted(joins), sorted(leaves)] for name, joins, leaves in changes])
                    for to, snapshot, changes in fake.presences]
            assert sent == [(None, False, [["room:x", [[ann.pid, "ann", None]], []]]),
                            (None, False, [["room:x", [[bob.pid, None, None]], []]])]
            fake.presences.clear()
            cluster.on_node_up("c", 3)
            assert fake.presences == [("c", True, [["room:x", [[ann.pid, "ann", None], [bob.pid, None, None]],
                                                    []]])]
            fake.presences.clear()
            await bob.ws.close()
            await until(lambda: fake.presences, what="bob's leave to be announced")
            assert fake.presences == [(None, False, [["room:x", [], [bob.pid]]])]
            await ann.ws.close()
            await until(lambda: channels.active() == {}, what="the channels to be dropped")
