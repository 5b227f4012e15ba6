"""An application: services, routers, endpoints, process hosts and process
functions. The YAML file (wsrelay.config) builds one of these; Python code can
build the same thing directly.

Ids are ``namespace:name``: the entry ``handler`` of namespace ``app.ws`` is
``app.ws:handler``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional

from .errors import ConfigError

Handler = Callable[[Any, Any], None]

# picows reads GET requests without a body only; see docs/guide.md.
SUPPORTED_METHODS = ("GET",)

# A channel namespace's presence_max_members when it gives none: past it, a
# channel sends no join/leave events (docs/guide.md, "Presence").
DEFAULT_PRESENCE_MAX_MEMBERS = 1000

# The namespaces of the app installed last, for wsrelay.channels.namespace_of.
_installed_namespaces: list[ChannelNamespace] = []


@dataclasses.dataclass(frozen=True)
class ChannelNamespace:
    """Options for the channels whose names match ``pattern`` (fnmatch,
    case-sensitive): presence and its join/leave events (docs/guide.md,
    "Presence"); a history when ``history_size`` and ``history_ttl`` are
    both over 0 (docs/guide.md, "History and recovery")."""

    id: str
    pattern: str
    history_size: int = 0
    history_ttl: float = 0.0
    presence: bool = False
    join_leave: bool = False
    presence_max_members: int = DEFAULT_PRESENCE_MAX_MEMBERS

    def matches(self, name: str) -> bool:
        from fnmatch import fnmatchcase

        return fnmatchcase(name, self.pattern)

    def options(self) -> dict[str, Any]:
        return {"namespace": self.id, "history_size": self.history_size, "history_ttl": self.history_ttl,
                "presence": self.presence, "join_leave": self.join_leave,
                "presence_max_members": self.presence_max_members}


def current_namespaces() -> list[ChannelNamespace]:
    return _installed_namespaces


def qualify(namespace: str, name: str) -> str:
    """``name`` as an id: unchanged when it already has a namespace."""
    return name if ":" in name else f"{namespace}:{name}"


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (all interfaces) as (host, port); ValueError
    names what is wrong."""
    if not isinstance(addr, str) or ":" not in addr:
        raise ValueError(f"address {addr!r} must look like 'host:port' or ':port'")
    host, _, port_text = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"address {addr!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {addr!r}: port {port} is out of range")
    return (host or "0.0.0.0", port)


