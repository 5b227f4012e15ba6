"""Channels on one node over real sockets (docs/guide.md, "Channels"): names,
the handler's grant in X-WS-Relay (subscribed before ws.join), the
envelope, publish/subscribe/unsubscribe from processes, leaving when a
connection ends, the limits, compression, namespaces and ``active()``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from typing import Any, AsyncIterator
from urllib.parse import parse_qs

import orjson
import pytest
import websockets

import wsrelay
from tests.apps import CHANNELS_APP_YAML, relay_app, write_channels_app
from tests.harness import ServerProcess, expect, run_to_exit, running, serve_command, until
from tests.procs import relay_to
from tests.wsclient import RSV1, RawWebSocket
from wsrelay import channels, process
from wsrelay._core.relayspec import parse_relay_header, set_max_channels_per_connection
from wsrelay.config import build_app
from wsrelay.errors import ConfigError

LOBBY = "room:lobby"


def grant_app(room_pid: Any) -> Any:
    """Relays /ws/chat?ch=a&ch=b&user=u to ``room_pid`` with that grant."""

    def handler(req: Any, res: Any) -> None:
        query = parse_qs(req.query_string)
        res.relay(room_pid, channels=query.get("ch"), user=req.query("user"))

    return relay_app(handler)


def envelope(channel: str, data: Any) -> dict[str, Any]:
    return {"channel": channel, "event": "publication", "data": data}


async def recv_json(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


@contextlib.asynccontextmanager
async def channel_room() -> AsyncIterator[wsrelay.Pid]:
    """The target of these tests (tests/procs.py), publishing joins to LOBBY."""
    pid = process.spawn("relay:channel_room", None, process.self(), LOBBY)
    try:
        yield pid
    finally:
        process.send(pid, "stop")


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["room:lobby", "user:42", "a", "A-z_0.9:@/=-", "x" * 255])
def test_good_names(name):
    assert channels.check_channel_name(name) == name


@pytest.mark.parametrize("name, named", [("room lobby", "' ' at position 4"), ("", "1 to 255"),
                                         ("x" * 256, "got 256"), ("é", "'é' at position 0"),
                                         ("a#b", "'#' at position 1"), (5, "must be a str")])
async def test_bad_names_are_refused_naming_the_problem(name, named):
    with pytest.raises(ValueError, match=named):
        channels.check_channel_name(name)
    with pytest.raises(ValueError, match=named):
        channels.publish(name, 1)


# -- the header ---------------------------------------------------------------------------------


def test_the_header_takes_a_list_or_an_object_and_a_user():
    pid = str(wsrelay.Pid("h", 9))
    spec = parse_relay_header(json.dumps({"target_pid": pid, "channels": ["a", "b"], "user": "ann"}))
    assert (spec.channels, spec.user) == ({"a": None, "b": None}, "ann")
    spec = parse_relay_header(json.dumps({"target_pid": pid, "channels": {"a": {"info": {"n": 1}}, "b": {}}}))
    assert spec.channels == {"a": {"n": 1}, "b": None}
    for bad, named in [({"channels": "a"}, "list of names"), ({"channels": ["a b"]}, "' ' at position 1"),
                       ({"channels": {"a": {"x": 1}}}, "optional \"info\""), ({"user": 3}, "user must be")]:
        with pytest.raises(wsrelay.RelayHeaderError, match=named):
            parse_relay_header(json.dumps({"target_pid": pid, **bad}))


def test_ws_control_refuses_the_grant_fields():
    from wsrelay._core.relayspec import parse_control_payload

    for field in ("channels", "user"):
        with pytest.raises(wsrelay.RelaySettingsError, match=f"cannot change {field}"):
            parse_control_payload({field: ["a"]})


def test_res_relay_sets_channels_and_user():
    res = wsrelay.Response()
    res.relay(wsrelay.Pid("h", 9), channels=["a"], user="ann")
    assert json.loads(res.headers["X-WS-Relay"])["channels"] == ["a"]
    with pytest.raises(TypeError, match="channels"):
        res.relay(wsrelay.Pid("h", 9), channels="a")
    with pytest.raises(wsrelay.RelayHeaderError, match="position 1"):
        res.relay(wsrelay.Pid("h", 9), channels=["a b"])


async def test_a_granted_connection_is_subscribed_before_the_target_sees_ws_join():
    async with channel_room() as room:
        async with running(grant_app(room)) as gw:
            async with websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&ch=user:1&user=ann")) as ws:
                client = await expect("joined")
                # The target published on ws.join: the client was already in.
                assert await recv_json(ws) == envelope(LOBBY, {"joined": str(client)})
                assert channels.active() == {LOBBY: {"subscribers": 1}, "user:1": {"subscribers": 1}}
                assert channels.subscribers(LOBBY) == [client]
            assert await expect("left") == client
            await until(lambda: channels.active() == {}, what="the channels to be dropped")


async def test_a_bad_grant_in_the_header_is_a_500_naming_it_and_nothing_is_left():
    async with channel_room() as room:
        def handler(req: Any, res: Any) -> None:
            relay_to(res, room, channels=json.loads(req.query("ch")))

        async with running(relay_app(handler)) as gw:
            for grant, named in [(["ok", "bad name"], "position 3"), ([f"c{i}" for i in range(129)], "limit of 128")]:
                with pytest.raises(websockets.InvalidStatus) as info:
                    await websockets.connect(gw.url("/ws/chat?ch=" + json.dumps(grant).replace(" ", "%20")))
                assert info.value.response.status_code == 500
                assert named in info.value.response.body.decode()
                assert channels.active() == {}


# -- publish, subscribe, unsubscribe ------------------------------------------------------------


async def test_publish_reaches_each_subscriber_once_in_order_and_no_one_else():
    async with channel_room() as room:
        async with running(grant_app(room)) as gw:
            async with websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}")) as a, \
                    websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&ch=other")) as b, \
                    websockets.connect(gw.url("/ws/chat?ch=other")) as c:
                pids = [await expect("joined") for _ in range(3)]
                for ws in (a, b):
                    # The joins of those after it, published by the target.
                    while (await recv_json(ws))["data"] != {"joined": str(pids[2])}:
                        pass
                for i in range(20):
                    assert channels.publish(LOBBY, {"i": i, "text": "héllo"}) == {}
                channels.publish("nobody", 1)  # no subscribers: nothing, no channel made
                assert "nobody" not in channels.active()
                for ws in (a, b):
                    got = [await recv_json(ws) for _ in range(20)]
                    assert got == [envelope(LOBBY, {"i": i, "text": "héllo"}) for i in range(20)]
                channels.publish("other", [1, None, "x"])
                for ws in (b, c):
                    assert await recv_json(ws) == envelope("other", [1, None, "x"])
                # a received nothing else: the next thing it gets is this.
                channels.publish(LOBBY, "end")
                assert await recv_json(a) == envelope(LOBBY, "end")


async def test_publish_refuses_data_that_is_not_json():
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        channels.publish(LOBBY, {"x": object()})


async def test_subscribe_and_unsubscribe_from_a_process():
    async with channel_room() as room:
        async with running(grant_app(room)) as gw:
            async with websockets.connect(gw.url("/ws/chat")) as ws:
                client = await expect("joined")
                assert channels.active() == {}
                sub = await channels.subscribe(client, "news", info={"k": 1})
                assert (sub.channel, sub.recovered, sub.offset, sub.epoch) == ("news", False, None, None)
                await channels.subscribe(str(client), "news")  # already in: no change
                assert channels.active() == {"news": {"subscribers": 1}}
                channels.publish("news", "n1")
                assert await recv_json(ws) == envelope("news", "n1")
                assert channels.unsubscribe(client, "news") is True
                assert await recv_json(ws) == {"channel": "news", "event": "unsubscribed"}
                assert channels.unsubscribe(client, "news") is False
                assert channels.active() == {}
                channels.publish("news", "n2")
                # Messages sent with ws.send are untouched.
                process.send(client, "ws.send", {"type": "text", "data": "plain"})
                assert await ws.recv() == "plain"
                with pytest.raises(ValueError, match="not a WebSocket connection"):
                    await channels.subscribe(room, "news")
                with pytest.raises(ProcessLookupError, match="which this node does not reach"):
                    await channels.subscribe(wsrelay.Pid("h", 7, node="elsewhere"), "news")
            await expect("left")
            with pytest.raises(ProcessLookupError, match="not alive"):
                await channels.subscribe(client, "news")
            assert channels.unsubscribe(client, "news") is False


async def test_the_limit_per_connection():
    async with channel_room() as room:
        set_max_channels_per_connection(3)
        try:
            async with running(grant_app(room)) as gw:
                async with websockets.connect(gw.url("/ws/chat?ch=a&ch=b")) as _ws:
                    client = await expect("joined")
                    await channels.subscribe(client, "c")
                    with pytest.raises(ValueError, match="limit .WSRELAY_MAX_CHANNELS_PER_CONNECTION"):
                        await channels.subscribe(client, "d")
                    await channels.subscribe(client, "c")  # already in: not over
                    assert sorted(channels.active()) == ["a", "b", "c"]
                await expect("left")
        finally:
            set_max_channels_per_connection(128)
        assert channels.active() == {}


async def test_connections_leave_their_channels_however_they_end():
    async with channel_room() as room:
        async with running(grant_app(room)) as gw:
            closed = await websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&ch=x"))
            aborted = await websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}"))
            killed = await websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&ch=y"))
            pids = [await expect("joined") for _ in range(3)]
            assert channels.active(LOBBY) == {LOBBY: {"subscribers": 3}}
            await closed.close()
            aborted.transport.abort()
            process.terminate(pids[2])
            for _ in range(3):
                await expect("left")
            await until(lambda: channels.active() == {}, what="every channel to be dropped")
            await killed.close()


async def test_ten_thousand_channels_created_and_dropped_leave_nothing():
    async with channel_room() as room:
        async with running(grant_app(room)) as gw:
            # Its 10,000 unsubscribed events are read: no backpressure at the close.
            async with websockets.connect(gw.url("/ws/chat"), max_queue=None) as _ws:
                client = await expect("joined")
                set_max_channels_per_connection(10_000)
                try:
                    for i in range(10_000):
                        await channels.subscribe(client, f"c:{i}")
                    assert len(channels.active("c:*")) == 10_000
                    assert len(channels.active("c:99*")) == 111  # c:99, c:990-999, c:9900-9999
                    for i in range(10_000):
                        assert channels.unsubscribe(client, f"c:{i}")
                finally:
                    set_max_channels_per_connection(128)
                assert channels.active() == {}
            await expect("left")


async def test_compressed_and_plain_subscribers_both_receive_a_publication():
    async with channel_room() as room:
        async with running(grant_app(room), compression=True, compression_min_size=0) as gw:
            async with websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}")) as packed, \
                    websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}"), compression=None) as plain:
                assert "permessage-deflate" in packed.response.headers["Sec-WebSocket-Extensions"]
                assert "Sec-WebSocket-Extensions" not in plain.response.headers
                await expect("joined")
                await expect("joined")
                text = "wörd " * 500
                channels.publish(LOBBY, text)
                for ws in (packed, plain):
                    while (got := await recv_json(ws))["data"] != text:
                        assert "joined" in got["data"]


async def test_a_publication_is_the_frame_a_group_send_of_its_envelope_is():
    """Compressed and plain subscribers get the frames Group.send builds for
    the same text: the same FanOut, compressed once for the ones that agreed."""
    async with channel_room() as room:
        async with running(grant_app(room), compression=True, compression_min_size=0) as gw:
            path = f"/ws/chat?ch={LOBBY}"
            packed = [await RawWebSocket.connect(gw, path, {"Sec-WebSocket-Extensions": "permessage-deflate"})
                      for _ in range(2)]
            plain = await RawWebSocket.connect(gw, path)
            pids = [await expect("joined") for _ in range(3)]

            async def publication(ws: RawWebSocket) -> Any:
                while True:
                    frame = await ws.recv_frame()
                    text = _inflate(frame.payload) if frame.rsv & RSV1 else frame.payload
                    if b'"publication","data":"' in text:
                        return frame

            text = "wörd " * 300
            channels.publish(LOBBY, text)
            a, b, c = [await publication(ws) for ws in (*packed, plain)]
            assert a.rsv & RSV1 and b.rsv & RSV1 and not c.rsv & RSV1
            assert a.payload == b.payload
            body = orjson.dumps(envelope(LOBBY, text))
            assert _inflate(a.payload) == c.payload == body
            group = wsrelay.Group()
            for pid in pids:
                group.add(pid)
            assert group.send({"type": "text", "data": body.decode()}) == 3
            assert [(await ws.recv_frame()).payload for ws in (*packed, plain)] == [a.payload, a.payload, body]
            for ws in (*packed, plain):
                ws.send_close(1000)
                await ws.expect_close()
            for _ in range(3):
                await expect("left")


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    return d.decompress(data + b"\x00\x00\xff\xff") + d.flush()


# -- namespaces ---------------------------------------------------------------------------------

NAMESPACES_YAML = {
    "version": "1.0",
    "namespace": "app",
    "entries": [
        {"name": "rooms", "kind": "channel.namespace", "pattern": "room:*", "history_size": 100,
         "history_ttl": "5m", "presence": True, "join_leave": True},
        {"name": "all", "kind": "channel.namespace", "pattern": "*"},
    ],
}


async def test_namespaces_are_read_from_the_file_first_match_wins():
    app = build_app(NAMESPACES_YAML)
    rooms = app.namespace_of("room:lobby")
    assert (rooms.id, rooms.history_size, rooms.history_ttl, rooms.presence, rooms.join_leave) == (
        "app:rooms", 100, 300.0, True, True)
    assert app.namespace_of("user:1").id == "app:all"
    app.install()
    try:
        assert channels.namespace_of("room:x")["namespace"] == "app:rooms"
        assert channels.namespace_of("user:1")["history_size"] == 0
    finally:
        build_app({"version": "1.0", "entries": []}).install()
    assert channels.namespace_of("room:x") is None


@pytest.mark.parametrize("field, value, named", [
    ("histroy_size", 1, "did you mean history_size"),
    ("history_size", -1, "history_size"),
    ("history_ttl", "soon", "history_ttl"),
    ("presence", "yes", "presence"),
    ("pattern", "", "pattern"),
])
def test_namespace_errors_name_the_field(field, value, named):
    entry = {"name": "rooms", "kind": "channel.namespace", "pattern": "room:*", field: value}
    with pytest.raises(ConfigError, match=named):
        build_app({"version": "1.0", "entries": [entry]})


# -- a served app ---------------------------------------------------------------------------------


async def test_wsrelay_serve_grants_and_publishes(tmp_path):
    async with ServerProcess(serve_command(write_channels_app(tmp_path))) as server:
        async with websockets.connect(server.url(f"/ws/chat?ch={LOBBY}&user=ann")) as ann:
            # room:* keeps history in this app (docs/guide.md, "History and recovery").
            subscribed = await recv_json(ann)
            assert (subscribed["channel"], subscribed["event"]) == (LOBBY, "subscribed")
            first = await recv_json(ann)
            assert first["channel"] == LOBBY and "joined" in first["data"]
            async with websockets.connect(server.url("/ws/chat?ch=elsewhere")) as outsider:
                assert (await recv_json(ann))["data"]["joined"] != first["data"]["joined"]
                await outsider.send("hello")  # published to LOBBY: ann hears it, the outsider not
                assert await recv_json(ann) == {**envelope(LOBBY, "hello"), "offset": first["offset"] + 2,
                                                "epoch": subscribed["epoch"]}
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(server.url("/ws/chat?ch=a%20b"))
            assert info.value.response.status_code == 500
        assert await server.stopped() == 0, server.output()


def test_wsrelay_serve_names_a_bad_namespace_field(tmp_path):
    bad = CHANNELS_APP_YAML.replace("presence: true", "presense: true")
    done = run_to_exit(serve_command(write_channels_app(tmp_path, bad)))
    assert done.returncode == 2
    assert "entry 'ch:rooms', field 'presense'" in done.stderr and "did you mean presence" in done.stderr, done.stderr
