"""The server API over real sockets (docs/api.md): off without a key, the
key, the bounds, the errors naming the field, keep-alive and pipelining,
idempotency, each method end to end with WebSocket subscribers, /metrics,
and WSRELAY_API_ADDR's listener of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Optional
from urllib.parse import parse_qs

import httptools
import pytest
import websockets

import wsrelay
from tests.apps import relay_app
from tests.harness import expect, running, scrape, until
from tests.wsclient import http_request
from wsrelay import channels, process
from wsrelay.api import METHODS, IdempotencyKeys

KEY = "s3cret-key"
AUTH = {"Authorization": f"apikey {KEY}"}
LOBBY = "room:lobby"


def envelope(channel: str, data: Any) -> dict[str, Any]:
    return {"channel": channel, "event": "publication", "data": data}


async def recv_json(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


@contextlib.asynccontextmanager
async def served(**overrides: Any) -> AsyncIterator[Any]:
    """A gateway with the API on (KEY) whose /ws/chat?ch=..&user=.. relays to
    a channel room (tests/procs.py) with that grant; its joins are reported
    to the test (expect("joined"))."""
    room = process.spawn("relay:channel_room", None, process.self(), "joins")

    def handler(req: Any, res: Any) -> None:
        query = parse_qs(req.query_string)
        res.relay(room, channels=query.get("ch"), user=req.query("user"))

    try:
        async with running(relay_app(handler), **{"api_key": KEY, **overrides}) as gw:
            yield gw
    finally:
        process.send(room, "stop")


class Answer:
    def __init__(self, status: int, body: bytes, keep_alive: bool) -> None:
        self.status = status
        self.body = body
        self.keep_alive = keep_alive

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> tuple[str, str]:
        error = self.json["error"]
        return error["code"], error["message"]


class ApiConnection:
    """One raw keep-alive connection: requests written as given (several
    at once for pipelining), answers parsed by httptools in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answers: list[Answer] = []
        self._chunks: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    @classmethod
    async def open(cls, address: tuple[str, int]) -> ApiConnection:
        return cls(*await asyncio.open_connection(*address))

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), b"".join(self._chunks),
                                   self.parser.should_keep_alive()))
        self._chunks = []

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, count: int = 1) -> list[Answer]:
        """The next ``count`` answers."""
        while len(self.answers) < count:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, f"closed after {len(self.answers)} answers"
            self.parser.feed_data(data)
        taken, self.answers = self.answers[:count], self.answers[count:]
        return taken

    async def call(self, method: str, body: Any, headers: Optional[dict[str, str]] = None) -> Answer:
        self.write(request(method, body, headers))
        return (await self.answer())[0]

    async def closed(self) -> bool:
        """Whether the server closes the connection (EOF) within 10 s."""
        try:
            return await asyncio.wait_for(self.reader.read(), 10) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.transport.abort()


def request(method: str, body: Any, headers: Optional[dict[str, str]] = None, verb: str = "POST",
            path: Optional[str] = None) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = {"Host": "x", "Content-Length": str(len(raw)), **(AUTH if headers is None else headers)}
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
    return f"{verb} {path or '/api/' + method} HTTP/1.1\r\n{lines}\r\n".encode() + raw


@contextlib.asynccontextmanager
async def connection(address: tuple[str, int]) -> AsyncIterator[ApiConnection]:
    conn = await ApiConnection.open(address)
    try:
        yield conn
    finally:
        conn.close()


async def call(gw: Any, method: str, body: Any, headers: Optional[dict[str, str]] = None) -> Answer:
    async with connection(gw.address()) as conn:
        return await conn.call(method, body, headers)


# -- on, off and the key ----------------------------------------------------------------------------


async def test_the_api_is_off_404_without_a_key():
    async with running(relay_app(lambda req, res: None)) as gw:
        res = await http_request(gw, "/api/publish", AUTH, method="POST", body=b'{"channel":"a","data":1}')
        assert res.status == 404
        assert json.loads(res.body)["error"] == {"code": "not_found",
                                                 "message": "the server API is off: WSRELAY_API_KEY is not set"}
        assert not (await scrape(gw)).has("wsrelay_api_requests_total")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "apikey wrong"}, {"Authorization": f"Bearer {KEY}"},
                                     {"Authorization": f"apikey {KEY}x"}, {"Authorization": "apikey"}])