def _name(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"


def _check_handler(func: Any, where: str) -> None:
    """Refuse at start a handler that cannot be called as ``func(req, res)``,
    rather than answer 500 to every request. ``async def`` handlers pass."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        # Python cannot read the signature (some builtins and C callables):
        # such a handler is tried when a request comes.
        return
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise ConfigError(f"{_name(func)}{signature} cannot be called as func(req, res): {exc}",
                          where, "func") from None


@dataclasses.dataclass
class Endpoint:
    id: str
    method: str
    path: str
    func: Handler


@dataclasses.dataclass
class Router:
    id: str
    service: str
    prefix: str = ""
    pre_middleware: list[str] = dataclasses.field(default_factory=list)
    pre_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    post_middleware: list[str] = dataclasses.field(default_factory=list)
    post_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    endpoints: list[Endpoint] = dataclasses.field(default_factory=list)

    def endpoint(self, method: str, path: str, func: Handler, id: Optional[str] = None) -> Endpoint:
        """Route ``method path`` (below this router's prefix) to ``func(req, res)``."""
        method = method.upper()
        where = id or f"{self.id}{path}"
        if method not in SUPPORTED_METHODS:
            raise ConfigError(f"method {method!r} is not served (only {', '.join(SUPPORTED_METHODS)})",
                              where, "method")
        if not path.startswith("/"):
            raise ConfigError(f"path {path!r} must start with '/'", where, "path")
        if not callable(func):
            raise ConfigError(f"{func!r} is not callable", where, "func")
        _check_handler(func, where)
        endpoint = Endpoint(where, method, path, func)
        self.endpoints.append(endpoint)
        return endpoint


@dataclasses.dataclass
class Service:
    id: str
    addr: str = "127.0.0.1:8080"


class App:
    """Everything one configuration file can say, said in Python."""

    def __init__(self, namespace: str = "app") -> None:
        self.namespace = namespace
        self.services: dict[str, Service] = {}
        self.routers: dict[str, Router] = {}
        self.hosts: list[str] = []
        self.functions: dict[str, Callable[..., Any]] = {}
        # In declaration order: the first that matches a name wins.
        self.channel_namespaces: list[ChannelNamespace] = []

    def service(self, name: str, addr: str = "127.0.0.1:8080") -> Service:
        """An HTTP service (``http.service``) listening on ``addr``."""
        sid = qualify(self.namespace, name)
        try:
            parse_addr(addr)
        except ValueError as exc:
            raise ConfigError(str(exc), sid, "addr") from None
        if sid in self.services:
            raise ConfigError("declared twice", sid)
        self.services[sid] = service = Service(sid, addr)
        return service

    def router(
        self,
        name: str,
        server: str,
        prefix: str = "",
        pre_middleware: Optional[list[str]] = None,
        pre_options: Optional[dict[str, Any]] = None,
        post_middleware: Optional[list[str]] = None,
        post_options: Optional[dict[str, Any]] = None,
    ) -> Router:
        """A router (``http.router``) on service ``server`` for paths under ``prefix``."""
        rid = qualify(self.namespace, name)
        sid = qualify(self.namespace, server)
        if sid not in self.services:
            raise ConfigError(f"no http.service {sid!r} is declared", rid, "meta.server")
        if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
            raise ConfigError(f"prefix {prefix!r} must be empty or start with '/'", rid, "prefix")
        # "/" is the root, as "" is; "/ws/" is "/ws".
        prefix = prefix.rstrip("/")
        if rid in self.routers:
            raise ConfigError("declared twice", rid)
        from .http import middleware_factory

        for field, names in (("pre_middleware", pre_middleware), ("post_middleware", post_middleware)):
            for mw in names or []:
                try:
                    middleware_factory(mw)
                except LookupError as exc:
                    raise ConfigError(str(exc), rid, field) from None
        self.routers[rid] = router = Router(
            rid, sid, prefix,
            list(pre_middleware or []), dict(pre_options or {}),
            list(post_middleware or []), dict(post_options or {}),
        )
        return router

    def process_host(self, name: str) -> str:
        """A process host (``process.host``) that processes can be spawned on."""
        hid = qualify(self.namespace, name)
        if hid not in self.hosts:
            self.hosts.append(hid)
        return hid

    def process_function(self, id: str, func: Callable[..., Any]) -> None:
        """Register ``func`` (``async def``) as process function ``id``."""
        self.functions[qualify(self.namespace, id)] = func

    def channel_namespace(self, name: str, pattern: str, history_size: int = 0, history_ttl: float = 0.0,
                          presence: bool = False, join_leave: bool = False,
                          presence_max_members: int = DEFAULT_PRESENCE_MAX_MEMBERS) -> ChannelNamespace:
        """Options (``channel.namespace``) for the channels matching ``pattern``."""
        nid = qualify(self.namespace, name)
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("must be a non-empty fnmatch pattern", nid, "pattern")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
            raise ConfigError(f"must be a whole number, 0 or more, got {history_size!r}", nid, "history_size")
        if isinstance(history_ttl, bool) or not isinstance(history_ttl, (int, float)) or history_ttl < 0:
            raise ConfigError(f"must be a duration, 0 or more, got {history_ttl!r}", nid, "history_ttl")
        for field, value in (("presence", presence), ("join_leave", join_leave)):
            if not isinstance(value, bool):
                raise ConfigError(f"must be true or false, got {value!r}", nid, field)
        if isinstance(presence_max_members, bool) or not isinstance(presence_max_members, int) \
                or presence_max_members < 0:
            raise ConfigError(f"must be a whole number, 0 or more, got {presence_max_members!r}", nid,
                              "presence_max_members")
        if any(ns.id == nid for ns in self.channel_namespaces):
            raise ConfigError("declared twice", nid)
        namespace = ChannelNamespace(nid, pattern, history_size, float(history_ttl), presence, join_leave,
                                     presence_max_members)
        self.channel_namespaces.append(namespace)
        return namespace

    def namespace_of(self, channel: str) -> Optional[ChannelNamespace]:
        """The first of this app's channel namespaces matching ``channel``."""
        return next((ns for ns in self.channel_namespaces if ns.matches(channel)), None)

    def check(self) -> None:
        """Refuse what only the whole app shows: an endpoint whose func is
        one of the app's process functions (``async def room(*args)`` can be
        called with two arguments, but it is not a handler)."""
        processes = {id(func): fid for fid, func in self.functions.items()}
        for router in self.routers.values():
            for endpoint in router.endpoints:
                fid = processes.get(id(endpoint.func))
                if fid is not None:
                    raise ConfigError(
                        f"{_name(endpoint.func)} is the process function {fid!r}, not a handler: an endpoint's "
                        f"func is called as func(req, res) for each request, and may spawn {fid!r}",
                        endpoint.id, "func")

    def install(self) -> None:
        """Declare this app's hosts and functions on the node."""
        from ._core.history import policy_changed
        from ._core.presence import set_namespaces
        from ._core.runtime import node

        self.check()
        n = node()
        for host in self.hosts:
            n.add_host(host)
        if self.hosts:
            n.set_default_host(self.hosts[0])
        for fid, func in self.functions.items():
            n.register_function(fid, func)
        _installed_namespaces[:] = self.channel_namespaces
        policy_changed()
        set_namespaces([(ns.pattern, ns.presence, ns.join_leave, ns.presence_max_members)
                        for ns in self.channel_namespaces])
