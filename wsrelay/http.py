"""The handler API (``handler(req, res)``) and the middleware protocol.

A request here is one HTTP/1.1 GET without a body: picows, our wire layer,
reads nothing else. docs/guide.md shows how to pair wsrelay with a full HTTP
framework for the rest.
"""

from __future__ import annotations

from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any, Callable, Optional, Union
from urllib.parse import parse_qs, unquote

import orjson
from multidict import CIMultiDict
from picows import WSUpgradeResponse

from ._core.handshake import Head, parse_request
from ._core.pid import Pid
from ._core.relayspec import RELAY_HEADER, parse_relay_header


class Request:
    """An HTTP request as a handler sees it."""

    __slots__ = ("method", "path", "query_string", "_headers", "_fields", "_query", "_cookies", "_transport",
                 "_client")

    def __init__(self, method: str, path: str, query_string: str, headers: CIMultiDict,
                 transport: Any = None) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self._headers: Optional[CIMultiDict] = headers
        # The headers as the core read them (a Head: where each is in the
        # request's bytes), while no CIMultiDict of them is needed
        # (from_head): header() reads them in place, the headers property
        # makes the CIMultiDict once.
        self._fields: Optional[Head] = None
        self._query: Optional[dict[str, list[str]]] = None
        self._cookies: Optional[dict[str, str]] = None
        # The client's socket (an asyncio transport), asked for its address
        # only by a handler that reads req.client.
        self._transport = transport
        self._client: Optional[tuple[str, int]] = None

    @classmethod
    def from_upgrade_request(cls, request: Any, transport: Any = None) -> Request:
        raw = request.path.decode("latin-1")
        path, _, query = raw.partition("?")
        return cls(request.method.decode("latin-1"), unquote(path), query, request.headers, transport)

    @property
    def client(self) -> Optional[tuple[str, int]]:
        """The peer's address, ``(host, port)``: the client's, or the
        reverse proxy's in front of it. None for a request without a socket."""
        if self._client is None and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            if peer:
                self._client = (peer[0], peer[1])
        return self._client

    def cookie(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value of cookie ``name`` sent in the ``Cookie`` header(s)."""
        if self._cookies is None:
            self._cookies = _cookies(self.header_values("Cookie"))
        return self._cookies.get(name, default)

    @classmethod
    def from_head(cls, head: bytes, transport: Any = None) -> Request:
        """The request in ``head``, the bytes of a request line and headers
        (what the handshake guard read), parsed by the core
        (wsrelay._core.handshake.parse_request: a tenth of httptools' cost
        through Python callbacks). ValueError naming the problem when it is
        not one."""
        method, path, query, fields = parse_request(head)
        req = cls(method, path, query, None, transport)  # type: ignore[arg-type]
        req._fields = fields
        return req

    def query(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of query parameter ``name``."""
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        values = self._query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """Header ``name``, case-insensitively."""
        fields = self._fields
        if fields is None:
            return self._headers.get(name, default)  # type: ignore[union-attr]
        return fields.get(name, default)

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (case-insensitively)."""
        fields = self._fields
        if fields is None:
            return self._headers.getall(name, [])  # type: ignore[union-attr]
        return fields.getall(name)

    def normalize_upgrade(self) -> None:
        """Say Upgrade and Connection as picows reads them after the handler
        has run (browsers send "keep-alive, Upgrade", and Upgrade is a list
        too): a request found valid is not refused there, which would
        orphan what the handler spawned."""
        fields = self._fields
        if fields is not None:
            # (Only read so: picows is given the guard's head with Upgrade
            # and Connection as it reads them whatever they were, Decided.)
            fields.normalize_upgrade()
            return
        headers = self._headers
        headers["Connection"] = "Upgrade"  # type: ignore[index]
        headers["Upgrade"] = "websocket"  # type: ignore[index]

    @property
    def headers(self) -> CIMultiDict:
        headers = self._headers
        if headers is None:
            headers = self._headers = CIMultiDict(self._fields.items() if self._fields is not None else ())
            self._fields = None
        return headers


def _cookies(headers: Any) -> dict[str, str]:
    """The cookies of ``Cookie`` header values, by name (the first of a name
    wins: browsers send the most specific first). Each ``name=value`` pair
    is read by the standard library on its own, so that one the standard
    library refuses (another application's on the same domain, with a
    character it does not allow) costs only itself; the separator ``;`` is
    never part of a cookie's value."""
    found: dict[str, str] = {}
    for header in headers:
        for pair in header.split(";"):
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(pair)
            except CookieError:
                continue  # not ours to read, as said above; the other pairs still are
            for key, morsel in jar.items():
                found.setdefault(key, morsel.value)
    return found


class Response:
    """What a handler answers: a status, headers and a body."""

    __slots__ = ("status_code", "headers", "body", "failed_upgrade")

    def __init__(self) -> None:
        self.status_code = 200
        self.headers: CIMultiDict = CIMultiDict()
        self.body = bytearray()
        # Set when a relay was asked for and could not be set up.
        self.failed_upgrade = False

    def status(self, code: int) -> Response:
        if isinstance(code, bool) or not isinstance(code, int):
            raise ValueError(f"status must be an int, got {type(code).__name__}")
        try:
            HTTPStatus(code)
        except ValueError:
            raise ValueError(f"status {code} is not a known HTTP status") from None
        if code < 200:
            raise ValueError(f"status {code} is not a final response status")
        self.status_code = code
        return self

    def header(self, name: str, value: str) -> Response:
        """Set header ``name`` (replacing an earlier value)."""
        if not isinstance(name, str):
            raise TypeError(f"a header name must be a str, got {type(name).__name__}")
        if not isinstance(value, str):
            raise TypeError(_not_a_str(name, value))
        if not name or any(c in name for c in " \t\r\n:") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        self.headers[name] = value
        return self

    def relay(self, target: Union[Pid, str], *, metadata: Optional[dict[str, Any]] = None,
              message_topic: Optional[str] = None,
              heartbeat_interval: Union[float, str, None] = None,
              channels: Union[list[str], dict[str, dict[str, Any]], None] = None,
              user: Optional[str] = None) -> Response:
        """Relay this connection to process ``target`` (a Pid or its text
        form): sets the ``X-WS-Relay`` header from Python values.
        ``heartbeat_interval`` is seconds or a duration (``"30s"``);
        ``channels`` (names, or ``{name: {"info": {...}}}``) are subscribed
        as the connection opens, ``user`` names its user. A value
        of the wrong type raises TypeError, a bad one RelayHeaderError (a
        ValueError), both here, naming the argument."""
        _argument("target", target, (Pid, str), "a Pid or its text form")
        fields: dict[str, Any] = {"target_pid": str(target)}
        if metadata is not None:
            fields["metadata"] = _argument("metadata", metadata, dict, "a dict")
        if message_topic is not None:
            fields["message_topic"] = _argument("message_topic", message_topic, str, "a str")
        if heartbeat_interval is not None:
            fields["heartbeat_interval"] = _argument("heartbeat_interval", heartbeat_interval, (int, float, str),
                                                     "seconds (a float) or a duration like '30s'")
        if channels is not None:
            fields["channels"] = _argument("channels", channels, (list, dict), "a list of names or a dict")
        if user is not None:
            fields["user"] = _argument("user", user, str, "a str")
        try:
            raw = orjson.dumps(fields).decode()
        except TypeError as exc:
            raise TypeError(f"res.relay(): metadata must be JSON-serialisable, as must channels' info: {exc}") from None
        # The middleware reads the header again; reading it here makes a bad
        # value fail at this call, in the handler's traceback.
        parse_relay_header(raw)
        self.headers[RELAY_HEADER] = raw
        return self

    def write(self, body: Union[str, bytes]) -> Response:
        """Append to the body."""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            raise ValueError(f"body must be str or bytes, got {type(body).__name__}")
        self.body += body
        return self

    def encode(self) -> bytes:
        """The whole HTTP/1.1 response, with a Content-Length and
        ``Connection: close`` (as the handshake guard writes it)."""
        body = bytes(self.body)
        headers = CIMultiDict(self.headers)
        if body and "Content-Type" not in headers:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        headers["Content-Length"] = str(len(body))
        headers["Connection"] = "close"
        head = [f"HTTP/1.1 {self.status_code} {HTTPStatus(self.status_code).phrase}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def to_upgrade_response(self) -> Any:
        """The picows response that carries this one to the client."""
        response = WSUpgradeResponse()
        response.version = b"HTTP/1.1"
        response.status = HTTPStatus(self.status_code)
        response.headers = self.headers
        response.body = bytes(self.body) or None
        if response.body is not None and "Content-Type" not in self.headers:
            self.headers["Content-Type"] = "text/plain; charset=utf-8"
        return response


def _argument(name: str, value: Any, types: Any, wanted: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"res.relay(): {name} must be {wanted}, got {type(value).__name__}")
    return value


def _not_a_str(name: str, value: Any) -> str:
    """Why header ``name`` cannot take ``value``, and what to write instead."""
    problem = f"header {name!r}: a header value must be a str, got {type(value).__name__}"
    if name.lower() == RELAY_HEADER.lower():
        return (f"{problem}: {RELAY_HEADER} holds a JSON object; use res.relay(pid) (docs/guide.md, "
                f"'The X-WS-Relay header'), or json.dumps({{\"target_pid\": str(pid)}})")
    if isinstance(value, Pid):
        return f"{problem}: use str(pid)"
    return problem


def plain(status: int, text: str, headers: Optional[dict[str, str]] = None) -> Response:
    """A short text response (errors, health)."""
    res = Response().status(status).write(text + "\n")
    for name, value in (headers or {}).items():
        res.header(name, value)
    return res


class Middleware:
    """A step around a router's handlers, configured by the router's options.

    ``before`` runs first (post-match middleware: after the route matched);
    returning False answers the request with ``res`` as it stands.
    ``after`` runs once the handler has: it may return a picows listener to
    upgrade the connection instead of answering.
    """

    def __init__(self, options: dict[str, Any], service: Any) -> None:
        self.options = options
        self.service = service

    def before(self, req: Request, res: Response) -> bool:
        return True

    def after(self, req: Request, res: Response) -> Any:
        return None


MiddlewareFactory = Callable[[dict, Any], Middleware]
_MIDDLEWARE: dict[str, MiddlewareFactory] = {}


def register_middleware(name: str, factory: MiddlewareFactory) -> None:
    """Make middleware ``name`` available to routers' ``*_middleware`` lists."""
    _MIDDLEWARE[name] = factory


def middleware_factory(name: str) -> MiddlewareFactory:
    try:
        return _MIDDLEWARE[name]
    except KeyError:
        raise LookupError(f"unknown middleware {name!r}; known: {sorted(_MIDDLEWARE) or 'none'}") from None