async def test_a_missing_or_wrong_key_is_401_and_the_connection_closed(headers):
    async with served() as gw, connection(gw.address()) as conn:
        answer = await conn.call("publish", {"channel": "a", "data": 1}, headers)
        assert answer.status == 401 and not answer.keep_alive
        assert answer.error()[0] == "unauthorized"
        assert "apikey" in answer.error()[1]
        assert await conn.closed()
        metrics = await scrape(gw)
        assert metrics("wsrelay_api_requests_total", method="publish", status="401") == 1
        assert metrics("wsrelay_api_refused_total", reason="unauthorized") == 1


async def test_the_scheme_is_case_insensitive_and_the_key_exact():
    async with served() as gw:
        assert (await call(gw, "channels", {}, {"Authorization": f"ApiKey {KEY}"})).status == 200


# -- HTTP: methods, verbs, bounds -------------------------------------------------------------------


async def test_an_unknown_method_is_a_json_404_naming_it_and_keeps_the_connection():
    async with served() as gw, connection(gw.address()) as conn:
        answer = await conn.call("frobnicate", {})
        assert answer.status == 404 and answer.keep_alive
        code, message = answer.error()
        assert code == "not_found" and "'frobnicate'" in message and "publish" in message
        assert (await conn.call("channels", {})).status == 200
        assert (await scrape(gw))("wsrelay_api_requests_total", method="unknown", status="404") == 1


async def test_a_method_other_than_post_is_405():
    async with served() as gw, connection(gw.address()) as conn:
        conn.write(request("publish", b"", verb="GET"))
        answer = (await conn.answer())[0]
        assert answer.status == 405 and answer.error()[0] == "method_not_allowed"
        assert (await conn.call("channels", {})).status == 200


async def test_a_body_at_the_limit_is_taken_and_one_byte_more_is_413_unread():
    limit = 1000
    async with served(api_max_body=limit) as gw:
        frame = json.dumps({"channel": "a", "data": ""})
        exact = json.dumps({"channel": "a", "data": "x" * (limit - len(frame))}).encode()
        assert len(exact) == limit
        assert (await call(gw, "publish", exact)).status == 200
        over = json.dumps({"channel": "a", "data": "x" * (limit - len(frame) + 1)}).encode()
        async with connection(gw.address()) as conn:
            answer = await conn.call("publish", over)
            assert answer.status == 413 and not answer.keep_alive
            assert answer.error()[0] == "payload_too_large" and str(limit) in answer.error()[1]
            assert await conn.closed()
        # Declared too large: refused on the head, before any of the body is sent.
        async with connection(gw.address()) as conn:
            conn.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\n"
                       b"Content-Length: 99999999\r\n\r\n" % KEY.encode())
            assert (await conn.answer())[0].status == 413
        # Chunked, over the limit in its chunks.
        async with connection(gw.address()) as conn:
            chunk = b"x" * 600
            conn.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n" % KEY.encode()
                       + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n")
            assert (await conn.answer())[0].status == 413
        metrics = await scrape(gw)
        assert metrics("wsrelay_api_refused_total", reason="body_too_large") == 3
        assert metrics("wsrelay_api_requests_total", method="publish", status="413") == 3


async def test_expect_100_continue_is_answered():
    async with served() as gw, connection(gw.address()) as conn:
        body = b'{"channel":"a","data":1}'
        conn.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\nExpect: 100-continue\r\n"
                   b"Content-Length: %d\r\n\r\n" % (KEY.encode(), len(body)))
        assert b"100 Continue" in await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        conn.write(body)
        assert (await conn.answer())[0].status == 200


