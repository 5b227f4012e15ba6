"""The websocket_relay middleware at the handshake (docs/guide.md sections 3,
7 and 8), over real
sockets against a running gateway: origins, the handler's response, the
X-WS-Relay header and every way it can be wrong, and invalid upgrades."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Optional

import pytest

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running
from tests.procs import relay_to
from tests.wsclient import HandshakeRefused, RawWebSocket, http_request
from wsrelay import process

PATH = "/ws/chat"


class Handler:
    """An endpoint that records each call, spawns a relay:recorder and sets
    X-WS-Relay from ``relay(pid)`` (no header when it returns None)."""

    def __init__(self, relay: Optional[Callable[[Any], Optional[str]]] = None,
                 extra: Optional[Callable[[Any, Any], None]] = None, spawn: bool = True) -> None:
        self.calls: list[dict] = []
        self.spawned: list[Any] = []
        self.relay = relay if relay is not None else (lambda pid: json.dumps({"target_pid": str(pid)}))
        self.extra = extra
        self.spawn = spawn

    def __call__(self, req: Any, res: Any) -> None:
        self.calls.append({"method": req.method, "path": req.path})
        pid = None
        if self.spawn:
            pid = process.spawn("relay:recorder", None, process.self())
            self.spawned.append(pid)
        if self.extra is not None:
            self.extra(req, res)
        value = self.relay(pid)
        if value is not None:
            res.header("X-WS-Relay", value)


def count() -> int:
    return wsrelay.node().process_count()


async def upgrade_and_close(gw: Any, headers: Any = None, path: str = PATH) -> RawWebSocket:
    """Upgrade (must be 101), see ws.join reach the target, close cleanly and
    see ws.leave; returns the client (its ``response`` is the 101)."""
    ws = await RawWebSocket.connect(gw, path, headers)
    assert ws.response.status == 101
    _, target = await expect("ready")
    topic, payload, sender = await expect("target")
    assert topic == "ws.join" and sender == payload["client_pid"]
    close = await ws.close_handshake(1000)
    assert close.close_code == 1000
    topic, payload, _ = await expect("target")
    assert (topic, payload["reason"]) == ("ws.leave", "client_closed")
    assert not process.is_alive(target)
    return ws


async def refused(gw: Any, headers: Any = None, path: str = PATH, **kw: Any) -> Any:
    """The non-101 answer to an upgrade request."""
    with pytest.raises(HandshakeRefused) as info:
        ws = await RawWebSocket.connect(gw, path, headers, **kw)
        ws.abort()
    return info.value.response


# -- origins (guide section 7) -------------------------------------------------------------------------------

ORIGIN_CASES = [
    # (configured patterns, Origin, allowed)
    ("https://app.example.com", "https://app.example.com", True),
    ("https://app.example.com", "HTTPS://App.Example.COM", True),
    ("https://app.example.com", "https://app.example.com:443", True),
    ("https://app.example.com", "http://app.example.com", False),
    ("https://app.example.com", "https://app.example.com:8443", False),
    ("https://app.example.com", "https://evil.example.com", False),
    ("https://app.example.com", "https://app.example.com.evil.org", False),
    ("https://app.example.com", "null", False),
    ("https://app.example.com", "app.example.com", False),             # no scheme: not an origin
    ("https://app.example.com", "https://app.example.com/path", False),  # a path: not an origin
    ("https://app.example.com", "", False),
    ("HTTPS://APP.EXAMPLE.COM", "https://app.example.com", True),
    # without a scheme: host[:port], any scheme
    ("app.example.com:8443", "https://app.example.com:8443", True),
    ("app.example.com:8443", "http://app.example.com:8443", True),
    ("app.example.com:8443", "https://app.example.com", False),
    ("app.example.com:8443", "https://app.example.com:9443", False),
    ("app.example.com", "http://APP.example.com", True),
    ("app.example.com", "http://other.example.com", False),
    # * for subdomains
    ("https://*.example.com", "https://a.example.com", True),
    ("https://*.example.com", "https://A.B.Example.com", True),
    ("https://*.example.com", "https://example.com", False),
    ("https://*.example.com", "https://evil-example.com", False),
    ("https://*.example.com", "https://a.example.com.evil.org", False),
    ("https://*.example.com", "http://a.example.com", False),
    ("*.example.com", "http://a.example.com", True),
    ("*.example.com", "https://a.example.org", False),
    # * alone: anything
    ("*", "https://anything.invalid:1234", True),
    ("*", "null", True),
    # a comma-separated list
    ("https://a.example.com, b.example.org", "https://a.example.com", True),
    ("https://a.example.com, b.example.org", "http://b.example.org", True),
    ("https://a.example.com, b.example.org", "https://c.example.net", False),
]


@pytest.mark.parametrize("patterns,origin,allowed", ORIGIN_CASES)
async def test_allowed_origins(patterns, origin, allowed):
    handler = Handler()
    async with running(relay_app(handler, origins=patterns)) as gw:
        before = count()
        if allowed:
            await upgrade_and_close(gw, {"Origin": origin})
            assert len(handler.calls) == 1
        else:
            res = await refused(gw, {"Origin": origin})
            assert res.status == 403
            assert "origin" in res.text.lower() and len(res.body) < 200
            assert handler.calls == [], "the handler ran for a rejected origin"
            assert count() == before, "something was spawned for a rejected origin"
        assert count() == before


async def test_no_origins_configured_means_same_origin_only():
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        host, port = gw.address()
        before = count()
        await upgrade_and_close(gw, {"Origin": f"http://{host}:{port}"})
        await upgrade_and_close(gw, {"Origin": f"https://{host}:{port}"})
        # Host is compared case-insensitively too.
        await upgrade_and_close(gw, {"Host": f"LOCALHOST:{port}", "Origin": f"http://localhost:{port}"})
        assert len(handler.calls) == 3
        for origin in (f"http://other.example:{port}", f"http://{host}:{port + 1}", f"http://{host}", "null"):
            res = await refused(gw, {"Origin": origin})
            assert res.status == 403, origin
            assert "origin" in res.text.lower()
        # The Host header, not the address connected to, is what the Origin must match.
        res = await refused(gw, {"Host": f"app.example.com:{port}", "Origin": f"http://{host}:{port}"})
        assert res.status == 403
        assert len(handler.calls) == 3
        assert count() == before


@pytest.mark.parametrize("patterns", [None, "https://app.example.com"])
async def test_no_origin_header_is_allowed(patterns):
    handler = Handler()
    async with running(relay_app(handler, origins=patterns)) as gw:
        ws = await upgrade_and_close(gw, {"Origin": None})
        assert ws.response.status == 101
        assert len(handler.calls) == 1


async def test_rejected_origin_is_refused_before_the_handler_and_before_any_spawn():
    handler = Handler()
    async with running(relay_app(handler, origins="https://app.example.com")) as gw:
        before = count()
        res = await http_request(gw, PATH, {"Origin": "https://evil.example.com"}, upgrade=True)
        assert res.status == 403
        assert res.text.startswith("403 Forbidden")
        assert "evil.example.com" in res.text
        assert handler.calls == [] and handler.spawned == []
        assert count() == before
        assert gw.services["test:gateway"].handshake_failures["origin"] == 1
        # A rejected origin on a request that is not even an upgrade: still 403
        # (the origin is checked first), and still no handler.
        res = await http_request(gw, PATH, {"Origin": "https://evil.example.com"})
        assert res.status == 403
        assert handler.calls == []


# -- the handler's answer (guide section 3, "The X-WS-Relay header") -----------------------------------------


async def test_no_relay_header_sends_the_handlers_own_response():
    def refuse(req: Any, res: Any) -> None:
        res.status(401).header("WWW-Authenticate", 'Bearer realm="chat"').write("who are you?")

    handler = Handler(relay=lambda pid: None, extra=refuse, spawn=False)
    async with running(relay_app(handler)) as gw:
        before = count()
        res = await refused(gw)
        assert res.status == 401
        assert res.body == b"who are you?"
        assert res.headers["WWW-Authenticate"] == 'Bearer realm="chat"'
        assert "X-WS-Relay" not in res.headers
        assert "Sec-WebSocket-Accept" not in res.headers
        assert len(handler.calls) == 1
        assert count() == before


async def test_handler_200_without_relay_header_is_not_an_upgrade():
    handler = Handler(relay=lambda pid: None, extra=lambda req, res: res.write("plain page"), spawn=False)
    async with running(relay_app(handler)) as gw:
        res = await http_request(gw, PATH, upgrade=True)
        assert res.status == 200 and res.body == b"plain page"
        assert "Sec-WebSocket-Accept" not in res.headers


@pytest.mark.parametrize("header_name", ["X-WS-Relay", "x-ws-relay"])
async def test_relay_header_is_removed_and_other_headers_pass_through_on_the_101(header_name):
    observer = process.self()

    def handler(req: Any, res: Any) -> None:
        pid = process.spawn("relay:recorder", None, observer)
        res.header("X-Room", "lobby")
        res.header("Set-Cookie", "session=abc; HttpOnly")
        res.header(header_name, json.dumps({"target_pid": str(pid)}))

    async with running(relay_app(handler)) as gw:
        ws = await upgrade_and_close(gw)
        headers = ws.response.headers
        assert "X-WS-Relay" not in headers
        assert not any("ws-relay" in name.lower() for name in headers)
        assert headers["X-Room"] == "lobby"
        assert headers["Set-Cookie"] == "session=abc; HttpOnly"
        assert headers["Upgrade"].lower() == "websocket"


async def test_request_api_query_and_headers_are_case_insensitive():
    observer = process.self()
    seen: dict = {}

    def handler(req: Any, res: Any) -> None:
        seen.update(
            method=req.method,
            path=req.path,
            room=req.query("room"),
            missing=req.query("missing", "dflt"),
            blank=req.query("blank"),
            token_lower=req.header("x-token"),
            token_upper=req.header("X-TOKEN"),
            token_mixed=req.header("X-Token"),
            absent=req.header("X-Absent", "none"),
        )
        pid = process.spawn("relay:recorder", None, observer)
        res.header("X-WS-Relay", json.dumps({"target_pid": str(pid), "metadata": {"room": req.query("room")}}))

    async with running(relay_app(handler)) as gw:
        ws = await RawWebSocket.connect(gw, PATH + "?room=a%20b&blank=&room=second", {"x-ToKeN": "abc"})
        await expect("ready")
        topic, payload, _ = await expect("target")
        assert topic == "ws.join" and payload["metadata"] == {"room": "a b"}
        await ws.close_handshake()
        assert (await expect("target"))[0] == "ws.leave"
    assert seen == {
        "method": "GET", "path": PATH, "room": "a b", "missing": "dflt", "blank": "",
        "token_lower": "abc", "token_upper": "abc", "token_mixed": "abc", "absent": "none",
    }


BAD_RELAY_HEADERS = [
    # (name, X-WS-Relay from the spawned pid, words the body must contain)
    ("not json", lambda pid: "{target_pid:", "not valid JSON"),
    ("empty", lambda pid: "", "not valid JSON"),
    ("a list", lambda pid: json.dumps([str(pid)]), "must be a JSON object"),
    ("a string", lambda pid: json.dumps(str(pid)), "must be a JSON object"),
    ("no target_pid", lambda pid: json.dumps({"message_topic": "x"}), "target_pid"),
    ("malformed target_pid", lambda pid: json.dumps({"target_pid": "not-a-pid"}), "target_pid"),
    ("target_pid without id", lambda pid: json.dumps({"target_pid": "{host|}"}), "target_pid"),
    ("target_pid a number", lambda pid: json.dumps({"target_pid": 12}), "target_pid must be a string"),
    ("target_pid null", lambda pid: json.dumps({"target_pid": None}), "target_pid must be a string"),
    ("message_topic a number", lambda pid: json.dumps({"target_pid": str(pid), "message_topic": 5}),
     "message_topic"),
    ("message_topic reserved", lambda pid: json.dumps({"target_pid": str(pid), "message_topic": "@exit"}),
     "message_topic"),
    ("metadata a list", lambda pid: json.dumps({"target_pid": str(pid), "metadata": [1]}), "metadata"),
    ("metadata a string", lambda pid: json.dumps({"target_pid": str(pid), "metadata": "x"}), "metadata"),
    ("bad duration", lambda pid: json.dumps({"target_pid": str(pid), "heartbeat_interval": "soon"}),
     "heartbeat_interval"),
    ("negative duration", lambda pid: json.dumps({"target_pid": str(pid), "heartbeat_interval": "-1s"}),
     "heartbeat_interval"),
    ("duration a list", lambda pid: json.dumps({"target_pid": str(pid), "heartbeat_interval": [1]}),
     "heartbeat_interval"),
    ("duration a bool", lambda pid: json.dumps({"target_pid": str(pid), "heartbeat_interval": True}),
     "heartbeat_interval"),
    ("unknown field", lambda pid: json.dumps({"target_pid": str(pid), "colour": "red"}), "colour"),
]


@pytest.mark.parametrize("relay,words", [pytest.param(r, w, id=name) for name, r, w in BAD_RELAY_HEADERS])
async def test_malformed_relay_header_is_a_500_naming_the_problem(relay, words, caplog):
    caplog.set_level(logging.ERROR, logger="wsrelay")
    handler = Handler(relay=relay)
    async with running(relay_app(handler)) as gw:
        before = count()
        res = await refused(gw)
        assert res.status == 500
        assert words in res.text, res.text
        assert "X-WS-Relay" in res.text
        assert "Sec-WebSocket-Accept" not in res.headers and "X-WS-Relay" not in res.headers
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("wsrelay")]
        assert any(words in r.getMessage() for r in errors), [r.getMessage() for r in caplog.records]
        # What the handler spawned for this request is ended, not leaked.
        assert len(handler.spawned) == 1
        assert not process.is_alive(handler.spawned[0])
        assert count() == before
        assert gw.services["test:gateway"].handshake_failures["bad_relay_header"] == 1


async def test_relay_to_a_dead_target_is_a_502_and_what_the_handler_spawned_is_ended(caplog):
    dead = process.spawn_monitored("test:returns")
    exit_event = await expect(wsrelay.EXIT)
    assert exit_event["pid"] == dead and exit_event["reason"] == "normal"
    never = "{test:processes|0xfffffff}"
    for target in (str(dead), never):
        handler = Handler(relay=lambda pid, t=target: json.dumps({"target_pid": t}))
        async with running(relay_app(handler)) as gw:
            before = count()
            res = await refused(gw)
            assert res.status == 502, res
            assert target in res.text and "not alive" in res.text
            assert "Sec-WebSocket-Accept" not in res.headers
            assert len(handler.spawned) == 1 and not process.is_alive(handler.spawned[0])
            assert count() == before


async def test_handler_that_raises_is_a_500_and_what_it_spawned_is_ended(caplog):
    def boom(req: Any, res: Any) -> None:
        raise RuntimeError("handler bug")

    handler = Handler(extra=boom)
    async with running(relay_app(handler)) as gw:
        before = count()
        res = await refused(gw)
        assert res.status == 500
        assert "handler bug" not in res.text  # no internals to the client
        assert len(handler.spawned) == 1 and not process.is_alive(handler.spawned[0])
        assert count() == before
        assert any("handler" in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)


async def test_handler_may_relay_to_a_process_it_did_not_spawn():
    """The spawned-process cleanup only follows failures: a good relay keeps
    both the target and an unrelated process the handler spawned."""
    observer = process.self()
    spawned = []

    def handler(req: Any, res: Any) -> None:
        target = process.spawn("relay:recorder", None, observer)
        spawned.append(target)
        relay_to(res, target)

    async with running(relay_app(handler)) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        assert process.is_alive(spawned[0])
        await ws.close_handshake()
        assert (await expect("target"))[0] == "ws.leave"


# -- invalid upgrade requests ----------------------------------------------------------------


async def test_plain_get_is_426_and_the_handler_does_not_run():
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        before = count()
        res = await http_request(gw, PATH)
        assert res.status == 426
        assert res.headers["Upgrade"].lower() == "websocket"
        assert "Upgrade" in res.text
        assert handler.calls == []
        assert count() == before


BROKEN_UPGRADES = [
    # (headers changed from a good upgrade request, expected status)
    ({"Sec-WebSocket-Key": None}, 400),
    ({"Sec-WebSocket-Key": "not base64!"}, 400),
    ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400),  # 5 bytes
    ({"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAAAAAAAA=="}, 400),  # 19 bytes
    ({"Connection": "keep-alive"}, 400),
    ({"Connection": None}, 400),
    ({"Upgrade": None}, 426),
    ({"Upgrade": "h2c"}, 426),
    ({"Sec-WebSocket-Version": "8"}, 426),
    ({"Sec-WebSocket-Version": None}, 426),
]


@pytest.mark.parametrize("changes,status", BROKEN_UPGRADES)
async def test_broken_upgrade_is_refused_before_the_handler(changes, status):
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        before = count()
        res = await refused(gw, changes)
        assert res.status == status, res
        assert res.status != 101
        assert handler.calls == []
        assert count() == before
        if status == 426 and "Sec-WebSocket-Version" in changes:
            assert res.headers["Sec-WebSocket-Version"] == "13"


@pytest.mark.parametrize("headers", [
    {"Connection": "keep-alive, Upgrade"},      # Firefox
    {"Connection": "upgrade", "Upgrade": "WebSocket"},
])
async def test_browser_style_upgrade_headers_are_accepted(headers):
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        await upgrade_and_close(gw, headers)
        assert len(handler.calls) == 1


async def test_unknown_path_is_404_without_running_any_handler():
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        res = await refused(gw, path="/ws/other")
        assert res.status == 404
        assert handler.calls == []


async def test_connection_limit_is_503_before_the_handler():
    handler = Handler()
    async with running(relay_app(handler), max_connections=1) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        before = count()
        res = await refused(gw)
        assert res.status == 503
        assert len(handler.calls) == 1 and count() == before
        await ws.close_handshake()
        assert (await expect("target"))[0] == "ws.leave"
        # Room again once the first has gone.
        await upgrade_and_close(gw)


@pytest.mark.parametrize("request_bytes", [
    b"POST /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /ws/chat HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /ws/chat HTTP/1.1\r\nbad header line\r\n\r\n",
    b"GET  HTTP/1.1\r\n\r\n",
])
async def test_malformed_http_request_is_400_without_the_handler(request_bytes):
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        reader, writer = await asyncio.open_connection(*gw.address())
        try:
            writer.write(request_bytes)
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.transport.abort()
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert handler.calls == []


@pytest.mark.parametrize("upgrade", ["websocket, h2c", "h2c, websocket", "WebSocket"])
async def test_upgrade_header_listing_websocket_among_others_upgrades_or_refuses_cleanly(upgrade):
    """Upgrade is a list of protocols (RFC 9110 §7.8). Whatever the answer,
    a request is either upgraded or refused before the handler runs: a
    refusal after the handler spawned a target would leave it orphaned."""
    handler = Handler()
    async with running(relay_app(handler)) as gw:
        before = count()
        try:
            ws = await RawWebSocket.connect(gw, PATH, {"Upgrade": upgrade})
        except HandshakeRefused as refusal:
            assert refusal.response.status in (400, 426)
            assert handler.calls == [], f"refused with {refusal.response.status} after the handler ran"
            assert count() == before, "the handler's target was left running"
            return
        _, target = await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        await ws.close_handshake()
        assert (await expect("target"))[0] == "ws.leave"
        assert not process.is_alive(target)
        assert count() == before


@pytest.mark.parametrize("prefix, path", [("/", "/chat"), ("", "/chat"), ("/ws/", "/ws/chat")])
async def test_a_router_prefix_of_slash_is_the_root(prefix, path):
    app = wsrelay.App("test")
    app.service("gateway", "127.0.0.1:0")
    router = app.router("root", "gateway", prefix, post_middleware=["websocket_relay"])
    router.endpoint("GET", "/chat", relay_handler("relay:recorder", process.self()))
    async with running(app) as gw:
        ws = await RawWebSocket.connect(gw, path)
        await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        await ws.close_handshake()
