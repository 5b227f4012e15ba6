"""Clients of the server API (docs/api.md, "The Python client"), for
applications in other processes and on other machines.

- ``Client(url, api_key)``: synchronous (Django, Flask, Celery, scripts),
  one keep-alive socket;
- ``AsyncClient(url, api_key)``: asyncio (FastAPI, aiohttp), one keep-alive
  connection.

Both write each request whole and parse the answers with httptools.

Each has one method per API method, returning the server's ``result``; an
error answer is raised as ``APIError`` with the server's code and message.
A request that finds its kept-alive connection closed by the server (an
idle timeout, a restart) is sent again once on a new connection.

This module imports neither the compiled core nor the gateway: a process
that imports it starts nothing (``import wsrelay`` is lazy).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
import urllib.parse
from typing import Any, Awaitable, Generic, Optional, TypeVar

import httptools
import orjson

__all__ = ["APIError", "AsyncClient", "Client"]

DEFAULT_TIMEOUT = 10.0

log = logging.getLogger("wsrelay.client")

R = TypeVar("R")


class APIError(Exception):
    """An error answer of the server API: its ``code`` (docs/api.md,
    "Errors"), ``message`` and HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def _result(status: int, body: bytes) -> Any:
    """The result of an answer, or its error raised."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Not the API's answer (the API is off, or a proxy answered).
        raise APIError("http_error", body.decode("utf-8", "replace").strip()[:200], status) from None
    if status == 200 and isinstance(answer, dict) and "result" in answer:
        return answer["result"]
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        raise APIError("http_error", f"unexpected answer: {body[:200]!r}", status)
    raise APIError(str(error.get("code")), str(error.get("message")), status)


def _fields(**fields: Any) -> dict[str, Any]:
    """A request's body: the fields given (None: left out)."""
    return {name: value for name, value in fields.items() if value is not None}


