"""The server API (docs/api.md): ``POST /api/<method>`` with a JSON body, for
applications outside wsrelay (a Django view, a Celery task, curl).

It is mounted when WSRELAY_API_KEY is set: on every service (the handshake
guard hands a request for ``/api/...`` to an ApiProtocol, which keeps the
connection for the requests that follow), or only on WSRELAY_API_ADDR, a
listener of its own (the services' ``/api/`` then answers 404 saying
where it is, as it does while the API is off). Each connection is an ApiProtocol: HTTP/1.1 parsed by
httptools, keep-alive, pipelined requests answered in order, bounds on the
head, the body and the time a request or an idle connection may take. An
``Api`` (one per gateway) holds the key, the methods, the idempotency keys
and the counters that /metrics shows.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import inspect
import logging
import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Optional, Protocol, Union

import httptools
import orjson

from . import channels, process
from ._core.apiproto import ApiCore
from ._core.pid import Pid
from .errors import MailboxFull, NoTransport

log = logging.getLogger("wsrelay.api")

PREFIX = b"/api/"

# A publish or broadcast whose idempotency_key was claimed this recently is
# accepted and not published again; at most IDEMPOTENCY_CAPACITY keys are
# remembered (the oldest are forgotten first, and counted), each of at most
# MAX_IDEMPOTENCY_KEY characters: about 15 MB at the worst.
IDEMPOTENCY_TTL = 300.0
IDEMPOTENCY_CAPACITY = 50_000
MAX_IDEMPOTENCY_KEY = 128

# Seconds a refused client may go on sending before its socket is dropped
# (as the handshake guard lingers, so the answer is not lost to a reset).
LINGER = 2.0
# A request must arrive whole within WSRELAY_HANDSHAKE_TIMEOUT of its first
# byte, and an idle keep-alive connection is closed after as long.

# Requests parsed while an awaited one runs wait in order; past this many,
# reading pauses until they are answered.
MAX_PIPELINE = 64

# Every error code of an answer, and its HTTP status (docs/api.md, "Errors").
ERRORS: dict[str, int] = {
    "bad_request": 400,
    "invalid_json": 400,
    "history_not_enabled": 400,
    "unrecoverable_position": 400,
    "presence_not_enabled": 400,
    "unauthorized": 401,
    "not_found": 404,
    "no_such_client": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "headers_too_large": 431,
    "internal": 500,
    "mailbox_full": 503,
    "no_transport": 503,
}

# Why a connection was dropped before its request was answered by a method
# (wsrelay_api_refused_total{reason}): a flood of them shows there.
REFUSALS = ("unauthorized", "body_too_large", "headers_too_large", "bad_http", "timeout")

# The metric label of a request for a method that does not exist: the label
# values stay the known methods, whatever names clients make up.
UNKNOWN = "unknown"


class ApiError(Exception):
    """An answer with an error: its code (one of ERRORS) and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = ERRORS[code]
        self.message = message


def _bad(field: str, message: str) -> ApiError:
    return ApiError("bad_request", f"{field}: {message}")


# -- idempotency --------------------------------------------------------------------------------


class IdempotencyStore(Protocol):
    """The seam behind a publish's ``idempotency_key``: ``claim`` is True the
    first time a key is seen within its time to live, False after. This
    node's memory implements it (IdempotencyKeys); a store shared by a
    cluster's nodes can replace it."""

    async def claim(self, key: str) -> bool: ...


