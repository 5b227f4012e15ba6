"""The handler API (``handler(req, res)``) and the middleware protocol.

A request here is one HTTP/1.1 GET without a body: picows, our wire layer,
reads nothing else. docs/guide.md shows how to pair wsrelay with a full HTTP
framework for the rest.
"""

from __future__ import annotations

import http.client
import io
from http import HTTPStatus
from typing import Any, Callable, Optional, Union
from urllib.parse import parse_qs, unquote

from multidict import CIMultiDict
from picows import WSUpgradeResponse


class Request:
    """An HTTP request as a handler sees it."""

    __slots__ = ("method", "path", "query_string", "_headers", "_query")

    def __init__(self, method: str, path: str, query_string: str, headers: CIMultiDict) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self._headers = headers
        self._query: Optional[dict[str, list[str]]] = None

    @classmethod
    def from_upgrade_request(cls, request: Any) -> Request:
        raw = request.path.decode("latin-1")
        path, _, query = raw.partition("?")
        return cls(request.method.decode("latin-1"), unquote(path), query, request.headers)

    @classmethod
    def from_head(cls, head: bytes) -> Request:
        """The request in ``head``, the bytes of a request line and headers
        (what the handshake guard read), parsed by the standard library's
        HTTP header parser. ValueError when it is not one."""
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError("malformed request line")
        try:
            message = http.client.parse_headers(io.BytesIO(rest))
        except http.client.HTTPException as exc:
            raise ValueError(f"malformed headers: {exc}") from None
        raw = parts[1].decode("latin-1")
        path, _, query = raw.partition("?")
        return cls(parts[0].decode("latin-1"), unquote(path), query, CIMultiDict(message.items()))

    def query(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of query parameter ``name``."""
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        values = self._query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """Header ``name``, case-insensitively."""
        return self._headers.get(name, default)

    @property
    def headers(self) -> CIMultiDict:
        return self._headers


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
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError("header name and value must be str")
        if not name or any(c in name for c in " \t\r\n:") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        self.headers[name] = value
        return self

    def write(self, body: Union[str, bytes]) -> Response:
        """Append to the body."""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            raise ValueError(f"body must be str or bytes, got {type(body).__name__}")
        self.body += body
        return self

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