class _Base:
    def __init__(self, url: str, api_key: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.base = parts.path.rstrip("/") + "/api/"
        self.timeout = timeout
        self._head = (f"Host: {self.host}:{self.port}\r\nAuthorization: apikey {api_key}\r\n"
                      "Content-Type: application/json\r\n")

    def _request(self, method: str, payload: bytes) -> bytes:
        """The whole HTTP request of one API call."""
        return (f"POST {self.base}{method} HTTP/1.1\r\n{self._head}Content-Length: {len(payload)}\r\n\r\n"
                ).encode() + payload


class _Methods(Generic[R]):
    """One method per API method (docs/api.md), each the server's result:
    R is that result for Client, an awaitable of it for AsyncClient."""

    def _call(self, method: str, body: dict[str, Any]) -> R:
        raise NotImplementedError

    def publish(self, channel: str, data: Any, idempotency_key: Optional[str] = None) -> R:
        """Publish ``data`` (any JSON value) to ``channel``'s subscribers: ``{}``."""
        return self._call("publish", _fields(channel=channel, data=data, idempotency_key=idempotency_key))

    def broadcast(self, channels: list[str], data: Any, idempotency_key: Optional[str] = None) -> R:
        """Publish ``data`` to each of ``channels``: one result per channel."""
        return self._call("broadcast", _fields(channels=channels, data=data, idempotency_key=idempotency_key))

    def send(self, to: str, topic: str, payload: Any) -> R:
        """Send a message to a process (a PID's text, or a name): ``{"sent": bool}``."""
        return self._call("send", {"to": to, "topic": topic, "payload": payload})

    def subscribe(self, client: str, channel: str, info: Optional[dict[str, Any]] = None) -> R:
        """Subscribe the connection ``client`` (its PID's text) to ``channel``: ``{}``."""
        return self._call("subscribe", _fields(client=client, channel=channel, info=info))

    def unsubscribe(self, client: str, channel: str) -> R:
        """Take the connection ``client`` out of ``channel``: ``{}``."""
        return self._call("unsubscribe", {"client": client, "channel": channel})

    def disconnect(self, client: Optional[str] = None, user: Optional[str] = None, code: Optional[int] = None,
                   reason: Optional[str] = None) -> R:
        """Close the connection ``client``, or every connection of ``user``: ``{"closed": n}``."""
        return self._call("disconnect", _fields(client=client, user=user, code=code, reason=reason))

    def history(self, channel: str, since: Optional[dict[str, Any]] = None, limit: Optional[int] = None) -> R:
        """The channel's recent publications (its namespace must keep history)."""
        return self._call("history", _fields(channel=channel, since=since, limit=limit))

    def presence(self, channel: str) -> R:
        """Who is subscribed to ``channel`` (its namespace must have presence)."""
        return self._call("presence", {"channel": channel})

    def presence_stats(self, channel: str) -> R:
        """How many connections and users are subscribed to ``channel``."""
        return self._call("presence_stats", {"channel": channel})

    def channels(self, pattern: Optional[str] = None) -> R:
        """The active channels (matching the fnmatch ``pattern``): ``{"channels": {name: {"subscribers": n}}}``."""
        return self._call("channels", _fields(pattern=pattern))


class Client(_Base, _Methods[Any]):
    """A synchronous client of the server API, on one keep-alive connection
    (not to be shared by threads: give each thread its own). A socket of its
    own, each request written whole in one send and its answer parsed by
    httptools: a call costs the client some 20 µs, where ``http.client``
    took five times as long."""

    def __init__(self, url: str, api_key: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(url, api_key, timeout)
        self._socket: Optional[socket.socket] = None
        self._used = False

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        # A request is one write: nothing to gain from Nagle, a delayed ACK to lose.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            return ssl_module.create_default_context().wrap_socket(sock, server_hostname=self.host)
        return sock

    def _call(self, method: str, body: dict[str, Any]) -> Any:
        request = self._request(method, orjson.dumps(body))
        for attempt in (1, 2):
            if self._socket is None:
                self._socket = self._connect()
                self._used = False
            reused = self._used
            try:
                status, data, closes = self._exchange(self._socket, request)
            except (_Dropped, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused and attempt == 1:
                    continue  # closed by the server while idle: once more on a new connection
                raise ConnectionResetError(f"{self.url}: the connection closed before the answer") from None
            except BaseException:
                # A timeout or an interruption: the connection's state is unknown.
                self.close()
                raise
            self._used = True
            if closes:
                self.close()
            return _result(status, data)
        raise AssertionError("not reached")

    def _exchange(self, sock: socket.socket, request: bytes) -> tuple[int, bytes, bool]:
        sock.sendall(request)
        answer = _Answer(self.url)
        while not answer.feed(sock.recv(65536)):
            continue
        return answer.result()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Dropped(Exception):
    """The connection ended before any of the answer came."""


class _Answer:
    """One response, parsed by httptools."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started = False
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        # Asked here: once the message is over, the parser has moved on.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True

    def feed(self, data: bytes) -> bool:
        """Parse what the connection read (b"": it closed); whether the answer is whole."""
        if not data:
            if self.started:
                # Not sent again: the server has taken the request.
                raise ConnectionAbortedError(f"{self.url}: the connection closed in the middle of an answer")
            raise _Dropped()
        self.started = True
        self.parser.feed_data(data)
        return self.complete

    def result(self) -> tuple[int, bytes, bool]:
        """(status, body, whether the server closes the connection)."""
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return self.parser.get_status_code(), body, not self.keep_alive


class AsyncClient(_Base, _Methods[Awaitable[Any]]):
    """An asyncio client of the server API, on one keep-alive connection;
    concurrent calls take turns on it (use several clients for more in flight)."""

    def __init__(self, url: str, api_key: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(url, api_key, timeout)
        self._streams: Optional[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        self._used = False
        self._turn: Optional[asyncio.Lock] = None

    async def _call(self, method: str, body: dict[str, Any]) -> Any:  # type: ignore[override]
        if self._turn is None:
            self._turn = asyncio.Lock()
        request = self._request(method, orjson.dumps(body))
        async with self._turn:
            for attempt in (1, 2):
                reused = self._streams is not None and self._used
                try:
                    status, data, closes = await asyncio.wait_for(self._exchange(request), self.timeout)
                except (_Dropped, ConnectionResetError, BrokenPipeError):
                    await self.aclose()
                    if reused and attempt == 1:
                        continue  # closed by the server while idle: once more on a new connection
                    raise ConnectionResetError(f"{self.url}: the connection closed before the answer") from None
                except BaseException:
                    # A timeout or a cancellation: the connection's state is unknown.
                    await self.aclose()
                    raise
                self._used = True
                if closes:
                    await self.aclose()
                return _result(status, data)
        raise AssertionError("not reached")

    async def _exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(
                self.host, self.port, ssl=ssl_module.create_default_context() if self.tls else None)
            self._used = False
        reader, writer = self._streams
        writer.write(request)
        await writer.drain()
        answer = _Answer(self.url)
        while not answer.feed(await reader.read(65536)):
            continue
        return answer.result()

    async def aclose(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            writer = streams[1]
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl_module.SSLError) as exc:
                # Closed by the peer already: nothing more to close, said at debug level.
                log.debug("%s: the connection was closed by the server first: %s", self.url, exc)

    close = aclose

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

