"""``wsrelay serve FILE [--addr ADDR]``: run an application file.

Settings and the file are read and checked before anything binds; a bad value
exits with status 2 and a message naming the variable, entry or field.
SIGTERM and SIGINT drain the gateway (docs/guide.md, section 10) and exit 0.

With ``WSRELAY_WORKERS``, ``serve`` is a supervisor (wsrelay/cluster/
supervisor.py) running ``serve FILE --worker I`` children; with
``WSRELAY_CLUSTER_URL`` (which the supervisor gives its workers) the process
joins the cluster before it serves, and leaves it after draining.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from typing import Optional, Sequence

import uvloop

from ._core.vocab import SHUTDOWN
from .errors import ClusterError, ConfigError, SettingsError

log = logging.getLogger("wsrelay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsrelay", description="WebSocket relay engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the application described by a YAML file")
    serve.add_argument("file", help="the application's YAML file")
    serve.add_argument("--addr", help="bind address of the (first) service, host:port or :port")
    serve.add_argument("--worker", type=int, metavar="I",
                       help="set by the supervisor: run as its worker I, sharing the port with the others")
    check = sub.add_parser("check", help="validate a YAML file and the environment, then exit")
    check.add_argument("file")
    check.add_argument("--addr", help="also validate this bind address")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from . import load_runtime
    from .settings import load_settings, use_settings

    load_runtime()

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"wsrelay: bad environment variable {exc}", file=sys.stderr)
        return 2
    use_settings(settings)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.addr is not None:
        from .app import parse_addr

        try:
            parse_addr(args.addr)
        except ValueError as exc:
            print(f"wsrelay: --addr: {exc}", file=sys.stderr)
            return 2
    from .config import load_app

    try:
        app = load_app(args.file)
        if not app.services:
            raise ConfigError("the file declares no http.service")
    except ConfigError as exc:
        print(f"wsrelay: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        _warn_unknown_variables()
        print(f"{args.file}: ok ({len(app.services)} service(s), {len(app.routers)} router(s), "
              f"{len(app.functions)} process function(s))")
        return 0
    if settings.workers and args.worker is None:
        try:
            from .cluster.supervisor import supervise
        except ImportError as exc:
            print(f"wsrelay: WSRELAY_WORKERS needs the cluster extra ({exc.name} is missing): "
                  "pip install 'wsrelay[cluster]'", file=sys.stderr)
            return 2
        return supervise(app, args.file, args.addr, settings)
    return _run(app, args.addr, args.worker)


def run(app, addr: Optional[str] = None) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then drain; the exit status.

    The Python twin of ``wsrelay serve FILE``. Like it, it owns the process,
    so it also sets the garbage collector up for a server (WSRELAY_GC_THRESHOLD).
    """
    return _run(app, addr, None)


def _run(app, addr: Optional[str], worker: Optional[int]) -> int:
    from .settings import settings

    _warn_unknown_variables()
    tune_gc(settings().gc_threshold)
    return uvloop.run(_serve(app, addr, worker))


def _warn_unknown_variables() -> None:
    from .settings import unknown_variables

    for warning in unknown_variables():
        log.warning("%s", warning)


def tune_gc(threshold: int) -> None:
    """Collect the young generation every ``threshold`` allocations, and
    exempt everything loaded so far (modules, the app) from collection.

    With Python's default (700), the objects of messages in flight outlive a
    few young collections and are promoted, and the full collections that
    follow walk every connection's objects: at 10k connections a quarter of
    the gateway's CPU. docs/performance.md has the measurements.
    """
    if threshold <= 0:
        return
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    gc.freeze()


async def _serve(app, addr: Optional[str], worker: Optional[int] = None) -> int:
    from .gateway import Gateway
    from .settings import settings

    transport = None
    keeper = None
    if settings().cluster_url:
        try:
            transport = await _start_transport(settings())
        except _ClusterStartError as exc:
            print(f"wsrelay: {exc}", file=sys.stderr)
            return exc.status
    if transport is not None:
        from ._core.remote import join_cluster

        join_cluster(transport)
        from .cluster.history import start_history

        # Before the service listens: a channel with history is numbered by its keeper.
        keeper = await start_history(transport, app.channel_namespaces)
        if settings().gc_threshold > 0:
            # The cluster's modules (nats-py...) were imported just now:
            # exempt them from collection too, as tune_gc did the rest.
            gc.freeze()
    gateway = Gateway(app, addr=addr, reuse_port=worker is not None, transport=transport)
    if transport is not None:
        from .metrics import render

        # What this node answers when another one gathers the machine's metrics.
        transport.metrics = lambda: render(gateway)[0]
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        if transport is not None:
            await transport.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"wsrelay: serving {', '.join(gateway.url('', sid, 'http') for sid in gateway.services)}", flush=True)
    await stop.wait()
    log.info("signal received: draining (up to %s s)", gateway.settings.drain_timeout)
    drained = await gateway.shutdown()
    log.info("stopped (%s)", "drained" if drained else "drain timeout: remaining connections dropped")
    from ._core.runtime import node

    node().terminate_all(SHUTDOWN)
    if transport is not None:
        if keeper is not None:
            keeper.stop()
        await transport.stop()
    return 0


class _ClusterStartError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def _start_transport(settings):
    """The started cluster transport of this node (WSRELAY_CLUSTER_*)."""
    try:
        from .cluster.transport import Transport
    except ImportError as exc:
        raise _ClusterStartError(f"WSRELAY_CLUSTER_URL needs the cluster extra ({exc.name} is missing): "
                                 "pip install 'wsrelay[cluster]'", 2) from None
    from .cluster.supervisor import default_node_name

    try:
        transport = Transport(settings.node_name or default_node_name(), list(settings.cluster_url),
                              token=settings.cluster_token, creds=settings.cluster_creds,
                              down_after=settings.cluster_down_after)
    except ValueError as exc:
        raise _ClusterStartError(f"bad environment variable WSRELAY_NODE: {exc}", 2) from None
    try:
        await transport.start()
    except ClusterError as exc:
        raise _ClusterStartError(str(exc), 1) from None
    return transport
