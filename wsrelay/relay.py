"""The ``websocket_relay`` middleware (docs/guide.md, "The relay").

Before the handler: the Origin rule, the upgrade request's validity and the
connection limit. After it: the ``X-WS-Relay`` header, which names the target
process and the relay's settings. The connection itself lives in the core
(``wsrelay._core.relay``). With WSRELAY_COMPRESSION on, the client's
``Sec-WebSocket-Extensions`` offers are answered here (permessage-deflate,
``wsrelay._core.deflate``): an offer that cannot be honoured, or a malformed
one, leaves the connection uncompressed; it never fails the upgrade. So
does the ``recover`` query parameter, read when the handler granted
channels.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any, Optional

from ._core.deflate import negotiate
from ._core.history import parse_recover
from ._core.relay import Connection, RelayListener
from ._core.relayspec import RELAY_HEADER, RelaySpec, max_channels_per_connection, parse_relay_header
from ._core.stats import LimitedLog
from .errors import RelayHeaderError
from .http import Middleware, Request, Response, plain, register_middleware

__all__ = ["RELAY_HEADER", "OriginPolicy", "RelaySpec", "WebSocketRelay", "check_upgrade", "parse_relay_header"]

log = logging.getLogger("wsrelay.relay")

ORIGINS_OPTION = "wsrelay.allowed.origins"
EXTENSIONS_HEADER = "Sec-WebSocket-Extensions"
# The upgrade request's query parameter naming positions to recover from.
RECOVER_PARAM = "recover"
# A client may send a malformed recover on every reconnect: one line a second.
_log = LimitedLog("wsrelay.relay")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


# -- origins -------------------------------------------------------------------------


def _split_origin(origin: str) -> Optional[tuple[str, str]]:
    """(scheme, host[:port]) of an Origin value, lowercased, default port dropped."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or not scheme or not rest or "/" in rest:
        return None
    return scheme, _drop_default_port(scheme, rest)


def _drop_default_port(scheme: str, hostport: str) -> str:
    host, sep, port = hostport.rpartition(":")
    if sep and port == _DEFAULT_PORTS.get(scheme):
        return host
    return hostport


class OriginPolicy:
    """``wsrelay.allowed.origins``: comma-separated patterns with ``*``. A
    pattern with ``://`` matches ``scheme://host[:port]``, one without matches
    ``host[:port]``; case-insensitive. No patterns: same origin only."""

    def __init__(self, spec: Optional[str]) -> None:
        if spec is not None and not isinstance(spec, str):
            raise ValueError(f"{ORIGINS_OPTION} must be a comma-separated string, got {type(spec).__name__}")
        patterns = [p.strip().lower() for p in (spec or "").split(",") if p.strip()]
        self.allow_all = "*" in patterns
        self.same_origin = not patterns
        self._with_scheme: list[re.Pattern[str]] = []
        self._host_only: list[re.Pattern[str]] = []
        for pattern in patterns:
            if "://" in pattern:
                scheme, _, hostport = pattern.partition("://")
                self._with_scheme.append(_glob(f"{scheme}://{_drop_default_port(scheme, hostport)}"))
            else:
                self._host_only.append(_glob(pattern))

    def allows(self, origin: Optional[str], host: Optional[str]) -> bool:
        if origin is None:
            return True  # not a browser: nothing to protect against
        if self.allow_all:
            return True
        parts = _split_origin(origin)
        if parts is None:
            return False
        scheme, hostport = parts
        if self.same_origin:
            return host is not None and hostport == _drop_default_port(scheme, host.strip().lower())
        full = f"{scheme}://{hostport}"
        return any(p.fullmatch(full) for p in self._with_scheme) or any(
            p.fullmatch(hostport) for p in self._host_only
        )


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")))


# -- the upgrade request ------------------------------------------------------------------


