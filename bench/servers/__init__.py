"""The servers under test, each run as its own OS process on a free port.

Every server offers the same three WebSocket paths (wsrelay under its
router's ``/ws`` prefix):

- ``echo``: every message comes back to its sender, same type and content;
- ``sub``: a subscriber of the one room;
- ``pub``: a publisher: each message it sends goes to every subscriber.

The ``+deflate`` variants are the same servers with permessage-deflate on
(wsrelay: WSRELAY_COMPRESSION=on; websockets and aiohttp: their compression
with its defaults); the load generator offers the extension to them alone,
as a browser's ``permessage-deflate; client_max_window_bits``.

``RunningServer`` starts one, waits until it accepts connections, and reads
its CPU time (user+sys) and RSS from /proc/<pid>.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Awaitable, Callable, Optional

import uvloop

from .. import procfs

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
NODE_DIR = BENCH / "node"


def _python() -> str:
    return sys.executable


def run_server(main: Callable[[str, int], Awaitable[None]]) -> None:
    """The command line every peer server shares: ``--host``, ``--port``,
    then ``main(host, port)`` on uvloop until it returns or is interrupted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        uvloop.run(main(args.host, args.port))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return  # how the bench stops a peer server (SIGTERM, SIGINT): not an error


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    argv: Callable[[str, int], list[str]]
    paths: dict[str, str]
    health: Optional[str] = None  # an HTTP path with a JSON body (wsrelay's /health)
    # Where it runs and imports from (another checkout, for a baseline).
    root: pathlib.Path = ROOT
    # Started with these environment variables (the +deflate variants).
    env: Optional[dict[str, str]] = None
    # The load generator offers permessage-deflate.
    compression: bool = False

    def unavailable(self) -> Optional[str]:
        """Why this server cannot run here, or None."""
        if self.name == "node":
            if shutil.which("node") is None:
                return "node is not installed"
            if not (NODE_DIR / "node_modules" / "ws").is_dir():
                return "bench/node/node_modules is missing: run `python -m bench setup` (npm ci)"
        return None


PLAIN_PATHS = {"echo": "/echo", "sub": "/sub", "pub": "/pub"}

SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "wsrelay",
            "wsrelay gateway (`wsrelay serve bench/servers/wsrelay_app/app.yaml`): relay echo through a "
            "process spawned per connection; broadcast by a room process with a wsrelay.Group",
            lambda host, port: [_python(), "-m", "wsrelay", "serve",
                                str(BENCH / "servers" / "wsrelay_app" / "app.yaml"), "--addr", f"{host}:{port}"],
            {"echo": "/ws/echo", "sub": "/ws/sub", "pub": "/ws/pub"},
            health="/health",
        ),
        ServerSpec(
            "picows",
            "bare picows on uvloop (echo in on_ws_frame; broadcast: transport.send per subscriber)",
            lambda host, port: [_python(), "-m", "bench.servers.picows_server", "--host", host, "--port", str(port)],
            PLAIN_PATHS,
        ),
        ServerSpec(
            "websockets",
            "websockets (asyncio implementation) on uvloop; broadcast with websockets.broadcast()",
            lambda host, port: [_python(), "-m", "bench.servers.websockets_server", "--host", host,
                                "--port", str(port)],
            PLAIN_PATHS,
        ),
        ServerSpec(
            "aiohttp",
            "aiohttp web.WebSocketResponse on uvloop; broadcast: a loop of send_str/send_bytes",
            lambda host, port: [_python(), "-m", "bench.servers.aiohttp_server", "--host", host, "--port", str(port)],
            PLAIN_PATHS,
        ),
        ServerSpec(
            "node",
            "Node.js `ws` package; broadcast: a loop of ws.send",
            lambda host, port: ["node", str(NODE_DIR / "server.js"), "--host", host, "--port", str(port)],
            PLAIN_PATHS,
        ),
    )
}