async def test_malformed_http_and_a_huge_head_are_refused_and_closed():
    async with served() as gw:
        async with connection(gw.address()) as conn:
            conn.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\n"
                       b"Content-Length: 2\r\n\r\n{}" % KEY.encode())
            assert (await conn.answer())[0].status == 400
            conn.write(b"POST /api/publish HTTP/1.1\r\nBad Header\r\n\r\n")
            answer = (await conn.answer())[0]
            assert answer.status == 400 and "malformed HTTP" in answer.error()[1]
            assert await conn.closed()
        async with connection(gw.address()) as conn:
            # The guard reads the first head; the API bounds those that follow.
            conn.write(request("channels", {}))
            assert (await conn.answer())[0].status == 200
            conn.write(b"POST /api/channels HTTP/1.1\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n")
            assert (await conn.answer())[0].status == 431
            assert await conn.closed()
        metrics = await scrape(gw)
        assert metrics("wsrelay_api_refused_total", reason="bad_http") == 1
        assert metrics("wsrelay_api_refused_total", reason="headers_too_large") == 1


# -- fields -------------------------------------------------------------------------------------


BAD_FIELDS = [
    ("publish", {"data": 1}, "channel: is required"),
    ("publish", {"channel": "a b", "data": 1}, "channel: channel name 'a b': character ' ' at position 1"),
    ("publish", {"channel": 5, "data": 1}, "channel: must be a non-empty string, got 5"),
    ("publish", {"channel": "a"}, "data: is required"),
    ("publish", {"channel": "a", "data": 1, "idempotency_key": 3}, "idempotency_key: must be a non-empty string"),
    ("publish", {"channel": "a", "data": 1, "idempotency_key": "k" * 129}, "idempotency_key: must be at most 128"),
    ("broadcast", {"channels": "a", "data": 1}, "channels: must be a non-empty list"),
    ("broadcast", {"channels": [], "data": 1}, "channels: must be a non-empty list"),
    ("broadcast", {"channels": ["a", "b#"], "data": 1}, "channels[1]: channel name 'b#'"),
    ("broadcast", {"channels": ["a"]}, "data: is required"),
    ("send", {"topic": "t", "payload": 1}, "to: is required"),
    ("send", {"to": "{nope", "topic": "t", "payload": 1}, "to: must be a PID or a name"),
    ("send", {"to": "x", "payload": 1}, "topic: is required"),
    ("send", {"to": "x", "topic": "@ws", "payload": 1}, "topic: "),
    ("send", {"to": "x", "topic": "t"}, "payload: is required"),
    ("subscribe", {"channel": "a"}, "client: is required"),
    ("subscribe", {"client": "nope", "channel": "a"}, "client: must be a connection's PID"),
    ("subscribe", {"client": "{n@h|0x00001}", "channel": "a", "info": 3}, "info: must be an object"),
    ("unsubscribe", {"client": "{n@h|0x00001}"}, "channel: is required"),
    ("disconnect", {}, "client: give either client"),
    ("disconnect", {"client": "{n@h|0x00001}", "user": "u"}, "client: give either client"),
    ("disconnect", {"user": "u", "code": 999}, "code: must be an integer from 1000 to 4999, got 999"),
    ("disconnect", {"user": "u", "code": "1000"}, "code: must be an integer"),
    ("disconnect", {"user": "u", "reason": "r" * 124}, "reason: must be a string of at most 123 bytes"),
    ("channels", {"pattern": 1}, "pattern: must be a non-empty string"),
    ("history", {}, "channel: is required"),
    ("history", {"channel": "a", "since": 5}, "since: must be an object"),
    ("history", {"channel": "a", "limit": -1}, "limit: must be an integer from 0"),
    ("presence", {"channel": ""}, "channel: must be a non-empty string"),
    ("presence_stats", {}, "channel: is required"),
]


async def test_each_bad_field_is_a_400_naming_it():
    assert {method for method, _, _ in BAD_FIELDS} == set(METHODS)
    async with served() as gw, connection(gw.address()) as conn:
        for method, body, named in BAD_FIELDS:
            answer = await conn.call(method, body)
            assert answer.status == 400, (method, body, answer.body)
            code, message = answer.error()
            assert code == "bad_request" and message.startswith(named), (method, body, message)