def _tokens(value: Optional[str]) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def check_upgrade(req: Request) -> Optional[Response]:
    """None for a valid WebSocket upgrade request (RFC 6455 §4.2.1), else
    the 400/426 response that refuses it."""
    header = req.header
    if "websocket" not in _tokens(header("Upgrade")):
        return plain(426, "426 Upgrade Required: this endpoint only accepts WebSocket upgrades",
                     {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"})
    if "upgrade" not in _tokens(header("Connection")):
        return plain(400, "400 Bad Request: the Connection header must include 'Upgrade'")
    version = header("Sec-WebSocket-Version")
    if version != "13":
        return plain(426, f"426 Upgrade Required: unsupported Sec-WebSocket-Version {version!r}, use 13",
                     {"Sec-WebSocket-Version": "13"})
    key = header("Sec-WebSocket-Key", "")
    try:
        valid_key = len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        valid_key = False
    if not valid_key:
        return plain(400, "400 Bad Request: Sec-WebSocket-Key must be 16 bytes in base64")
    req.normalize_upgrade()
    return None


# -- the middleware --------------------------------------------------------------------------


class WebSocketRelay(Middleware):
    """Upgrades requests whose handler set ``X-WS-Relay`` and relays them."""

    def __init__(self, options: dict[str, Any], service: Any) -> None:
        super().__init__(options, service)
        self.origins = OriginPolicy(options.get(ORIGINS_OPTION))

    def before(self, req: Request, res: Response) -> bool:
        service = self.service
        origin = req.header("Origin")
        if not self.origins.allows(origin, req.header("Host")):
            service.handshake_failed("origin")
            _refuse(res, plain(403, f"403 Forbidden: origin {origin!r} is not allowed"))
            return False
        refusal = check_upgrade(req)
        if refusal is not None:
            service.handshake_failed("bad_upgrade")
            _refuse(res, refusal)
            return False
        if service.at_connection_limit():
            service.handshake_failed("connection_limit")
            _refuse(res, plain(503, "503 Service Unavailable: connection limit reached"))
            return False
        return True

    def after(self, req: Request, res: Response) -> Any:
        values = res.headers.popall(RELAY_HEADER, [])
        if not values:
            return None
        service = self.service
        try:
            if len(values) > 1:
                raise RelayHeaderError(f"{RELAY_HEADER} was set {len(values)} times")
            spec = parse_relay_header(values[0])
        except RelayHeaderError as exc:
            log.error("%s %s: %s", req.method, req.path, exc)
            service.handshake_failed("bad_relay_header")
            _refuse(res, plain(500, f"500 Internal Server Error: {exc}"), failed_upgrade=True)
            return None
        try:
            conn = Connection.prepare(service.relay, spec, _recover(req, service) if spec.channels else None)
        except ProcessLookupError as exc:
            log.warning("%s %s: %s", req.method, req.path, exc)
            service.handshake_failed("target_not_alive")
            _refuse(res, plain(502, f"502 Bad Gateway: {exc}"), failed_upgrade=True)
            return None
        except ValueError as exc:
            log.error("%s %s: %s %s", req.method, req.path, RELAY_HEADER, exc)
            service.handshake_failed("bad_relay_header")
            _refuse(res, plain(500, f"500 Internal Server Error: {RELAY_HEADER} {exc}"), failed_upgrade=True)
            return None
        if service.relay.compression:
            offers = req.header_values(EXTENSIONS_HEADER)
            if offers:
                params, answer = negotiate(", ".join(offers), True)
                if params is not None:
                    conn.deflate_params = params
                    res.headers[EXTENSIONS_HEADER] = answer
        return RelayListener(conn)


def _recover(req: Request, service: Any) -> Optional[dict[str, tuple[str, int]]]:
    """The positions the ``recover`` query parameter names (docs/guide.md,
    "History and recovery"); a malformed one is counted, logged and
    ignored, never a refused upgrade. Its length is bounded by the request
    head's, its entries by WSRELAY_MAX_CHANNELS_PER_CONNECTION."""
    text = req.query(RECOVER_PARAM)
    if text is None:
        return None
    try:
        return parse_recover(text, max_channels_per_connection())
    except ValueError as exc:
        service.relay.node.counters.history_recover_malformed += 1
        _log.warning("recover", f"{req.method} {req.path}: {RECOVER_PARAM} ignored: {exc}")
        return None


def _refuse(res: Response, refusal: Response, failed_upgrade: bool = False) -> None:
    res.status_code = refusal.status_code
    res.headers = refusal.headers
    res.body = refusal.body
    res.failed_upgrade = failed_upgrade


register_middleware("websocket_relay", WebSocketRelay)