def _deflate_variant(spec: ServerSpec, env: dict[str, str], how: str) -> ServerSpec:
    return dataclasses.replace(spec, name=spec.name + "+deflate", description=f"{spec.description}; {how}",
                               env=env, compression=True)


# Measured unless --servers names others; the +deflate variants on demand.
DEFAULT_SERVERS = tuple(SERVERS)
for _spec, _how in (
    (SERVERS["wsrelay"], "WSRELAY_COMPRESSION=on (no context takeover, one compressor per worker)"),
    (SERVERS["websockets"], "compression='deflate', websockets' defaults (context takeover, 12-bit windows, "
                            "memLevel 5)"),
    (SERVERS["aiohttp"], "compress=True, aiohttp's defaults (context takeover, 15-bit windows)"),
):
    _variant = _deflate_variant(
        _spec, {"WSRELAY_COMPRESSION": "on"} if _spec.name == "wsrelay" else {"BENCH_COMPRESSION": "on"}, _how)
    SERVERS[_variant.name] = _variant


def add_baseline(checkout: pathlib.Path) -> str:
    """A wsrelay built in another checkout (``make build`` there), benchmarked
    beside this one as ``wsrelay@base``: before/after figures from one run."""
    checkout = checkout.resolve()
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"--baseline {checkout}: no {python}; run `make build` there first")
    app = checkout / "bench" / "servers" / "wsrelay_app" / "app.yaml"
    spec = ServerSpec(
        "wsrelay@base",
        f"wsrelay built from {checkout} (same app, same settings)",
        lambda host, port: [str(python), "-m", "wsrelay", "serve", str(app), "--addr", f"{host}:{port}"],
        SERVERS["wsrelay"].paths,
        health="/health",
        root=checkout,
    )
    SERVERS[spec.name] = spec
    return spec.name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """A server under test did not start, or exited at start."""


class RunningServer:
    """One server process: ``with RunningServer(spec, log_path) as srv: ...``."""

    def __init__(self, spec: ServerSpec, log_path: pathlib.Path, host: str = "127.0.0.1",
                 start_timeout: float = 30.0, env: Optional[dict[str, str]] = None) -> None:
        self.spec = spec
        self.host = host
        self.port = free_port(host)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = str(spec.root) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        argv = spec.argv(host, self.port)
        self.log.write(f"$ {' '.join(argv)}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(argv, cwd=str(spec.root), env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def wait_ready(self, timeout: float) -> None:
        """Return once the server accepts connections (a subclass may wait for more)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.spec.name} exited with {self.proc.returncode} at start; see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise ServerError(f"{self.spec.name} did not listen on {self.host}:{self.port} within {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def rss(self) -> int:
        return procfs.rss_bytes(self.pid)

    def health(self) -> Optional[dict[str, Any]]:
        if self.spec.health is None:
            return None
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}{self.spec.health}", timeout=5) as r:
                return json.loads(r.read())
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

# The handshake of an endpoint that has to wait (docs/performance.md, "Handlers
# that wait"): the same relay echo, its handler first finding the user of the
# request's token, synchronously (a dict the handler reads) or from a
# directory process through ``await process.call`` in an ``async def`` handler.
for _name, _path, _how in (
    ("wsrelay+lookup", "/ws/echo_lookup", "a plain handler that looks the user up in a dict, then relays"),
    ("wsrelay+async", "/ws/echo_async_lookup", "an async def handler that looks the user up in a dict "
                                               "(waiting for nothing), then relays"),
    ("wsrelay+call", "/ws/echo_call", "an async def handler that asks a directory process (process.call), "
                                      "then relays"),
):
    SERVERS[_name] = dataclasses.replace(SERVERS["wsrelay"], name=_name,
                                         description=f"{SERVERS['wsrelay'].description}; {_how}",
                                         paths={**SERVERS["wsrelay"].paths, "echo": _path})