@pytest.mark.parametrize("body, named", [(b"{nope", "not JSON"), (b"", "not JSON"), (b"[1]", "a JSON object"),
                                         (b"\xff", "not JSON")])
async def test_a_body_that_is_no_json_object_is_400_invalid_json(body, named):
    async with served() as gw:
        answer = await call(gw, "publish", body)
        assert answer.status == 400 and answer.error()[0] == "invalid_json" and named in answer.error()[1]


async def test_history_and_presence_are_refused_until_a_namespace_asks_for_them():
    async with served() as gw, connection(gw.address()) as conn:
        for method, code in (("history", "history_not_enabled"), ("presence", "presence_not_enabled"),
                             ("presence_stats", "presence_not_enabled")):
            answer = await conn.call(method, {"channel": LOBBY})
            assert answer.status == 400 and answer.error()[0] == code, answer.body
            assert repr(LOBBY) in answer.error()[1]


# -- keep-alive and pipelining ----------------------------------------------------------------------


async def test_one_connection_carries_many_requests():
    async with served() as gw, connection(gw.address()) as conn:
        for i in range(50):
            answer = await conn.call("publish", {"channel": "a", "data": i})
            assert (answer.status, answer.json, answer.keep_alive) == (200, {"result": {}}, True)
        assert len(gw.api.connections) == 1


async def test_pipelined_requests_are_answered_in_order_awaited_ones_too():
    async with served() as gw, websockets.connect(gw.url("/ws/chat")) as ws:
        client = str(await expect("joined"))
        async with connection(gw.address()) as conn:
            # subscribe is awaited: the publications after it wait for it.
            conn.write(request("subscribe", {"client": client, "channel": "p"})
                       + b"".join(request("publish", {"channel": "p", "data": i}) for i in range(5))
                       + request("nope", {}) + request("channels", {"pattern": "p"}))
            answers = await conn.answer(8)
            assert [a.status for a in answers] == [200] * 6 + [404, 200]
            assert answers[7].json == {"result": {"channels": {"p": {"subscribers": 1}}}}
        assert [await recv_json(ws) for _ in range(5)] == [envelope("p", i) for i in range(5)]


async def test_a_read_of_many_kinds_of_request_is_answered_in_order():
    """One write holding plain publishes (parsed and published by the
    compiled read path, apiproto.pyx), one with ``Connection: keep-alive``
    and other headers in any case, and between them what that path leaves
    to httptools and api.py: an idempotency key, a bad channel name, a
    body that is not JSON, another method, a chunked body, one cut across
    two writes. Every answer comes in order, every publication reaches the
    subscriber in order, and each is counted once."""
    async with served() as gw, websockets.connect(gw.url("/ws/chat?ch=q")) as ws:
        await expect("joined")
        body = json.dumps({"channel": "q", "data": "chunked"}).encode()
        chunked = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey %s\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (KEY.encode(), len(body), body))
        cut = request("publish", {"channel": "q", "data": "cut"})
        async with connection(gw.address()) as conn:
            conn.write(request("publish", {"channel": "q", "data": 0})
                       + request("publish", {"channel": "q", "data": 1},
                                 {"authorization": f"APIKEY  {KEY}", "CONNECTION": "Keep-Alive", "X-Trace": "a b"})
                       + request("publish", {"channel": "q", "data": 2, "idempotency_key": "k1"})
                       + request("publish", {"channel": "q w", "data": "never"})
                       + request("publish", b"{not json")
                       + request("channels", {"pattern": "q"})
                       + request("publish", {"channel": "q", "data": 3})
                       + chunked
                       + request("publish", {"channel": "q", "data": 4})
                       + cut[:len(cut) - 5])
            answers = await conn.answer(9)
            conn.write(cut[len(cut) - 5:] + request("publish", {"channel": "q", "data": 5}))
            answers += await conn.answer(2)
        assert [a.status for a in answers] == [200, 200, 200, 400, 400, 200, 200, 200, 200, 200, 200]
        assert all(a.keep_alive for a in answers)
        assert answers[3].error() == ("bad_request", "channel: channel name 'q w': character ' ' at position 1 is "
                                      "not allowed (letters, digits and _ . : @ / = -)")
        assert answers[4].error()[0] == "invalid_json"
        assert answers[5].json == {"result": {"channels": {"q": {"subscribers": 1}}}}
        assert answers[0].json == answers[6].json == answers[10].json == {"result": {}}
        published = [0, 1, 2, 3, "chunked", 4, "cut", 5]
        assert [await recv_json(ws) for _ in published] == [envelope("q", data) for data in published]
        metrics = await scrape(gw)
        assert metrics("wsrelay_api_requests_total", method="publish", status="200") == 8
        assert metrics("wsrelay_api_requests_total", method="publish", status="400") == 2
        assert metrics("wsrelay_api_requests_total", method="channels", status="200") == 1


