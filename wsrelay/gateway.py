"""The gateway: an App's services listening on picows, routing each request to
its router and endpoint, with /health, /metrics and the browser client
(/wsrelay.js, wsrelay/browser.py) on every service, and the server API
(wsrelay/api.py) on every service or on a listener of its own."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import Counter
from typing import Any, Optional

import orjson
import picows
from picows import WSUpgradeResponseWithListener

from . import browser, load_runtime, threads
from ._core.handshake import Decided, HandlerDeadlines, Handshakes, http_answer
from ._core.picows_private import ServerProtocols
from ._core.relay import RelayListener, RelayService
from ._core.runtime import node as get_node
from ._core.runtime import terminate
from .api import PREFIX as API_PREFIX
from .api import Api
from .app import App, Router, Service, parse_addr
from .http import Middleware, Request, Response, middleware_factory, plain
from .settings import Settings
from .settings import settings as current_settings

log = logging.getLogger("wsrelay.gateway")

load_runtime()  # the gateway may be imported before any other public name


def _is_async(func: Any) -> bool:
    """Whether an endpoint is ``async def`` (a function, or an object whose
    ``__call__`` is one)."""
    return inspect.iscoroutinefunction(func) or (
        callable(func) and not inspect.isroutine(func) and inspect.iscoroutinefunction(type(func).__call__))


class _RouterRuntime:
    __slots__ = ("router", "pre", "post", "endpoints", "async_paths")

    def __init__(self, router: Router, service: ServiceRuntime) -> None:
        self.router = router
        self.pre: list[Middleware] = [middleware_factory(n)(router.pre_options, service) for n in router.pre_middleware]
        self.post: list[Middleware] = [
            middleware_factory(n)(router.post_options, service) for n in router.post_middleware
        ]
        self.endpoints = {(e.method, router.prefix + e.path): e for e in router.endpoints}
        # Requests for these paths wait in the handshake guard for their
        # endpoint (picows' request handling cannot wait).
        self.async_paths = {router.prefix + e.path for e in router.endpoints if _is_async(e.func)}


class ServiceRuntime:
    """One listening service: its routes, its connections and its counters."""

    def __init__(self, gateway: Gateway, service: Service, routers: list[Router]) -> None:
        self.gateway = gateway
        self.service = service
        s = gateway.settings
        loop = asyncio.get_running_loop()
        self.relay = RelayService(
            get_node(), service.id, loop,
            max_message_size=s.max_message_size, write_buffer_limit=s.write_buffer_limit,
            close_timeout=s.close_timeout, stall_timeout=s.stall_timeout,
            ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
            compression=s.compression, compression_min_size=s.compression_min_size,
        )
        # The picows protocols of this service's sockets.
        self._protocols = ServerProtocols(_PICOWS_LOGGER, s.handshake_timeout, _max_frame_size(s), s.read_buffer_size)
        # Longest prefix first, so /ws/admin wins over /ws.
        self.routers = sorted((_RouterRuntime(r, self) for r in routers),
                              key=lambda rt: len(rt.router.prefix), reverse=True)
        routes: dict[bytes, Any] = {path.encode(): self.async_endpoint
                                    for rt in self.routers for path in rt.async_paths}
        if gateway.transport is not None:
            # In a cluster /metrics answers for every worker of the machine,
            # gathered over the bus: it has to wait, so the guard answers it.
            routes[b"/metrics"] = self.machine_metrics
        # The server API on the service's port: its requests go to it from
        # the guard, and their connection stays with it.
        assert gateway.service_api is not None
        self.handshakes = Handshakes(loop, self.make_protocol, timeout=s.handshake_timeout,
                                     receive_buffer=s.socket_receive_buffer, routes=routes,
                                     prefixes={API_PREFIX: gateway.service_api.protocol})
        self.handler_deadlines = HandlerDeadlines(loop, s.handler_timeout)
        self.server: Optional[asyncio.AbstractServer] = None
        self.accepting = True

    def make_protocol(self, transport: asyncio.Transport) -> Any:
        """The picows protocol of one socket; its upgrade request is answered
        by this service's routes. The listener factory is the connection's
        own, so the request its handler sees knows the socket (req.client)."""
        return self._protocols(functools.partial(self.listener_factory, transport))

    # -- used by middleware ---------------------------------------------------------

    def handshake_failed(self, reason: str) -> None:
        self.handshakes.failed(reason)

    @property
    def handshake_failures(self) -> Counter[str]:
        """Refused upgrade requests by reason."""
        return Counter(self.handshakes.failures)

    def at_connection_limit(self) -> bool:
        limit = self.gateway.settings.max_connections
        return bool(limit) and self.gateway.connection_count() >= limit

    # -- the request path ----------------------------------------------------------

    def listener_factory(self, transport: asyncio.Transport, upgrade_request: Any) -> Any:
        try:
            req = Request.from_upgrade_request(upgrade_request, transport)
        except Exception:
            log.exception("unreadable request")
            return _answer(plain(400, "400 Bad Request"))
        outcome = self.dispatch(req)
        if type(outcome) is _Awaited:
            # Only the guard's async route leads to an async endpoint; a path
            # it did not recognise as one is a bug of ours, said as such.
            log.error("%s %s: an async endpoint was reached without waiting for it", req.method, req.path)
            return _answer(plain(500, "500 Internal Server Error: the handler could not be awaited"))
        return _listener(outcome)

    async def async_endpoint(self, head: bytes, transport: Any) -> Any:
        """The guard's route for the paths of async endpoints: the endpoint is
        awaited (within WSRELAY_HANDLER_TIMEOUT), then the socket goes to
        picows with the answer already decided. The handler is awaited here,
        in the guard's task, not in coroutines of its own: each layer costs
        every step of the handler."""
        try:
            req = Request.from_head(head, transport)
        except ValueError as exc:
            self.handshake_failed("bad_request")
            return http_answer(400, "text/plain; charset=utf-8", f"400 Bad Request: {exc}\n".encode())
        outcome = self.dispatch(req)
        if type(outcome) is _Awaited:
            rt, endpoint, res = outcome
            node = get_node()
            # The guard's task is this request's: its journal is its own.
            node.begin_journal()
            failed = True
            # Past it the task is cancelled (HandlerDeadlines, one loop timer
            # for all the handlers of the service).
            deadline = self.handler_deadlines.start()
            try:
                try:
                    await endpoint.func(req, res)
                except asyncio.CancelledError:
                    if not deadline.expired:
                        raise  # cancelled from outside: not ours to turn into a timeout
                    uncancel = getattr(asyncio.current_task(), "uncancel", None)
                    if uncancel is not None:
                        uncancel()
                    timeout = self.handler_deadlines.timeout
                    log.warning("handler %s on %s %s did not finish within %g s (WSRELAY_HANDLER_TIMEOUT)",
                                endpoint.id, req.method, req.path, timeout)
                    self.handshake_failed("handler_timeout")
                    outcome = plain(504, f"504 Gateway Timeout: the handler did not finish within {timeout:g} s")
                except Exception:
                    outcome = self._handler_failed(endpoint, req)
                else:
                    if transport.is_closing():
                        return None  # the client went away while its handler waited (counted by the guard)
                    outcome = self._after(rt, req, res)
                    failed = res.failed_upgrade
            finally:
                deadline.finish()
                _end_journal(node, failed)
        if isinstance(outcome, Response):
            # Answered by the guard, which then drains what the client still
            # sends before closing, so the answer is not lost to a reset.
            return outcome.encode()
        # picows is given the head with Upgrade and Connection as it reads
        # them, and answers what was decided here.
        return Decided(_listener(outcome), self._protocols)

    def dispatch(self, req: Request) -> Any:
        """A RelayListener (upgrade), (listener, response) (upgrade with the
        handler's headers), or a Response to send; for an async endpoint,
        _Awaited: what async_endpoint awaits, then ends as run_endpoint does."""
        path = req.path
        if path == "/health":
            return self.health()
        if path == "/metrics":
            return self.metrics()
        client = browser.answer(path, req.header("If-None-Match"))
        if client is not None:
            return client
        if not self.accepting:
            return plain(503, "503 Service Unavailable: shutting down")
        for rt in self.routers:
            prefix = rt.router.prefix
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                continue
            res = Response()
            for mw in rt.pre:
                if not mw.before(req, res):
                    return res
            endpoint = rt.endpoints.get((req.method, path))
            if endpoint is None:
                continue
            for mw in rt.post:
                if not mw.before(req, res):
                    return res
            if path in rt.async_paths:
                return _Awaited((rt, endpoint, res))
            return self.run_endpoint(rt, endpoint, req, res)
        return plain(404, "404 Not Found")

    def run_endpoint(self, rt: _RouterRuntime, endpoint: Any, req: Request, res: Response) -> Any:
        node = get_node()
        node.begin_journal()
        failed = True
        try:
            try:
                endpoint.func(req, res)
            except Exception:
                return self._handler_failed(endpoint, req)
            outcome = self._after(rt, req, res)
            failed = res.failed_upgrade
            return outcome
        finally:
            _end_journal(node, failed)

    def _handler_failed(self, endpoint: Any, req: Request) -> Response:
        log.exception("handler %s failed on %s %s", endpoint.id, req.method, req.path)
        self.handshake_failed("handler_error")
        return plain(500, "500 Internal Server Error: the handler failed")

    def _after(self, rt: _RouterRuntime, req: Request, res: Response) -> Any:
        """The middleware after a handler that returned: an upgrade, or ``res``."""
        for mw in reversed(rt.post):
            listener = mw.after(req, res)
            if listener is not None:
                if not res.headers:
                    return listener
                return (listener, res)
        for mw in reversed(rt.pre):
            mw.after(req, res)
        return res

    def health(self) -> Response:
        body = {
            "status": "ok" if self.accepting else "draining",
            "connections": len(self.relay.connections),
            "processes": get_node().process_count(),
            "node": self.gateway.settings.node_name,
        }
        transport = self.gateway.transport
        if transport is not None:
            body["node"] = transport.node
            body["incarnation"] = transport.incarnation
            body["peers"] = transport.peers()
        res = Response().status(200 if self.accepting else 503)
        res.header("Content-Type", "application/json")
        return res.write(orjson.dumps(body))

    async def machine_metrics(self, head: bytes, transport: Any) -> bytes:
        """/metrics in a cluster: every node of this machine, each series
        labelled with its node (a node that does not answer in time is
        reported down); ``?local=1``: this node alone."""
        from .cluster.metrics import merge_expositions
        from .metrics import render

        body, content_type = render(self.gateway)
        query = head[:head.find(b"\r\n")].split(b" ")[1].partition(b"?")[2]
        if b"local=1" not in query.split(b"&"):
            body = merge_expositions(await self.gateway.transport.gather_metrics(timeout=1.5))
        return http_answer(200, content_type, body)

    def metrics(self) -> Response:
        from .metrics import render

        body, content_type = render(self.gateway)
        return Response().header("Content-Type", content_type).write(body)


class Gateway:
    """Runs an App: ``await gateway.start()``, then ``await gateway.shutdown()``."""

    def __init__(self, app: App, settings: Optional[Settings] = None, addr: Optional[str] = None, *,
                 reuse_port: bool = False, transport: Any = None) -> None:
        self.app = app
        # A worker under a supervisor shares the service's port with the other
        # workers (SO_REUSEPORT): the kernel spreads connections over them.
        self.reuse_port = reuse_port
        # The cluster's transport (wsrelay.cluster.transport.Transport) when
        # this node is in one; the core's side of it is get_node().remote.
        self.transport = transport
        self.settings = settings or current_settings()
        self.addr_override = addr or self.settings.addr
        self.services: dict[str, ServiceRuntime] = {}
        self.started_at = time.time()
        self._metrics_registry: Any = None
        # The server API (WSRELAY_API_KEY), and its own listener (WSRELAY_API_ADDR).
        self.api: Optional[Api] = None
        # What the services answer on /api/: the API, or a 404 saying where it is.
        self.service_api: Optional[Api] = None
        self.api_server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        self.app.install()
        loop = asyncio.get_running_loop()
        get_node().bind_thread()
        threads.attach()  # other threads reach the runtime through this loop
        _quiet_picows(logging.getLogger("wsrelay").getEffectiveLevel())
        s = self.settings
        bounds = {"max_body": s.api_max_body, "request_timeout": s.handshake_timeout}
        if s.api_key:
            # In a cluster, a key claimed through one node is claimed for all.
            keys = None if self.transport is None else self.transport.idempotency
            self.api = Api(s.api_key, keys=keys, **bounds)
        if self.api is not None and not s.api_addr:
            self.service_api = self.api
        else:
            self.service_api = Api(None, **bounds, off="the server API is off: WSRELAY_API_KEY is not set" if
                                   self.api is None else "the server API is on WSRELAY_API_ADDR, not on the services")
        for index, service in enumerate(self.app.services.values()):
            routers = [r for r in self.app.routers.values() if r.service == service.id]
            rt = ServiceRuntime(self, service, routers)
            if get_node().remote is not None:
                # Frames from other nodes name its connections by id.
                get_node().remote.add_connection_host(service.id)
            addr = self.addr_override if (index == 0 and self.addr_override) else service.addr
            # Each socket starts with the handshake guard, which hands it to
            # picows once the request head is in (wsrelay._core.handshake).
            rt.server = await _listen(loop, rt.handshakes.protocol, addr, service.id, self.reuse_port)
            rt.relay.start()
            self.services[service.id] = rt
            log.info("%s listening on %s", service.id, self.url("", service.id, scheme="http"))
        if self.api is not None and s.api_addr:
            self.api_server = await _listen(loop, self.api.protocol, s.api_addr, "the server API", self.reuse_port)
            host, port = self.api_address()
            log.info("the server API listening on http://%s:%d%s", host, port, API_PREFIX.decode())

    def api_address(self) -> tuple[str, int]:
        """Where the server API's own listener (WSRELAY_API_ADDR) listens."""
        assert self.api_server is not None, "WSRELAY_API_ADDR is not set"
        host, port = self.api_server.sockets[0].getsockname()[:2]
        return host, port

    def connection_count(self) -> int:
        return sum(len(rt.relay.connections) for rt in self.services.values())

    def address(self, service: Optional[str] = None) -> tuple[str, int]:
        rt = self._service(service)
        assert rt.server is not None
        sock = rt.server.sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    def url(self, path: str = "", service: Optional[str] = None, scheme: str = "ws") -> str:
        host, port = self.address(service)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{scheme}://{host}:{port}{path}"

    def _service(self, service: Optional[str]) -> ServiceRuntime:
        if service is None:
            return next(iter(self.services.values()))
        return self.services[service]

    async def shutdown(self, drain_timeout: Optional[float] = None) -> bool:
        """Stop accepting, close every connection with 1001 (targets get
        ``ws.leave`` with reason ``shutdown``) and wait for them to go, at most
        ``drain_timeout`` seconds; then drop what remains. True when every
        connection closed in time."""
        timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        if self.api_server is not None:
            self.api_server.close()
        for api in {self.api, self.service_api} - {None}:
            api.close_all()
        for rt in self.services.values():
            rt.accepting = False
            if rt.server is not None:
                rt.server.close()
            # Handlers still waiting for their request are cancelled, their clients answered 503.
            rt.handshakes.cancel_waiting()
        for rt in self.services.values():
            rt.relay.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        drained = await self._wait_drained(deadline)
        if not drained:
            for rt in self.services.values():
                rt.relay.abort_all()
            await self._wait_drained(loop.time() + 1.0)
        for rt in self.services.values():
            if rt.server is not None:
                await rt.server.wait_closed()
        if self.api_server is not None:
            await self.api_server.wait_closed()
        return drained

    async def _wait_drained(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        waiters = [rt.relay.wait_empty() for rt in self.services.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waiters), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return False
        return True

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()


async def _listen(loop: asyncio.AbstractEventLoop, factory: Any, addr: str, what: str,
                  reuse_port: bool) -> asyncio.AbstractServer:
    """A listener on ``addr`` (``what`` listens there); a worker under a
    supervisor shares it with the other workers (SO_REUSEPORT)."""
    host, port = parse_addr(addr)
    try:
        return await loop.create_server(factory, host, port, reuse_address=True, reuse_port=reuse_port,
                                        backlog=4096)
    except OSError as exc:
        # The resolver's and the kernel's errors do not say which
        # address they are about ("Name or service not known").
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        error = OSError(f"{shown} ({what}): {exc}")
        error.errno = exc.errno
        raise error from exc


class _Awaited(tuple):
    """dispatch's outcome for an async endpoint: (router, endpoint, response)."""

    __slots__ = ()


def _answer(res: Response) -> Any:
    return WSUpgradeResponseWithListener(res.to_upgrade_response(), None)


def _listener(outcome: Any) -> Any:
    """What picows' listener factory returns for a dispatch's outcome."""
    if isinstance(outcome, RelayListener):
        return outcome  # picows answers 101
    if isinstance(outcome, tuple):
        listener, res = outcome
        response = picows.WSUpgradeResponse.create_101_response()
        for name, value in res.headers.items():
            response.headers.add(name, value)
        return WSUpgradeResponseWithListener(response, listener)
    return _answer(outcome)


def _end_journal(node: Any, failed: bool) -> None:
    spawned = node.end_journal()
    if failed:
        # Nothing will ever talk to what the handler spawned for this
        # request: end it instead of leaving orphans.
        for pid in spawned:
            terminate(pid, "handshake_failed")


def _max_frame_size(s: Settings) -> int:
    """picows' bound on one frame. The relay bounds messages itself; with
    compression on, a compressed frame of a message within the limit may be
    a little larger than the message (DEFLATE's stored blocks cost 5 bytes
    per 64 KiB of data that does not compress), so it gets that margin."""
    if not s.compression:
        return s.max_message_size
    return s.max_message_size + s.max_message_size // 8192 + 64


_PICOWS_LOGGER = logging.LoggerAdapter(logging.getLogger("wsrelay.wire"), {})


def _quiet_picows(level: int) -> None:
    # picows logs every accepted connection at INFO; that belongs at DEBUG here.
    logging.getLogger("wsrelay.wire").setLevel(max(level, logging.WARNING))