class IdempotencyKeys:
    """The keys claimed on this node in the last ``ttl`` seconds, at most
    ``capacity`` of them: past it the oldest is forgotten (and counted in
    ``evicted``), so memory stays bounded under any load."""

    def __init__(self, ttl: float = IDEMPOTENCY_TTL, capacity: int = IDEMPOTENCY_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self.evicted = 0
        # Key -> when it expires; in claim order, which is expiry order.
        self._keys: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    async def claim(self, key: str) -> bool:
        now = self.clock()
        keys = self._keys
        while keys:
            oldest, expires = next(iter(keys.items()))
            if expires > now:
                break
            del keys[oldest]
        if key in keys:
            return False
        keys[key] = now + self.ttl
        if len(keys) > self.capacity:
            keys.popitem(last=False)
            self.evicted += 1
        return True


# -- the fields of a body ------------------------------------------------------------------------

_MISSING = object()


def _required(body: dict[str, Any], field: str) -> Any:
    value = body.get(field, _MISSING)
    if value is _MISSING:
        raise _bad(field, "is required")
    return value


def _string(body: dict[str, Any], field: str, required: bool = True) -> Optional[str]:
    value = _required(body, field) if required else body.get(field)
    if value is None and not required:
        return None
    if type(value) is not str or not value:
        raise _bad(field, f"must be a non-empty string, got {_shown(value)}")
    return value


def _channel(body: dict[str, Any], field: str = "channel") -> str:
    return _channel_name(_required(body, field), field)


def _channel_name(name: Any, field: str) -> str:
    if type(name) is not str or not name:
        raise _bad(field, f"must be a non-empty string, got {_shown(name)}")
    try:
        return channels.check_channel_name(name)
    except ValueError as exc:
        raise _bad(field, str(exc)) from None


def _client(body: dict[str, Any], required: bool = True) -> Optional[Pid]:
    text = _string(body, "client", required)
    if text is None:
        return None
    try:
        return Pid.parse(text)
    except ValueError as exc:
        raise _bad("client", f"must be a connection's PID: {exc}") from None


def _integer(body: dict[str, Any], field: str, low: int, high: int) -> Optional[int]:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise _bad(field, f"must be an integer from {low} to {high}, got {_shown(value)}")
    return value


def _idempotency_key(body: dict[str, Any]) -> Optional[str]:
    key = _string(body, "idempotency_key", required=False)
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise _bad("idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY} characters, got {len(key)}")
    return key


def _shown(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


# -- the methods ----------------------------------------------------------------------------------

# A method's outcome: its result, or an awaitable giving it.
Outcome = Union[Any, Awaitable[Any]]


def _publish(api: Api, body: dict[str, Any]) -> Outcome:
    channel = _channel(body)
    data = _required(body, "data")
    key = _idempotency_key(body)
    if key is None:
        return channels.numbered(channel, data)
    return api.once(key, lambda: channels.publish_numbered(channel, data), {})


def _broadcast(api: Api, body: dict[str, Any]) -> Outcome:
    names = _required(body, "channels")
    if type(names) is not list or not names:
        raise _bad("channels", f"must be a non-empty list of channel names, got {_shown(names)}")
    checked = [_channel_name(name, f"channels[{i}]") for i, name in enumerate(names)]
    data = _required(body, "data")
    key = _idempotency_key(body)

    async def publish() -> list[Any]:
        return [await channels.publish_numbered(name, data) for name in checked]

    if key is None:
        return publish()
    return api.once(key, publish, [{} for _ in checked])


def _send(api: Api, body: dict[str, Any]) -> Outcome:
    to = _string(body, "to")
    assert to is not None
    topic = _string(body, "topic")
    payload = _required(body, "payload")
    if to.startswith("{"):
        try:
            Pid.parse(to)
        except ValueError as exc:
            raise _bad("to", f"must be a PID or a name: {exc}") from None
    try:
        # Outside any process: sent by the node's system process.
        sent = process.send(to, topic, payload)
    except ValueError as exc:
        raise _bad("topic", str(exc)) from None
    except MailboxFull as exc:
        raise ApiError("mailbox_full", str(exc)) from None
    except NoTransport as exc:
        raise ApiError("no_transport", str(exc)) from None
    return {"sent": sent}


async def _subscribe(api: Api, body: dict[str, Any]) -> Any:
    client = _client(body)
    channel = _channel(body)
    info = body.get("info")
    if info is not None and type(info) is not dict:
        raise _bad("info", f"must be an object, got {_shown(info)}")
    try:
        await channels.subscribe(client, channel, info)  # type: ignore[arg-type]
    except ProcessLookupError as exc:
        raise ApiError("no_such_client", str(exc)) from None
    return {}


def _unsubscribe(api: Api, body: dict[str, Any]) -> Outcome:
    client = _client(body)
    channel = _channel(body)
    channels.unsubscribe(client, channel)  # type: ignore[arg-type]
    return {}


async def _disconnect(api: Api, body: dict[str, Any]) -> Any:
    client = _client(body, required=False)
    user = _string(body, "user", required=False)
    if (client is None) == (user is None):
        raise _bad("client", "give either client (a connection's PID) or user, not both")
    code = _integer(body, "code", 1000, 4999)
    reason = body.get("reason", "")
    if type(reason) is not str or len(reason.encode()) > 123:
        raise _bad("reason", "must be a string of at most 123 bytes (UTF-8)")
    closed = await channels.disconnect(client=client, user=user, code=1000 if code is None else code,
                                       reason=reason)
    return {"closed": closed}


def _channels(api: Api, body: dict[str, Any]) -> Outcome:
    pattern = _string(body, "pattern", required=False)
    # Every node's channels, as this one knows them.
    return {"channels": channels.active(pattern)}


async def _history(api: Api, body: dict[str, Any]) -> Any:
    channel = _channel(body)
    since = body.get("since")
    if since is not None and (type(since) is not dict or type(since.get("offset")) is not int
                              or type(since.get("epoch")) is not str or since["offset"] < 0):
        raise _bad("since", "must be an object {\"offset\": integer, \"epoch\": string}")
    limit = _integer(body, "limit", 0, 1 << 31)
    if channels.history_limits(channel) is None:
        raise ApiError("history_not_enabled", f"channel {channel!r} has no history: no channel.namespace matching "
                       "it sets history_size and history_ttl")
    result = await channels.history(channel, None if since is None else since["offset"], limit)
    if since is not None and since["epoch"] != result["epoch"]:
        raise ApiError("unrecoverable_position", f"channel {channel!r}: since names epoch {since['epoch']!r}, "
                       f"its history is epoch {result['epoch']!r} (lost meanwhile): read it without since")
    return result


async def _presence(api: Api, body: dict[str, Any]) -> Any:
    return await _present(channels.presence, _channel(body))


async def _presence_stats(api: Api, body: dict[str, Any]) -> Any:
    return await _present(channels.presence_stats, _channel(body))


async def _present(ask: Callable[[str], Awaitable[Any]], channel: str) -> Any:
    """What ``ask`` answers of ``channel``: a name that passed ``_channel``
    raises ValueError only when its namespace has no presence."""
    try:
        return await ask(channel)
    except ValueError as exc:
        raise ApiError("presence_not_enabled", str(exc)) from None


# The API's methods, by the name in the path (declared once: the dispatch,
# the metric labels and the docs check come from here).
METHODS: dict[str, Callable[[Api, dict[str, Any]], Outcome]] = {
    "publish": _publish,
    "broadcast": _broadcast,
    "send": _send,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "disconnect": _disconnect,
    "channels": _channels,
    "history": _history,
    "presence": _presence,
    "presence_stats": _presence_stats,
}


# -- the API of one gateway -----------------------------------------------------------------------


class Api:
    """The server API of one gateway: its key, bounds, idempotency keys,
    connections and counters. ``protocol`` makes the protocol of a connection.

    With ``off`` (a message) instead of a key, every request is answered
    404 saying it: the services' ``/api/`` while the API is off, or is on
    a listener of its own."""

    def __init__(self, key: Optional[str], *, max_body: int, request_timeout: float, max_head: int = 16384,
                 keys: Optional[IdempotencyStore] = None, off: Optional[str] = None) -> None:
        assert (key is None) != (off is None), "an API has a key, or is off"
        self.key = b"" if key is None else key.encode()
        self.off = off
        self.max_body = max_body
        self.max_head = max_head
        self.request_timeout = request_timeout
        self.keys: IdempotencyStore = keys if keys is not None else IdempotencyKeys()
        self.loop = asyncio.get_running_loop()
        self.connections: set[ApiProtocol] = set()
        # (method or UNKNOWN, status) -> requests answered.
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()

    def protocol(self, transport: Any = None) -> ApiProtocol:
        """The protocol of a new connection (a listener's factory, or the
        handshake guard's for a service's ``/api/`` requests)."""
        return ApiProtocol(self)

    def authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        # compare_digest: the time taken does not tell how much of a guess matched.
        return scheme.lower() == b"apikey" and hmac.compare_digest(token.strip(), self.key)

    def answer(self, name: str, raw: bytes) -> Union[tuple[int, bytes], Awaitable[tuple[int, bytes]]]:
        """The status and JSON body answering method ``name`` with body
        ``raw``, or an awaitable giving them."""
        method = METHODS.get(name)
        if method is None:
            known = ", ".join(METHODS)
            return self.failed(UNKNOWN, ApiError("not_found", f"no API method {name!r}; the methods: {known}"))
        try:
            body = orjson.loads(raw)
            if type(body) is not dict:
                raise ApiError("invalid_json", f"the body must be a JSON object, got {_shown(body)}")
            outcome = method(self, body)
        except orjson.JSONDecodeError as exc:
            return self.failed(name, ApiError("invalid_json", f"the body is not JSON: {exc}"))
        except Exception as exc:
            return self.failed(name, self._error(name, exc))
        if inspect.isawaitable(outcome):
            return self._awaited(name, outcome)
        return self.succeeded(name, outcome)

    async def _awaited(self, name: str, outcome: Awaitable[Any]) -> tuple[int, bytes]:
        try:
            result = await outcome
        except Exception as exc:
            return self.failed(name, self._error(name, exc))
        return self.succeeded(name, result)

    def _error(self, name: str, exc: Exception) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, ValueError):
            # The channel functions' refusals (a connection at its limit, a
            # PID that is no connection) say what is wrong.
            return ApiError("bad_request", str(exc))
        log.exception("API method %s failed", name)
        return ApiError("internal", f"{name} failed: {type(exc).__name__}")

    def succeeded(self, name: str, result: Any) -> tuple[int, bytes]:
        self.requests[name, 200] += 1
        return 200, b'{"result":' + orjson.dumps(result) + b"}"

    def failed(self, label: str, error: ApiError) -> tuple[int, bytes]:
        self.requests[label, error.status] += 1
        return error.status, orjson.dumps({"error": {"code": error.code, "message": error.message}})

    def refuse(self, label: str, reason: str, error: ApiError) -> tuple[int, bytes]:
        """A request refused before any method ran, its connection closed."""
        self.refused[reason] += 1
        return self.failed(label, error)

    async def once(self, key: str, publish: Callable[[], Any], repeated: Any) -> Any:
        """``publish()`` unless ``key`` was claimed recently; then ``repeated``,
        the answer of a publication on a channel without history."""
        if await self.keys.claim(key):
            return await publish()
        return repeated

    def close_all(self) -> None:
        """Close every API connection (the gateway is shutting down)."""
        for protocol in list(self.connections):
            protocol.close()


# -- one connection ---------------------------------------------------------------------------------

_HEADS = {status: b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
          % (status, HTTPStatus(status).phrase.encode()) for status in {200, *ERRORS.values()}}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Request:
    """A whole request, waiting its turn: the method's name and body, or
    the answer already decided (a refusal, or an HTTP-level error)."""

    __slots__ = ("name", "body", "keep_alive", "answer")

    def __init__(self, name: str, body: bytes, keep_alive: bool,
                 answer: Optional[tuple[int, bytes]] = None) -> None:
        self.name = name
        self.body = body
        self.keep_alive = keep_alive
        self.answer = answer


class _Stop(Exception):
    """Raised in a parser's callback once a request is refused for good:
    httptools stops there, and nothing more of the connection is parsed."""


class ApiProtocol(ApiCore, asyncio.BufferedProtocol):
    """One API connection: its requests answered in the order they came
    (docs/api.md, "HTTP"). The compiled ApiCore reads them, and answers
    the common ones itself (a whole request, a plain publish); the others
    are parsed by httptools, with the callbacks below, from their first byte."""

    def __init__(self, api: Api) -> None:
        super().__init__(api, _HEADS)
        self.transport = None
        self.parser: Any = httptools.HttpRequestParser(self)
        self.timer = None
        # The request being read (in_request: its first byte is in).
        self.in_request = False
        self.url = b""
        self.head_size = 0
        self.authorized = False
        self.expect_continue = False
        self.declared = 0
        self.chunks: list[bytes] = []
        self.body_size = 0
        # Its answer when decided before its body is in (404, 405).
        self.refusal: Optional[tuple[int, bytes]] = None
        # Whole requests waiting for an awaited one to be answered.
        self.queue: collections.deque[_Request] = collections.deque()
        self.busy = False
        self.writing_paused = False
        self.reading_paused = False
        # A request was refused for good: nothing more is parsed, what the
        # client sends is dropped, the connection closes once it is answered.
        self.stopped = False

    # -- the transport's side -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.api.connections.add(self)
        self._arm(self.api.request_timeout)

    def feed(self, data: memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail_http("an API request cannot upgrade the connection")
        except httptools.HttpParserError as exc:
            # A refusal stops the parser with _Stop, which it reports so.
            if not self.stopped:
                self._fail_http(f"malformed HTTP: {exc}")

    def take_whole(self, name: str, body: bytes) -> None:
        self._take(_Request(name, body, True))

    def eof_received(self) -> bool:
        return False  # the client is done: close our side too

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.api.connections.discard(self)
        self.transport = None
        # The parser and this protocol refer to each other: without this,
        # the pair and its buffer would wait for a garbage collection, which
        # WSRELAY_GC_THRESHOLD makes rare.
        self.parser = None
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause_writing(self) -> None:
        # The client does not read its answers: read no more requests either.
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- httptools' callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self.url = b""
        self.head_size = 0
        self.authorized = False
        self.expect_continue = False
        self.declared = 0
        self.body_size = 0
        self.refusal = None
        self._arm(self.api.request_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        lowered = name.lower()
        if lowered == b"authorization":
            self.authorized = self.api.authorized(value)
        elif lowered == b"content-length":
            # httptools refuses a length that is not a number; one too long
            # to convert cheaply is too large anyway.
            self.declared = int(value) if len(value) < 19 else self.api.max_body + 1
        elif lowered == b"expect":
            self.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        name = self._name()
        label = name if name in METHODS else UNKNOWN
        api = self.api
        if api.off is not None:
            self.refusal = api.failed(label, ApiError("not_found", api.off))
            return
        if not self.authorized:
            self._stop(api.refuse(label, "unauthorized", ApiError(
                "unauthorized", "missing or wrong API key: send the header 'Authorization: apikey <key>'")))
        if self.declared > api.max_body:
            self._stop(self._too_large(label))
        if not name:
            self.refusal = api.failed(label, ApiError("not_found", "the API's methods are at POST /api/<method>"))
        elif self.parser.get_method() != b"POST":
            self.refusal = api.failed(label, ApiError("method_not_allowed", "the API takes POST requests only"))
        elif self.expect_continue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.refusal is not None:
            return  # answered without it: not kept
        self.body_size += len(body)
        if self.body_size > self.api.max_body:
            name = self._name()
            self._stop(self._too_large(name if name in METHODS else UNKNOWN))
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        keep_alive = self.parser.should_keep_alive()
        chunks = self.chunks
        self.chunks = []
        if self.refusal is not None:
            self._take(_Request("", b"", keep_alive, self.refusal))
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._take(_Request(self._name(), body, keep_alive))

    def _name(self) -> str:
        """The method named by the request's path ("" when it is not /api/...)."""
        path = self.url.partition(b"?")[0]
        return path[len(PREFIX):].decode("utf-8", "replace") if path.startswith(PREFIX) else ""

    # -- answering, in order -----------------------------------------------------------------------

    def _take(self, request: _Request) -> None:
        if self.busy or self.queue:
            self.queue.append(request)
            self._update_reading()
            return
        self._run(request)

    def _run(self, request: _Request) -> None:
        answer = request.answer
        if answer is None:
            outcome = self.api.answer(request.name, request.body)
            if not isinstance(outcome, tuple):
                self.busy = True
                self.api.loop.create_task(self._finish(outcome, request.keep_alive))
                return
            answer = outcome
        self._write(answer, request.keep_alive)

    async def _finish(self, outcome: Awaitable[tuple[int, bytes]], keep_alive: bool) -> None:
        answer = await outcome
        self.busy = False
        if self.transport is None:
            return  # the client has gone; its queued requests with it
        self._write(answer, keep_alive)
        while self.queue and not self.busy and self.transport is not None:
            self._run(self.queue.popleft())
        self._update_reading()

    def _write(self, answer: tuple[int, bytes], keep_alive: bool) -> None:
        status, body = answer
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if keep_alive:
            transport.write(b"%s%d\r\n\r\n%s" % (_HEADS[status], len(body), body))
            if not self.busy and not self.queue and not self.in_request:
                self._arm(self.api.request_timeout)
            return
        transport.write(b"%s%d\r\nConnection: close\r\n\r\n%s" % (_HEADS[status], len(body), body))
        self._linger()

    def _stop(self, answer: tuple[int, bytes]) -> None:
        """Refuse the request being read with ``answer`` (after the answers
        of those before it), then close; raises _Stop to stop the parser."""
        self._refuse(answer)
        raise _Stop()

    def _refuse(self, answer: tuple[int, bytes]) -> None:
        self.stopped = True
        self.in_request = False
        self.chunks = []
        self._take(_Request("", b"", False, answer))

    def _too_large(self, label: str) -> tuple[int, bytes]:
        return self.api.refuse(label, "body_too_large", ApiError(
            "payload_too_large", f"the body exceeds {self.api.max_body} bytes (WSRELAY_API_MAX_BODY)"))

    def _fail_http(self, message: str) -> None:
        self._refuse(self.api.refuse(UNKNOWN, "bad_http", ApiError("bad_request", message)))

    def _count_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > self.api.max_head:
            self._stop(self.api.refuse(UNKNOWN, "headers_too_large", ApiError(
                "headers_too_large", f"the request line and headers exceed {self.api.max_head} bytes")))

    def _linger(self) -> None:
        """Close our side after the last answer; what the client still sends
        is read and dropped until it closes or LINGER passes."""
        self.stopped = True
        self.queue.clear()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        self.reading_paused = False
        transport.resume_reading()
        self._arm(LINGER)

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        paused = self.writing_paused or len(self.queue) >= MAX_PIPELINE
        if paused != self.reading_paused:
            self.reading_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- time ------------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        if self.api.loop.time() < self.deadline:
            self.timer = self.api.loop.call_at(self.deadline, self._on_timer)
            self.timer_at = self.deadline
        elif self.busy:
            # An awaited method bounds its own time; the connection waits for it.
            self._arm(self.api.request_timeout)
        else:
            if self.in_request:
                self.api.refused["timeout"] += 1
            transport.abort()