async def test_a_wrong_key_after_answered_requests_of_the_same_read_closes_there():
    """Requests after one refused 401 in the same write are not answered;
    those before it are, and published."""
    async with served() as gw, websockets.connect(gw.url("/ws/chat?ch=r")) as ws:
        await expect("joined")
        async with connection(gw.address()) as conn:
            conn.write(request("publish", {"channel": "r", "data": 1})
                       + request("publish", {"channel": "r", "data": 2}, {"Authorization": "apikey guess"})
                       + request("publish", {"channel": "r", "data": 3}))
            answers = await conn.answer(2)
            assert [(a.status, a.keep_alive) for a in answers] == [(200, True), (401, False)]
            assert await conn.closed()
        assert await recv_json(ws) == envelope("r", 1)
        metrics = await scrape(gw)
        assert metrics("wsrelay_api_requests_total", method="publish", status="200") == 1
        assert metrics("wsrelay_api_refused_total", reason="unauthorized") == 1


async def test_a_publish_that_closes_the_connection_is_answered_then_closed():
    async with served() as gw, connection(gw.address()) as conn:
        answer = await conn.call("publish", {"channel": "a", "data": 1}, {**AUTH, "Connection": "close"})
        assert (answer.status, answer.json, answer.keep_alive) == (200, {"result": {}}, False)
        assert await conn.closed()


async def test_connection_close_is_honoured():
    async with served() as gw, connection(gw.address()) as conn:
        answer = await conn.call("channels", {}, {**AUTH, "Connection": "close"})
        assert answer.status == 200 and not answer.keep_alive
        assert await conn.closed()


# -- the methods ----------------------------------------------------------------------------------


async def test_publish_and_broadcast_reach_the_subscribers_in_an_envelope():
    async with served() as gw:
        async with websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&ch=user:1")) as a, \
                websockets.connect(gw.url("/ws/chat?ch=user:2")) as b:
            await expect("joined")
            await expect("joined")
            async with connection(gw.address()) as conn:
                answer = await conn.call("publish", {"channel": LOBBY, "data": {"text": "hi"}})
                assert answer.json == {"result": {}}
                assert await recv_json(a) == envelope(LOBBY, {"text": "hi"})
                answer = await conn.call("broadcast", {"channels": ["user:1", "user:2", "none"], "data": [1, "é"]})
                assert answer.json == {"result": [{}, {}, {}]}
                assert await recv_json(a) == envelope("user:1", [1, "é"])
                assert await recv_json(b) == envelope("user:2", [1, "é"])


async def test_an_idempotency_key_publishes_once():
    async with served() as gw, websockets.connect(gw.url("/ws/chat?ch=a&ch=b")) as ws:
        await expect("joined")
        async with connection(gw.address()) as conn:
            for _ in range(3):
                answer = await conn.call("publish", {"channel": "a", "data": 1, "idempotency_key": "k1"})
                assert answer.json == {"result": {}}
            for _ in range(2):
                answer = await conn.call("broadcast", {"channels": ["a", "b"], "data": 2, "idempotency_key": "k2"})
                assert answer.json == {"result": [{}, {}]}
            await conn.call("publish", {"channel": "a", "data": "end"})
        assert [await recv_json(ws) for _ in range(4)] == [
            envelope("a", 1), envelope("a", 2), envelope("b", 2), envelope("a", "end")]


