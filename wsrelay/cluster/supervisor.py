"""``WSRELAY_WORKERS=N``: ``wsrelay serve FILE`` as a supervisor.

It starts a private nats-server (unless ``WSRELAY_CLUSTER_URL`` names one),
then N workers, each ``wsrelay serve FILE --addr HOST:PORT --worker I`` with
``WSRELAY_NODE=<base>-<I>`` and the bus's URL and token in its environment.
Every worker binds the same port with SO_REUSEPORT; the supervisor binds it
first (without listening), so a random port (``:0``) is chosen once, and no
other program can take the port while a worker restarts.

A worker that dies is announced to the others at once (they need not wait for
its silence) and restarted after a back-off that doubles from 0.1 s up to
30 s, and starts again from 0.1 s once a worker has stayed up for 10 s.
SIGTERM or SIGINT: every worker gets SIGTERM and drains (WSRELAY_DRAIN_TIMEOUT),
then the broker stops; exit 0. Children die with the supervisor even when it
is SIGKILLed (lifeline.die_with_parent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any, Optional

import uvloop

from ..app import parse_addr
from ..settings import Settings
from . import wire
from .broker import Broker
from .bus import connect_bus
from .errors import ClusterError
from .lifeline import die_with_parent

log = logging.getLogger("wsrelay.supervisor")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
# Beyond WSRELAY_DRAIN_TIMEOUT, before a worker that has not exited is killed.
STOP_GRACE = 5.0
SERVING = "wsrelay: serving "


def default_node_name() -> str:
    """The host name, as a node name ([A-Za-z0-9_-])."""
    from ..settings import node_name

    return node_name(Settings(workers=1)) or "wsrelay"


# A worker runs the wsrelay this supervisor runs: ``python -m wsrelay`` would
# import ./wsrelay of the current directory first (the project's own checkout,
# or any folder named so). The package's parent directory goes first on
# sys.path just for that import, then leaves: the rest of the worker's path
# is Python's, with the current directory first, as under ``-m``, and the
# YAML file's directory added by the configuration loader.
_WORKER_MAIN = ("import sys; sys.path.insert(0, {parent!r}); import wsrelay.cli; sys.path.remove({parent!r}); "
                "sys.exit(wsrelay.cli.main())")


def worker_command() -> list[str]:
    """The command line of a worker, before its arguments."""
    import wsrelay

    parent = os.path.dirname(os.path.dirname(os.path.abspath(wsrelay.__file__)))
    return [sys.executable, "-c", _WORKER_MAIN.format(parent=parent)]


def supervise(app: Any, file: str, addr: Optional[str], settings: Settings) -> int:
    """Run the supervisor until SIGTERM or SIGINT; the exit status."""
    return uvloop.run(Supervisor(app, file, addr, settings).run())


class _StartFailed(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Worker:
    __slots__ = ("index", "node", "proc", "restarts", "ready", "incarnation")

    def __init__(self, index: int, node: str) -> None:
        self.index = index
        self.node = node
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.restarts = 0
        self.ready = False
        # The latest incarnation its heartbeats showed: what a death notice names.
        self.incarnation = 0


class Supervisor:
    def __init__(self, app: Any, file: str, addr: Optional[str], settings: Settings) -> None:
        self.app = app
        self.file = file
        self.addr = addr
        self.settings = settings
        base = settings.node_name or default_node_name()
        self.workers = [_Worker(i, f"{base}-{i}") for i in range(settings.workers)]
        self._by_node = {w.node: w for w in self.workers}
        self.broker: Optional[Broker] = None
        self.url = ""
        self.token: Optional[str] = None
        self._reserved: Optional[socket.socket] = None
        self._worker_addr = ""
        self._nc: Any = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._serving: Optional[asyncio.Future[str]] = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._serving = loop.create_future()
        tasks: list[asyncio.Task[None]] = []
        status = 0
        try:
            self._reserve_port()
            self._start_broker()
            self._nc = await connect_bus(self.url, token=self.token, creds=self.settings.cluster_creds,
                                         name="wsrelay supervisor", quiet=lambda: self._stopping)
            await self._nc.subscribe(wire.HEARTBEAT_SUBJECT, cb=self._on_notice)
            tasks = [asyncio.ensure_future(self._keep(w)) for w in self.workers]
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({self._serving, stop}, return_when=asyncio.FIRST_COMPLETED)
            if self._serving.cancelled():
                raise _StartFailed("a worker failed to start (its error is above)")
            if self._serving.done():
                print(SERVING + self._serving.result(), flush=True)
                await stop
            else:
                stop.cancel()
            log.info("signal received: stopping %d workers", len(self.workers))
        except _StartFailed as exc:
            print(f"wsrelay: {exc}", file=sys.stderr)
            status = exc.status
        except ClusterError as exc:
            print(f"wsrelay: {exc}", file=sys.stderr)
            status = 1
        finally:
            status = max(status, await self._shutdown(tasks))
        return status

    # -- start ---------------------------------------------------------------------

    def _reserve_port(self) -> None:
        services = list(self.app.services.values())
        first = self.addr or self.settings.addr or services[0].addr
        for service in services[1:]:
            if parse_addr(service.addr)[1] == 0:
                raise _StartFailed(f"service {service.id!r} has port 0: with WSRELAY_WORKERS each service "
                                   "other than the first needs a fixed port", 2)
        host, port = parse_addr(first)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError as exc:
            raise _StartFailed(f"cannot listen on {first}: {exc}") from None
        self._reserved = sock
        port = sock.getsockname()[1]
        self._worker_addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _start_broker(self) -> None:
        s = self.settings
        if s.cluster_url:
            self.url = ",".join(s.cluster_url)
            self.token = s.cluster_token
            return
        self.broker = Broker(binary=s.nats_server, store_dir=s.cluster_data)
        self.broker.start()
        self.url, self.token = self.broker.url, self.broker.token
        log.info("private broker at %s (pid %s)", self.url, self.broker.pid)

    # -- workers -------------------------------------------------------------------

    def _environment(self, worker: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        env["WSRELAY_NODE"] = worker.node
        env["WSRELAY_CLUSTER_URL"] = self.url
        if self.token is not None:
            env["WSRELAY_CLUSTER_TOKEN"] = self.token
        return env

    async def _keep(self, worker: _Worker) -> None:
        """Run worker ``worker`` until the supervisor stops, restarting it."""
        loop = asyncio.get_running_loop()
        argv = [*worker_command(), "serve", self.file, "--addr", self._worker_addr, "--worker", str(worker.index)]
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=self._environment(worker), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent(), start_new_session=True,
            )
            worker.proc = proc
            started = loop.time()
            log.info("worker %d (%s) started (pid %d)", worker.index, worker.node, proc.pid)
            await self._relay_output(worker, proc)
            code = await proc.wait()
            worker.ready = False
            if self._stopping:
                return
            assert self._serving is not None
            if not self._serving.done():
                self._serving.cancel()
                self._stop.set()
                log.error("worker %d exited with %s before it was serving: stopping", worker.index,
                          _describe(code))
                return
            await self._announce_death(worker)
            if loop.time() - started >= STABLE_AFTER:
                worker.restarts = 0
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** worker.restarts))
            worker.restarts += 1
            log.warning("worker %d (pid %d) exited with %s after %.1f s: restarting in %.2f s",
                        worker.index, proc.pid, _describe(code), loop.time() - started, delay)
            if await self._stop_within(delay):
                return

    async def _stop_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds, or less if the supervisor is told to stop
        meanwhile: whether it was (a worker is not restarted then)."""
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({stop}, timeout=delay)
        if not done:
            stop.cancel()
        return bool(done)

    async def _relay_output(self, worker: _Worker, proc: asyncio.subprocess.Process) -> None:
        """Read the worker's stdout until it closes: its serving line marks it
        ready; anything else is passed on to ours."""
        assert proc.stdout is not None
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            if not line:
                return
            if line.startswith(SERVING) and not worker.ready:
                worker.ready = True
                log.info("worker %d (pid %d) ready", worker.index, proc.pid)
                assert self._serving is not None
                if all(w.ready for w in self.workers) and not self._serving.done():
                    self._serving.set_result(line[len(SERVING):].strip())
                continue
            sys.stdout.write(line)
            sys.stdout.flush()

    async def _on_notice(self, msg: Any) -> None:
        try:
            notice = wire.parse_notice(msg.data)
        except wire.Malformed:
            return  # the workers count and log what is malformed on the bus
        if notice[0] == wire.HB:
            worker = self._by_node.get(notice[1])
            if worker is not None and notice[2] > worker.incarnation:
                worker.incarnation = notice[2]

    async def _announce_death(self, worker: _Worker) -> None:
        if not worker.incarnation:
            return  # it died before its first heartbeat: nobody knows it yet
        try:
            await self._nc.publish(wire.HEARTBEAT_SUBJECT, wire.down_notice(worker.node, worker.incarnation))
        except Exception as exc:  # the bus may be away: its peers will notice the silence instead
            log.warning("cannot announce the death of worker %d: %s", worker.index, exc)

    # -- stop ----------------------------------------------------------------------

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> int:
        """SIGTERM to every worker, wait for them (SIGKILL after the drain
        timeout and a grace), stop the broker; 1 if a worker had to be killed
        or did not exit 0."""
        self._stopping = True
        self._stop.set()
        status = 0
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout + STOP_GRACE)
            if pending:
                for proc in running:
                    if proc.returncode is None:
                        log.error("worker pid %d did not stop in time: killing it", proc.pid)
                        proc.kill()
                        status = 1
                await asyncio.wait(pending)
        for proc in running:
            code = await proc.wait()
            if code != 0:
                log.error("worker pid %d exited with %s", proc.pid, _describe(code))
                status = 1
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as exc:  # closing a client whose broker is gone
                log.debug("closing the bus client: %s", exc)
        if self.broker is not None:
            self.broker.close()
        if self._reserved is not None:
            self._reserved.close()
        log.info("stopped")
        return status


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
