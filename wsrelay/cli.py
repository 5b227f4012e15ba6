"""``wsrelay serve FILE [--addr ADDR]``: run an application file.

Settings and the file are read and checked before anything binds; a bad value
exits with status 2 and a message naming the variable, entry or field.
SIGTERM and SIGINT drain the gateway (SPEC §5) and exit 0.
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

from .errors import ConfigError, SettingsError

log = logging.getLogger("wsrelay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsrelay", description="WebSocket relay engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the application described by a YAML file")
    serve.add_argument("file", help="the application's YAML file")
    serve.add_argument("--addr", help="bind address of the (first) service, host:port or :port")
    check = sub.add_parser("check", help="validate a YAML file and the environment, then exit")
    check.add_argument("file")
    check.add_argument("--addr", help="also validate this bind address")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .settings import load_settings, use_settings

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
    return run(app, args.addr)


def run(app, addr: Optional[str] = None) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then drain; the exit status.

    The Python twin of ``wsrelay serve FILE``. Like it, it owns the process,
    so it also sets the garbage collector up for a server (WSRELAY_GC_THRESHOLD).
    """
    from .settings import settings

    _warn_unknown_variables()
    tune_gc(settings().gc_threshold)
    return uvloop.run(_serve(app, addr))


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


async def _serve(app, addr: Optional[str]) -> int:
    from .gateway import Gateway

    gateway = Gateway(app, addr=addr)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
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

    node().terminate_all("shutdown")
    return 0