async def test_idempotency_keys_expire_and_stay_within_their_cap():
    now = [0.0]
    keys = IdempotencyKeys(ttl=300.0, capacity=3, clock=lambda: now[0])
    assert await keys.claim("a") and not await keys.claim("a")
    now[0] = 299.0
    assert not await keys.claim("a")
    now[0] = 300.5
    assert await keys.claim("a")  # five minutes on: a new publication
    for key in "bcd":
        assert await keys.claim(key)
    assert len(keys) == 3 and keys.evicted == 1
    assert await keys.claim("a")  # the oldest, forgotten to make room


async def test_send_reaches_a_process_by_pid_or_name():
    async with served() as gw, connection(gw.address()) as conn:
        me = str(process.self())
        answer = await conn.call("send", {"to": me, "topic": "hello", "payload": {"n": 1}})
        assert answer.json == {"result": {"sent": True}}
        assert await expect("hello") == {"n": 1}
        process.register("api-test", process.self())
        try:
            answer = await conn.call("send", {"to": "api-test", "topic": "named", "payload": None})
            assert answer.json == {"result": {"sent": True}}
            assert await expect("named") is None
        finally:
            process.unregister("api-test")
        answer = await conn.call("send", {"to": "nobody", "topic": "t", "payload": 1})
        assert answer.json == {"result": {"sent": False}}


async def test_subscribe_and_unsubscribe_a_connection():
    async with served() as gw, websockets.connect(gw.url("/ws/chat")) as ws:
        client = str(await expect("joined"))
        async with connection(gw.address()) as conn:
            answer = await conn.call("subscribe", {"client": client, "channel": "news"})
            assert answer.json == {"result": {}}
            await conn.call("publish", {"channel": "news", "data": "n1"})
            assert await recv_json(ws) == envelope("news", "n1")
            assert (await conn.call("unsubscribe", {"client": client, "channel": "news"})).json == {"result": {}}
            assert await recv_json(ws) == {"channel": "news", "event": "unsubscribed"}
            assert channels.active() == {}
            # Not (or no longer) a live connection.
            answer = await conn.call("subscribe", {"client": str(wsrelay.Pid("gone", 99)), "channel": "news"})
            assert (answer.status, answer.error()[0]) == (404, "no_such_client")
            answer = await conn.call("subscribe", {"client": str(process.self()), "channel": "news"})
            assert answer.status == 400


async def test_disconnect_by_client_or_by_user():
    async with served() as gw:
        async with websockets.connect(gw.url("/ws/chat?ch=a&user=ann")) as a1, \
                websockets.connect(gw.url("/ws/chat?ch=a&user=ann")) as a2, \
                websockets.connect(gw.url("/ws/chat?ch=a&user=bob")) as b:
            for _ in range(3):
                await expect("joined")
            async with connection(gw.address()) as conn:
                answer = await conn.call("disconnect", {"user": "ann", "code": 4001, "reason": "bye"})
                assert answer.json == {"result": {"closed": 2}}
                for ws in (a1, a2):
                    with pytest.raises(websockets.ConnectionClosed):
                        while True:
                            await asyncio.wait_for(ws.recv(), 10)
                    assert (ws.close_code, ws.close_reason) == (4001, "bye")
                await until(lambda: len(channels.subscribers("a")) == 1, what="ann's connections to leave")
                bob = str(channels.subscribers("a")[0])
                answer = await conn.call("disconnect", {"client": bob})
                assert answer.json == {"result": {"closed": 1}}
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(b.recv(), 10)
                assert b.close_code == 1000
                for _ in range(3):
                    await expect("left")


async def test_channels_lists_the_active_channels():
    async with served() as gw, websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&ch=user:7")) as ws:
        await expect("joined")
        answer = await call(gw, "channels", {})
        assert answer.json == {"result": {"channels": {LOBBY: {"subscribers": 1}, "user:7": {"subscribers": 1}}}}
        answer = await call(gw, "channels", {"pattern": "room:*"})
        assert answer.json == {"result": {"channels": {LOBBY: {"subscribers": 1}}}}
        await ws.close()


# -- /metrics ---------------------------------------------------------------------------------------


async def test_requests_are_counted_by_method_and_status():
    async with served() as gw, connection(gw.address()) as conn:
        for _ in range(3):
            await conn.call("publish", {"channel": "a", "data": 1})
        await conn.call("publish", {"channel": "a"})
        await conn.call("channels", {})
        metrics = await scrape(gw)
        assert metrics("wsrelay_api_requests_total", method="publish", status="200") == 3
        assert metrics("wsrelay_api_requests_total", method="publish", status="400") == 1
        assert metrics("wsrelay_api_requests_total", method="channels", status="200") == 1
        assert metrics("wsrelay_api_connections_open") == 1
        assert metrics.has("wsrelay_api_idempotency_evicted_total")
        assert metrics("wsrelay_api_refused_total", reason="timeout") == 0


# -- WSRELAY_API_ADDR ---------------------------------------------------------------------------


async def test_api_addr_is_a_listener_of_its_own_and_the_services_have_none():
    async with served(api_addr="127.0.0.1:0") as gw, websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}")) as ws:
        await expect("joined")
        assert gw.api_address() != gw.address()
        async with connection(gw.api_address()) as conn:
            assert (await conn.call("publish", {"channel": LOBBY, "data": 1})).status == 200
            assert await recv_json(ws) == envelope(LOBBY, 1)
            conn.write(request("", {}, path="/metrics"))
            answer = (await conn.answer())[0]
            assert answer.status == 404 and "/api/<method>" in answer.error()[1]
        res = await http_request(gw, "/api/publish", AUTH, method="POST", body=b'{"channel":"a","data":1}')
        assert res.status == 404 and b"WSRELAY_API_ADDR" in res.body
        # The API's counters are the API's: the services' 404s are not among them.
        assert (await scrape(gw))("wsrelay_api_requests_total", method="publish", status="404") == 0


async def test_an_idle_connection_is_closed_on_shutdown():
    async with served() as gw:
        conn = await ApiConnection.open(gw.address())
        try:
            assert (await conn.call("channels", {})).status == 200
            await gw.shutdown(drain_timeout=1)
            assert await conn.closed()
            await until(lambda: not gw.api.connections, what="the API connections to go")
        finally:
            conn.close()


async def test_history_needs_both_history_size_and_history_ttl():
    app = relay_app(lambda req, res: None)
    app.channel_namespace("rooms", "room:*", history_size=10, presence=True)
    async with running(app, api_key=KEY) as gw, connection(gw.address()) as conn:
        # history_size without history_ttl is no history.
        assert (await conn.call("history", {"channel": LOBBY})).error()[0] == "history_not_enabled"
        assert (await conn.call("history", {"channel": "user:1"})).error()[0] == "history_not_enabled"


async def test_publish_and_history_of_a_channel_with_history():
    from wsrelay._core import history as core_history

    core_history.forget()
    app = relay_app(lambda req, res: None)
    app.channel_namespace("rooms", "room:*", history_size=10, history_ttl=60)
    async with running(app, api_key=KEY) as gw, connection(gw.address()) as conn:
        first = (await conn.call("publish", {"channel": LOBBY, "data": {"n": 1}})).json["result"]
        epoch = first["epoch"]
        assert first == {"offset": 1, "epoch": epoch}
        second = (await conn.call("publish", {"channel": LOBBY, "data": 2})).json["result"]
        assert second == {"offset": 2, "epoch": epoch}
        assert (await conn.call("broadcast", {"channels": [LOBBY, "user:1"], "data": 3})).json["result"] == \
            [{"offset": 3, "epoch": epoch}, {}]
        whole = (await conn.call("history", {"channel": LOBBY})).json["result"]
        assert whole == {"epoch": epoch, "offset": 3, "publications": [
            {"offset": 1, "epoch": epoch, "data": {"n": 1}}, {"offset": 2, "epoch": epoch, "data": 2},
            {"offset": 3, "epoch": epoch, "data": 3}]}
        since = (await conn.call("history", {"channel": LOBBY, "since": {"offset": 1, "epoch": epoch},
                                             "limit": 1})).json["result"]
        assert [p["offset"] for p in since["publications"]] == [2]
        stale = await conn.call("history", {"channel": LOBBY, "since": {"offset": 1, "epoch": "other"}})
        assert (stale.status, stale.error()[0]) == (400, "unrecoverable_position")
    core_history.forget()


def test_the_reference_names_every_method_and_error_code():
    from tests.harness import REPO
    from wsrelay.api import ERRORS, REFUSALS

    doc = (REPO / "docs" / "api.md").read_text()
    missing = [f"### `{m}`" for m in METHODS if f"`{m}`" not in doc]
    missing += [f"| `{code}` | {status} |" for code, status in ERRORS.items() if f"| `{code}` | {status} |" not in doc]
    missing += [f"`{reason}`" for reason in REFUSALS if f"`{reason}`" not in doc]
    assert not missing, f"docs/api.md does not describe {missing}"


# -- WSRELAY_WORKERS ----------------------------------------------------------------------------


async def test_every_worker_serves_the_api_addr_and_a_publish_reaches_every_worker(tmp_path):
    """Two workers each bind WSRELAY_API_ADDR (SO_REUSEPORT): requests on
    new connections are spread over both, and each publication reaches the
    subscribers of both workers."""
    import socket

    from tests.apps import write_channels_app
    from tests.harness import ServerProcess, serve_command

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {"WSRELAY_WORKERS": "2", "WSRELAY_API_KEY": KEY, "WSRELAY_API_ADDR": f"127.0.0.1:{port}",
           "WSRELAY_LOG_LEVEL": "INFO"}
    async with ServerProcess(serve_command(write_channels_app(tmp_path)), env=env) as server:
        clients = [await websockets.connect(server.url("/ws/chat?ch=news")) for _ in range(8)]
        try:
            # The kernel spreads connections over the workers: both have subscribers.
            nodes = {json.loads((await http_request(server, "/health")).body)["node"] for _ in range(20)}
            assert len(nodes) == 2, nodes

            async def everywhere() -> bool:
                """Whether the workers asked (on new connections) see all 8 subscribers."""
                for _ in range(6):
                    async with connection(("127.0.0.1", port)) as conn:
                        answer = await conn.call("channels", {"pattern": "news"})
                        if answer.json["result"]["channels"] != {"news": {"subscribers": 8}}:
                            return False
                return True

            while not await everywhere():
                await asyncio.sleep(0.05)
            for i in range(6):
                async with connection(("127.0.0.1", port)) as conn:
                    assert (await conn.call("publish", {"channel": "news", "data": i})).status == 200
            for ws in clients:
                # Each worker is a publisher of its own: no order between them.
                got = sorted([await recv_json(ws) for _ in range(6)], key=lambda e: e["data"])
                assert got == [envelope("news", i) for i in range(6)]
        finally:
            for ws in clients:
                await ws.close()
        served = server.text()
        assert served.count(f"the server API listening on http://127.0.0.1:{port}/api/") == 2, server.output()


async def test_the_idempotency_store_is_a_seam():
    """Any IdempotencyStore (a cluster-wide one later) decides what is a
    repeat: here a fake that has seen every key already."""

    class SeenEverything:
        def __init__(self) -> None:
            self.claimed: list[str] = []

        async def claim(self, key: str) -> bool:
            self.claimed.append(key)
            return False

    async with served() as gw, websockets.connect(gw.url("/ws/chat?ch=a")) as ws:
        await expect("joined")
        gw.api.keys = store = SeenEverything()
        async with connection(gw.address()) as conn:
            answer = await conn.call("publish", {"channel": "a", "data": 1, "idempotency_key": "x"})
            assert answer.json == {"result": {}}
            await conn.call("broadcast", {"channels": ["a"], "data": 2, "idempotency_key": "y"})
            await conn.call("publish", {"channel": "a", "data": 3})
        assert store.claimed == ["x", "y"]
        assert await recv_json(ws) == envelope("a", 3)
