"""``python -m bench publish``: a publisher in another process publishes to a
room of N subscribers, against wsrelay channels and the Python incumbents
doing the same job, each set up as its users set it up, in one run:

- ``wsrelay``: ``wsrelay serve`` of bench/servers/wsrelay_app (``WSRELAY_API_KEY``
  set); the subscribers' upgrade grants them channel ``room:bench``; the
  publisher is ``wsrelay.client.Client.publish`` (bench/servers/wsrelay_publish.py);
- ``django-channels``: a consumer joining group ``bench`` on connect, the
  ``channels_redis`` layer on a redis-server started here, uvicorn; the
  publisher calls ``async_to_sync(channel_layer.group_send)``
  (bench/servers/django_channels/);
- ``python-socketio``: ``AsyncServer`` with ``AsyncRedisManager`` on the same
  kind of redis-server, uvicorn; clients join room ``bench``; the publisher a
  write-only ``AsyncRedisManager`` (bench/servers/socketio_*.py). The
  subscribers speak Engine.IO v4 / Socket.IO over a raw WebSocket
  (``SocketIO`` framing below), not python-socketio's client.

Each (N, server) is measured twice: at the highest rate it keeps up with
(``max``: at most ``--window`` publications not yet received by every
subscriber, as bench's broadcast does), then at one ``steady`` rate for
every server (``--rate``, by default half the best incumbent's ``max``
rate at that N measured in this run). Beside them, at the largest N:
``wsrelay-group`` (the same subscribers, relayed to a room process that
holds a ``wsrelay.Group`` of them, made to send by the API), and
``wsrelay-w2`` (the channel publish over ``WSRELAY_WORKERS=2``), at max
rate and then, with the channel, at one steady rate (half the channel's
max). ``--api``: one client's publishes per second over keep-alive to a
channel with one subscriber, and the server CPU per call.

The workers part then compares wsrelay-w2 with wsrelay at the same work,
``alone r/s × 20``: 20 publications at a rate at which the single process
writes each publication alone to each socket (half its max publishes/s ×
its writes/delivery at max, within 0.5-4/s), measured whole: server CPU
(``/proc/<pid>/task/*/schedstat``, ns, every process: supervisor, workers,
nats-server), write system calls and deliveries from before the first
publication until the last has reached every subscriber. A row below 0.9
writes/delivery is flagged *coalescing: not comparable*; the bench ends
the part with a line: CPU per delivery of wsrelay-w2 / wsrelay there, with
both rows' writes/delivery (also in results.md, ``## workers``), and the
workers' target is judged on it.

Before each window the publisher probes until every subscriber is in the
room, then holds until the last probe has reached them all (``PublishRunner.
wait_quiet``); bench/publisher.py says how.

Server CPU is summed over every process of the server (its process tree:
wsrelay's workers and broker, uvicorn) and its redis-server; under workers
it is shown by process (supervisor, each worker, broker), with each
worker's open sockets before the window (how the kernel split the
subscribers). *writes/delivery* is the server tree's write system calls in
the window per delivery: 1 when each publication goes out to each socket on
its own, less when several go out in one writev (at ``max``, or a server
that fell behind a steady publisher), which costs less per delivery.
``max`` and ``steady`` count what falls in a window of time (``--warmup``,
then ``--duration``), which cuts fan-outs at its edges; ``alone`` counts
whole publications.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import picows

from . import procfs
from .cluster import GONE, SERVING, role
from .common import log, ms, per, split, status_rate, stop_child, sum_errors
from .loadgen import LoadGen, LoadGenError, Worker, latencies, now_ns, percentile, source_ips
from .publisher import NOTHING, STAMP, STAMP_LEN, Shared, filler
from .scenarios import Options
from .servers import BENCH, ROOT, RunningServer, ServerError, ServerSpec, free_port

APP = BENCH / "servers" / "wsrelay_app" / "app.yaml"
PARTS = ("peers", "group", "workers", "api")
# Seconds the subscribers may take to connect, beyond 1 s per 50.
CONNECT_S = 60
# The workers part's ``alone`` point: ALONE_COUNT publications, measured
# whole, at ALONE_SHARE of the write rate the single process reached at max
# (its publishes/s × writes/delivery there: the rate at which it would
# spend that share of its time writing each publication alone), within
# ALONE_RATES a second (the publisher is told to stop half an interval
# after the last one's due time: at 4/s it has 125 ms to start);
# ALONE_DEFAULT_RATE without a max row to go by. A row below ALONE_WRITES
# writes/delivery coalesced: it did not do the same work.
ALONE_COUNT = 20
ALONE_SHARE = 0.5
ALONE_RATES = (0.5, 4.0)
ALONE_DEFAULT_RATE = 1.0
ALONE_WRITES = 0.9
# Seconds the subscribers keep counting after the last publication's due time.
ALONE_SLACK_S = 3.0
UNSET = 1 << 62  # beyond any sequence number


# -- the subscribers' side: a load generator worker that reads publications --------------------


class Framing:
    """How a server's WebSocket carries the publications: a text message
    holding the publisher's stamp somewhere (a channel envelope, the
    consumer's text), found by ``bench.publisher.STAMP``. ``control``
    answers what is a message of the protocol, not a publication; True when
    the message was one of those (anything else without a stamp counts as
    ``no_stamp``)."""

    name = "text"

    def control(self, transport: Any, data: bytes) -> bool:
        return False


class SocketIO(Framing):
    """Engine.IO v4 over a raw WebSocket, and Socket.IO packets in it: the
    server opens (``0{...}``), the client connects to namespace ``/``
    (``40``), the server confirms (``40{...}``); pings (``2``) are answered
    (``3``); an event (``42["bench", ...]``) is a publication."""

    name = "socketio"
    OPEN, CONNECT, PING, EVENT = b"0", b"40", b"2", b"42"

    def control(self, transport: Any, data: bytes) -> bool:
        if data.startswith(self.EVENT):
            return False
        if data == self.PING:
            transport.send(picows.WSMsgType.TEXT, b"3")
        elif data.startswith(self.CONNECT):
            return True  # in the namespace: its room follows, which a probe tells
        elif data.startswith(self.OPEN):
            transport.send(picows.WSMsgType.TEXT, self.CONNECT)
        else:
            return False
        return True


FRAMINGS = {f.name: f for f in (Framing(), SocketIO())}


class PublishWorker(Worker):
    """A load generator worker with the publish scenario's operation."""

    async def op_publish(self) -> dict[str, Any]:
        """``conns`` subscribers; ``synced`` once each has received a probe;
        then count the publications of the window; after it, wait
        (``drain`` s at most) for the last one published."""
        run = Subscribers(self)
        subs = await self.connect_many(run.n_subs, self.p["path"], run.subscriber_class(),
                                       self.p["connect_concurrency"])
        run.connected(len(subs))
        go = await self.command("go")
        self.set_window(go)
        run.armed(go.get("count"))
        await self.until_window_end()
        await run.drain(subs)
        received = sum(c.n for _, c in subs)
        await self.close_all(subs)
        run.shared.close()
        return {"window_msgs": self.stats.window_msgs, "window_bytes": self.stats.window_bytes,
                "lat": self._latencies(), "conns": len(subs), "received": received}


class Subscribers:
    """One worker's subscribers. Each counts the publications it receives,
    in order; when every subscriber of the worker has one, the worker's
    slot of ``Shared`` says so, where the publisher reads how far the
    slowest worker got. Told how many publications a run has (``count``),
    the worker says ``delivered`` when the last one has reached every one
    of its subscribers: the instant a run of whole publications ends."""

    def __init__(self, worker: Worker) -> None:
        p = worker.p
        self.worker = worker
        self.framing = FRAMINGS[p["framing"]]
        self.tail = filler(p["size"]).encode()
        self.shared = Shared(p["shared"], p["workers"])
        self.slot = 1 + worker.index
        self.n_subs = p["conns"]
        self.done = NOTHING
        self.synced = 0
        self.last = UNSET  # the run's last publication once armed with a count

    def armed(self, count: Optional[int]) -> None:
        """The run started: counting from now; with ``count``, ``delivered``
        once every subscriber has publication ``count - 1``."""
        self.worker.emit("phase", phase="go")
        if count:
            self.last = count - 1
            if self.n_subs == 0:
                self.delivered()

    def delivered(self) -> None:
        self.last = UNSET
        self.worker.emit("phase", phase="delivered")

    def connected(self, n: int) -> None:
        self.n_subs = n
        self.worker.emit("phase", phase="connected", n=n)
        if n == 0:
            self.shared.slots[self.slot] = 1 << 62
            self.worker.emit("phase", phase="synced")

    def subscriber_class(self) -> Any:
        run = self
        worker = self.worker
        stats = worker.stats
        counters = stats.counters
        framing = self.framing
        control = framing.control
        tail = self.tail
        slots = self.shared.slots
        slot = self.slot
        TEXT = picows.WSMsgType.TEXT
        stamp = STAMP.encode()
        pending: dict[int, int] = {}  # seq: subscribers of this worker that have it

        class Subscriber(picows.WSListener):
            __slots__ = ("expect_seq", "synced", "n", "deflate")

            def __init__(self) -> None:
                self.expect_seq = 0
                self.synced = False
                self.n = 0
                self.deflate = None

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                now = now_ns()
                if frame.msg_type is not TEXT:
                    worker.other_frame(transport, frame.msg_type)
                    return
                data = frame.get_payload_as_bytes()
                if control(transport, data):
                    return
                i = data.find(stamp)
                if i < 0:
                    stats.error("no_stamp")
                    return
                ts, seq = int(data[i + 1:i + 21]), int(data[i + 21:i + STAMP_LEN])
                if seq < 0:  # a probe: in the room
                    if not self.synced:
                        self.synced = True
                        run.synced += 1
                        counters["synced"] += 1
                        if run.synced == run.n_subs:
                            worker.emit("phase", phase="synced")
                else:
                    if seq != self.expect_seq:
                        stats.error("missed" if seq > self.expect_seq else "out_of_order",
                                    max(1, seq - self.expect_seq))
                    self.expect_seq = seq + 1
                    if (self.n & 63) == 0:
                        counters["checked"] += 1
                        if data[i + STAMP_LEN:i + STAMP_LEN + len(tail)] != tail:
                            stats.error("wrong_content")
                    self.n += 1
                    counters["msgs"] += 1
                    worker.count_in_window(now, ts, len(data))
                c = pending.get(seq, 0) + 1
                if c >= run.n_subs:
                    pending.pop(seq, None)
                    if seq > run.done:
                        run.done = seq
                        slots[slot] = seq
                        if seq >= run.last:
                            run.delivered()
                else:
                    pending[seq] = c

            def on_ws_disconnected(self, transport: Any) -> None:
                if not worker.stopping:
                    stats.error("disconnected")

        return Subscriber

    async def drain(self, subs: list[Any]) -> None:
        """Wait until every subscriber has the last publication, ``drain``
        seconds at most; what never came counts as ``not_delivered``."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.05)
        last = self.shared.slots[0]
        deadline = loop.time() + float(self.worker.p.get("drain", 10.0))
        while loop.time() < deadline and self.done < last and self.n_subs:
            await asyncio.sleep(0.02)
        if self.n_subs and last >= 0:
            missing = sum(max(0, last + 1 - c.expect_seq) for _, c in subs)
            if missing:
                self.worker.stats.error("not_delivered", missing)


# -- the servers ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peer:
    """A server of the publish scenario and its publisher: the server's
    command line (host, port, redis URL), the subscribers' path and framing,
    the publisher script's module and way (``--via``)."""

    name: str
    description: str
    argv: Callable[[str, int, str], list[str]]
    path: str
    publisher: str
    via: Optional[str] = None
    framing: str = "text"
    redis: bool = False
    workers: int = 0


def _uvicorn(app: str) -> Callable[[str, int, str], list[str]]:
    """uvicorn as its docs run it, on uvloop, its WebSocket protocol its
    default (websockets' sans-I/O one), no access log (wsrelay writes none)."""
    return lambda host, port, _: [sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port),
                                  "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]


def _wsrelay(host: str, port: int, _: str) -> list[str]:
    return [sys.executable, "-m", "wsrelay", "serve", str(APP), "--addr", f"{host}:{port}"]


def _wsrelay_peer(name: str, what: str, via: str, workers: int = 0) -> Peer:
    return Peer(name, f"`wsrelay serve {APP.relative_to(ROOT)}`{what}", _wsrelay, "/ws/channel_sub",
                "bench.servers.wsrelay_publish", via=via, workers=workers)


PEERS: dict[str, Peer] = {p.name: p for p in (
    _wsrelay_peer("wsrelay", ": channel `room:bench` granted at the upgrade; `Client.publish` over keep-alive",
                  "channel"),
    Peer("django-channels",
         "Django Channels: an AsyncWebsocketConsumer joining group `bench`, channels_redis "
         "(RedisChannelLayer, its defaults) on redis-server, uvicorn; publisher "
         "`async_to_sync(channel_layer.group_send)`",
         _uvicorn("bench.servers.django_channels.asgi:application"), "/ws/bench",
         "bench.servers.django_channels.publish", redis=True),
    Peer("python-socketio",
         "python-socketio AsyncServer with AsyncRedisManager on redis-server, ASGI under uvicorn; "
         "publisher a write-only AsyncRedisManager emitting to room `bench`",
         _uvicorn("bench.servers.socketio_server:app"), "/socket.io/?EIO=4&transport=websocket",
         "bench.servers.socketio_publish", framing="socketio", redis=True),
    _wsrelay_peer("wsrelay-group", ": the same subscribers, in the room process's `wsrelay.Group`; "
                                   "`Client.send` to the room, which does `group.send`", "group"),
    _wsrelay_peer("wsrelay-w2", " with WSRELAY_WORKERS=2: channel `room:bench`, `Client.publish`", "channel",
                  workers=2),
)}
INCUMBENTS = ("django-channels", "python-socketio")
# The servers of the side-by-side part (--servers); wsrelay-group and
# wsrelay-w2 run in their own parts.
SIDE_BY_SIDE = ("wsrelay", *INCUMBENTS)


class Redis:
    """A redis-server of our own: loopback, a free port, no persistence."""

    def __init__(self, log_path: pathlib.Path) -> None:
        exe = _redis_server()
        if exe is None:
            raise ServerError("redis-server is not installed (make redis)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--protected-mode", "yes", "--maxclients", "10000"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"redis-server did not start; see {log_path}")
            time.sleep(0.05)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_child(self.proc)
        self.log.close()


def _redis_server() -> Optional[str]:
    """Debian puts it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("redis-server", path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin",
                                                              "/usr/local/sbin")))


class PeerServer(RunningServer):
    """A server of ``PEERS`` and its redis-server: ready when it accepts
    connections (and, under workers, once the supervisor says every worker
    serves); CPU summed over its process tree and the redis-server, by part."""

    def __init__(self, peer: Peer, log_path: pathlib.Path, env: dict[str, str],
                 redis: Optional[Redis]) -> None:
        self.peer = peer
        self.redis = redis
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        url = redis.url if redis is not None else ""
        spec = ServerSpec(peer.name, peer.description, lambda host, port: peer.argv(host, port, url), {})
        super().__init__(spec, log_path, start_timeout=60.0, env={**env, "BENCH_REDIS_URL": url} if url else env)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        super().wait_ready(timeout)
        while self.peer.workers:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                if SERVING.encode() in f.read():
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"{self.peer.name}: its workers were not all serving; see {self.log_path}")
            time.sleep(0.05)

    def _tree(self, read: Callable[[int], float]) -> float:
        """``read`` summed over the server's process tree."""
        total = 0.0
        for pid in procfs.descendants(self.pid):
            try:
                total += read(pid)
            except GONE:
                continue  # a process of the tree that ended between the walk and the read
        return total

    def cpu_parts(self, read: Callable[[int], float] = procfs.cpu_seconds) -> dict[str, float]:
        """CPU seconds so far: the server's process tree (under workers, by
        process: the supervisor, each worker, the broker), the redis-server;
        ``read`` says how (user+sys in clock ticks, or ``_schedstat_s``: ns)."""
        if self.peer.workers:
            parts = self._by_role(read)
        else:
            parts = {"server": self._tree(read)}
        if self.redis is not None:
            parts["redis"] = read(self.redis.pid)
        return parts

    def _by_role(self, read: Callable[[int], float]) -> dict[str, float]:
        """``read`` of each process of the tree, by role (bench.cluster.role)."""
        out: dict[str, float] = {}
        root = self.pid
        for pid in procfs.descendants(root):
            name = "supervisor" if pid == root else role(pid, root)
            try:
                out[name] = out.get(name, 0.0) + read(pid)
            except GONE:
                continue  # a process of the tree that ended between the walk and the read
        rank = {"supervisor": 0, "broker": 2}
        return dict(sorted(out.items(), key=lambda kv: (rank.get(kv[0], 1 if kv[0].startswith("worker") else 3),
                                                        kv[0])))

    def sockets_by_worker(self) -> dict[str, int]:
        """Open sockets of each worker (its subscribers, and a few of its
        own): how the kernel spread the connections; empty without workers."""
        if not self.peer.workers:
            return {}
        return {k: int(v) for k, v in self._by_role(procfs.open_sockets).items() if k.startswith("worker")}

    def write_syscalls(self) -> int:
        """Write system calls of the server's process tree so far (not the
        redis-server's)."""
        return int(self._tree(procfs.write_syscalls))

    def cpu_seconds(self) -> float:
        return sum(self.cpu_parts().values())

    def rss(self) -> int:
        redis = procfs.rss_bytes(self.redis.pid) if self.redis is not None else 0
        return int(self._tree(procfs.rss_bytes)) + redis

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        try:
            return super().stop(timeout)
        finally:
            if self.redis is not None:
                self.redis.stop()


class Publisher:
    """A publisher script in a process of its own (bench.publisher's driver)."""

    def __init__(self, peer: Peer, target: str, shared: pathlib.Path, workers: int, size: int,
                 log_path: pathlib.Path, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", peer.publisher, "--target", target, "--shared", str(shared),
                "--workers", str(workers), "--size", str(size)]
        if peer.via:
            argv += ["--via", peer.via]
        self.log = open(log_path, "ab")
        self.log.write(f"$ {' '.join(argv)}\n".encode())
        self.log.flush()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
        self.proc = subprocess.Popen(argv, cwd=str(ROOT), env=full_env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log)

    def _tell(self, order: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(order) + "\n").encode())
        self.proc.stdin.flush()

    def hold(self) -> None:
        """No more probes: every subscriber is in the room."""
        self._tell({"cmd": "hold"})

    def start(self, t_end: int, rate: Optional[float], window: Optional[int]) -> None:
        self._tell({"cmd": "go", "t_end": t_end, "rate": rate, "window": window})

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.proc.pid)

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def check(self) -> None:
        """Raise if the publisher ended before its run."""
        if self.ended():
            raise LoadGenError(f"the publisher ended before its run (exit {self.proc.returncode}); "
                               f"see {self.log.name}")

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LoadGenError(f"the publisher did not end within {timeout:.0f}s after its window") from None
        lines = out.decode(errors="replace").strip().splitlines()
        if self.proc.returncode or not lines:
            raise LoadGenError(f"the publisher failed (exit {self.proc.returncode}); see {self.log.name}")
        return json.loads(lines[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


# -- the runner ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    """What one measurement is: subscribers, how the publisher paces."""

    subscribers: int
    mode: str  # max, steady, alone (count publications measured whole), api
    rate: Optional[float] = None
    window: Optional[int] = None
    size: int = 64
    count: Optional[int] = None

    def fields(self) -> dict[str, Any]:
        return {"subscribers": self.subscribers, "mode": self.mode, "rate": self.rate, "window": self.window,
                "size": self.size, **({"count": self.count} if self.count else {})}


def _schedstat_s(pid: int) -> float:
    return procfs.cpu_ns(pid) / 1e9


@dataclasses.dataclass
class Sample:
    """The counters a measurement is the difference of, at one instant:
    the server's CPU seconds by part (``schedstat`` when ``ticks`` is
    asked for, which is then user+sys in clock ticks beside it), its write
    system calls, the load generator's CPU and the publisher's (when given:
    a publisher that may have ended by the second sample says its own)."""

    t: float
    cpu: dict[str, float]
    writes: int
    client: float
    publisher: Optional[float]
    ticks: Optional[dict[str, float]] = None

    @classmethod
    def of(cls, server: PeerServer, lg: LoadGen, publisher: Optional[Publisher], ticks: bool = False) -> Sample:
        t = time.monotonic()
        cpu = server.cpu_parts(_schedstat_s) if ticks else server.cpu_parts()
        return cls(t, cpu, server.write_syscalls(), lg.cpu_seconds(),
                   None if publisher is None else publisher.cpu_seconds(), server.cpu_parts() if ticks else None)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


class PublishRunner:
    """Each point against each server of ``PEERS`` asked for, a fresh
    server (and redis-server) per measurement."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.ips = source_ips(opts.source_ips)
        self.logs = opts.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.api_key = secrets.token_hex(16)
        # No check before the measurements, as bench.scenarios runs: the
        # subscribers check every publication's order and a sample's content.
        self.checks: dict[str, list[str]] = {}

    def procs_for(self, subscribers: int) -> int:
        """Load generator processes: none holds more sockets than its
        open-file limit allows (``--procs`` at least)."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200
        return max(self.opts.procs, -(-subscribers // max(1, limit)))

    def measure(self, peer: Peer, point: Point) -> dict[str, Any]:
        row: dict[str, Any] = {"scenario": "api" if point.mode == "api" else "publish", "server": peer.name,
                               **point.fields()}
        log(f"== publish {peer.name} " + " ".join(f"{k}={v}" for k, v in point.fields().items() if v is not None))
        try:
            row.update(self._measure(peer, point))
        except (LoadGenError, ServerError, OSError) as exc:
            row["failed"] = str(exc).splitlines()[0]
            log(f"FAILED: {row['failed']}")
        log("   " + summary(row))
        return row

    def _measure(self, peer: Peer, point: Point) -> dict[str, Any]:
        opts = self.opts
        subs = point.subscribers
        procs = min(self.procs_for(subs), max(1, subs))
        tag = f"{peer.name}-{point.mode}-n{subs}"
        env = {"WSRELAY_API_KEY": self.api_key} if peer.via else {}
        if peer.workers:
            env["WSRELAY_WORKERS"] = str(peer.workers)
        shared_path = _shared_path(tag)
        shared = Shared(str(shared_path), procs, create=True)
        redis = Redis(self.logs / f"redis-{tag}.log") if peer.redis else None
        publisher: Optional[Publisher] = None
        try:
            with PeerServer(peer, self.logs / f"{tag}.log", env, redis) as server:
                parts = split(subs, procs)
                params = {"op": "publish", "url": server.url, "path": peer.path, "framing": peer.framing,
                          "shared": str(shared_path), "workers": procs, "size": point.size,
                          "source_ips": self.ips, "timeout": opts.timeout,
                          "connect_concurrency": opts.connect_concurrency, "drain": drain_s(subs)}
                with LoadGen(procs, params, f"publish {peer.name} n={subs} {point.mode}",
                             status_rate("msgs", "deliveries"), lambda i, _: {"conns": parts[i]},
                             worker=PublishWorker) as lg:
                    lg.wait_phase("connected", CONNECT_S + subs / 50)
                    target = redis.url if redis is not None else f"http://{server.host}:{server.port}"
                    publisher = Publisher(peer, target, shared_path, procs, point.size,
                                          self.logs / f"publisher-{tag}.log", env)
                    self.wait_synced(lg, publisher, 60 + subs / 200)
                    publisher.hold()
                    self.wait_quiet(lg, publisher, shared, 60 + subs / 200)
                    sockets = server.sockets_by_worker()  # every subscriber connected, before the window
                    if point.count:
                        before, after, whole, pub, results = self._whole(lg, server, publisher, shared, point)
                    else:
                        before, after, pub, results = self._timed(lg, server, publisher, point)
                        whole = None
                    rss = server.rss()
        finally:
            if publisher is not None:
                publisher.stop()
            shared.close()
            shared_path.unlink(missing_ok=True)
        elapsed = after.t - before.t
        cpu = _delta(before.cpu, after.cpu)
        server_cpu = sum(cpu.values())
        writes = after.writes - before.writes
        published = pub["published"]
        lat = latencies(results)
        errors = sum_errors(results)
        for k, v in pub.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
        extra: dict[str, Any] = {}
        if point.count:
            # Every publication of the run, each to every subscriber it reached.
            deliveries = sum(r["received"] for r in results)
            ticks = sum(_delta(before.ticks or {}, after.ticks or {}).values())
            publishes_per_s = published / (pub["elapsed_s"] + 0.5 / point.rate) if point.rate else None
            calls = float(published)
            extra = {"cpu_source": "schedstat", "whole": whole,
                     "cpu_us_per_delivery_ticks": per(ticks, deliveries, 1e6)}
        else:
            deliveries = sum(r["window_msgs"] for r in results)
            publishes_per_s = published / pub["elapsed_s"] if pub["elapsed_s"] else None
            calls = published * elapsed / pub["elapsed_s"] if pub["elapsed_s"] else 0.0
        if not deliveries:
            errors["none_in_window"] = 1
        writes_per_delivery = per(writes, deliveries, 1.0)
        if point.count:
            extra["comparable"] = writes_per_delivery is not None and writes_per_delivery >= ALONE_WRITES
        return {
            "connected": sum(r["conns"] for r in results),
            "deliveries_per_s": deliveries / elapsed,
            "publishes_per_s": publishes_per_s,
            "p50_ms": ms(percentile(lat, 50)),
            "p99_ms": ms(percentile(lat, 99)),
            "cpu_us_per_delivery": per(server_cpu, deliveries, 1e6),
            "writes_per_delivery": writes_per_delivery,
            "cpu_us_per_write": per(server_cpu, writes, 1e6),
            "cpu_us_per_call": per(server_cpu, calls, 1e6) if calls else None,
            "server_cpu_pct": 100.0 * server_cpu / elapsed,
            "cpu_pct_by_part": {k: 100.0 * v / elapsed for k, v in cpu.items()},
            "client_cpu_pct": 100.0 * (after.client - before.client) / elapsed,
            "publisher_cpu_pct": 100.0 * (pub["cpu_s"] if before.publisher is None or after.publisher is None
                                          else after.publisher - before.publisher) / elapsed,
            "publisher_behind_ms": pub.get("behind_ms"),
            "publisher_held_s": pub.get("held_s"),
            "deliveries": deliveries,
            "published": published,
            "server_rss_mib": rss / 2**20,
            **({"sockets_by_worker": sockets} if sockets else {}),
            **extra,
            "window_s": elapsed,
            "errors": errors,
            "procs": procs,
        }


    def _timed(self, lg: LoadGen, server: PeerServer, publisher: Publisher,
               point: Point) -> tuple[Sample, Sample, dict[str, Any], list[dict[str, Any]]]:
        """``max`` and ``steady``: a window of time (``--duration`` after
        ``--warmup``) while the publisher publishes from the start of the
        warm-up to the end of the window; what arrived in the window counts."""
        opts = self.opts
        t_measure = now_ns() + int(opts.warmup * 1e9)
        t_end = t_measure + int(opts.duration * 1e9)
        lg.send_all("go", t_measure=t_measure, t_end=t_end)
        publisher.start(t_end, point.rate, point.window)
        lg.wait_until(t_measure)
        before = Sample.of(server, lg, publisher)
        lg.wait_until(t_end)
        after = Sample.of(server, lg, publisher)
        pub = publisher.result(30)
        results = lg.wait_results(opts.timeout + drain_s(point.subscribers) + 60)
        return before, after, pub, results

    def _whole(self, lg: LoadGen, server: PeerServer, publisher: Publisher, shared: Shared,
               point: Point) -> tuple[Sample, Sample, bool, dict[str, Any], list[dict[str, Any]]]:
        """``alone``: ``point.count`` publications at ``point.rate``, measured
        whole: from before the first one (nothing else in flight: the last
        probe has reached everyone) until the last one has reached every
        subscriber (each load generator worker says ``delivered``), the
        server's CPU from ``schedstat``. The publisher publishes until an
        instant half an interval after the last one's due time, so that it
        publishes ``count`` unless the server holds it back (its ``window``).
        Whether the run ended that way (True) or at the deadline, or once a
        held-back publisher's last publication was everywhere (False)."""
        assert point.count and point.rate
        subs = point.subscribers
        t_go = now_ns()
        # The subscribers count until the publisher's end and ALONE_SLACK_S
        # more (the last publication's latency), then wait for what is missing.
        span = point.count / point.rate
        t_end = t_go + int((span + ALONE_SLACK_S) * 1e9)
        lg.send_all("go", t_measure=t_go, t_end=t_end, count=point.count)
        lg.wait_phase("go", 30)  # every worker counts from here, before the first publication
        before = Sample.of(server, lg, None, ticks=True)
        publisher.start(now_ns() + int((point.count - 0.5) / point.rate * 1e9), point.rate, point.window)
        deadline = t_end + int(drain_s(subs) * 1e9)

        def everywhere() -> bool:
            return all(("delivered", i) in lg.phases for i in range(lg.procs))

        lg.wait_until(deadline, lambda: everywhere() or (publisher.ended() and shared.quiet()))
        # The publisher ends half an interval after its last publication's
        # due time, maybe before that one is everywhere: its CPU is its own count.
        after = Sample.of(server, lg, None, ticks=True)
        whole = everywhere()
        if not whole:
            log(f"   {'a held-back publisher' if publisher.ended() else 'the deadline'} ended the run, "
                f"not the {point.count}th publication's last delivery")
        pub = publisher.result(30 + span)
        results = lg.wait_results(self.opts.timeout + drain_s(subs) + span + 60)
        return before, after, whole, pub, results

    @staticmethod
    def wait_synced(lg: LoadGen, publisher: Publisher, timeout: float) -> None:
        """Until every worker's subscribers have had a probe; a publisher
        that ended meanwhile fails the row at once."""
        deadline = now_ns() + int(timeout * 1e9)
        lg.wait_until(deadline, lambda: publisher.ended() or all(("synced", i) in lg.phases for i in range(lg.procs)))
        publisher.check()
        lg.wait_phase("synced", 0)

    @staticmethod
    def wait_quiet(lg: LoadGen, publisher: Publisher, shared: Shared, timeout: float) -> None:
        """Until every subscriber has the last probe (the publisher holds):
        nothing of the sync is still queued in the server when the run starts."""
        deadline = now_ns() + int(timeout * 1e9)
        while not shared.quiet():
            publisher.check()
            if now_ns() > deadline:
                raise LoadGenError(f"the last probe had not reached every subscriber after {timeout:.0f}s")
            lg.wait_until(now_ns() + 50_000_000)


def drain_s(subscribers: int) -> float:
    """Seconds the subscribers wait after the window for the last
    publication: a window of them at a slow server's few thousand
    deliveries a second (Django Channels: 4 × 15k in about 20 s)."""
    return 10.0 + subscribers / 500


def _shared_path(tag: str) -> pathlib.Path:
    base = pathlib.Path("/dev/shm") if pathlib.Path("/dev/shm").is_dir() else pathlib.Path("/tmp")
    return base / f"wsrelay-bench-publish-{os.getpid()}-{tag}"


def steady_rate(rows: list[dict[str, Any]], subscribers: int, names: tuple[str, ...]) -> Optional[float]:
    """Half the best ``max`` publish rate of the servers ``names`` at
    ``subscribers`` in this run: a rate the best of them sustains."""
    rates = [r["publishes_per_s"] for r in rows if r["server"] in names and r.get("mode") == "max"
             and r["subscribers"] == subscribers and r.get("publishes_per_s") and not r.get("failed")]
    return max(1.0, round(max(rates) / 2, 1)) if rates else None


def alone_rate(rows: list[dict[str, Any]], subscribers: int) -> float:
    """The ``alone`` point's rate: ALONE_SHARE of the single process's
    publishes/s × writes/delivery at ``max`` at ``subscribers`` in this run
    (the writes a second it made there, in publications written alone),
    within ALONE_RATES; ALONE_DEFAULT_RATE without such a row."""
    r = next((r for r in rows if r["server"] == "wsrelay" and r.get("mode") == "max" and not r.get("failed")
              and r["subscribers"] == subscribers and r.get("publishes_per_s") and r.get("writes_per_delivery")),
             None)
    if r is None:
        return ALONE_DEFAULT_RATE
    low, high = ALONE_RATES
    return min(high, max(low, round(ALONE_SHARE * r["publishes_per_s"] * min(1.0, r["writes_per_delivery"]), 1)))


def comparable(row: dict[str, Any]) -> bool:
    """An ``alone`` row wrote each publication alone (ALONE_WRITES writes per
    delivery at least), whole (the run ended on its last delivery)."""
    return bool(row.get("comparable")) and row.get("whole") is not False


def workers_summary(rows: list[dict[str, Any]]) -> Optional[str]:
    """The workers part in a line: CPU per delivery of wsrelay-w2 over
    wsrelay's at the ``alone`` point, both rows' writes/delivery, whether
    they compare."""
    ok = [r for r in rows if r.get("mode") == "alone" and not r.get("failed") and r.get("cpu_us_per_delivery")]
    for w2 in ok:
        if w2["server"] != "wsrelay-w2":
            continue
        one = next((r for r in ok if r["server"] == "wsrelay" and r["subscribers"] == w2["subscribers"]
                    and r.get("rate") == w2.get("rate") and r.get("count") == w2.get("count")), None)
        if one is None:
            continue
        ratio = w2["cpu_us_per_delivery"] / one["cpu_us_per_delivery"]
        bad = [r["server"] for r in (one, w2) if not comparable(r)]
        return (f"workers at {w2['subscribers']:,} subscribers, {w2['rate']:g}/s × {w2['count']} publications "
                f"measured whole: CPU per delivery wsrelay-w2 / wsrelay = {w2['cpu_us_per_delivery']:.2f} / "
                f"{one['cpu_us_per_delivery']:.2f} µs = {ratio:.2f}× at {w2['writes_per_delivery']:.2f} and "
                f"{one['writes_per_delivery']:.2f} writes/delivery; "
                + (f"not comparable: {' and '.join(bad)} coalescing or cut" if bad else "comparable"))
    return None


Step = Callable[[], list[dict[str, Any]]]


def steps(runner: PublishRunner, counts: list[int], servers: list[str], parts: tuple[str, ...], window: int,
          rate: Optional[float], size: int, rows: list[dict[str, Any]]) -> list[Step]:
    """The measurements of the whole scenario, in order, one row each;
    ``rows`` is what the run has measured when a step starts (a steady
    rate comes from the max rates before it)."""
    out: list[Step] = []

    def one(peer: str, point: Callable[[], Optional[Point]]) -> None:
        def step() -> list[dict[str, Any]]:
            p = point()
            return [] if p is None else [runner.measure(PEERS[peer], p)]
        out.append(step)

    def steady(n: int, *of: tuple[str, ...]) -> Optional[Point]:
        """The steady point at ``n``: ``--rate``, or from the max rates of
        the first of ``of`` that has one."""
        r = rate or next((x for x in (steady_rate(rows, n, names) for names in of) if x), None)
        if r is None:
            log(f"publish n={n}: no max rate measured, no steady run")
            return None
        # At most 2 s of publications in flight: a server that falls behind
        # holds the publisher back (its publishes/s say so) rather than queue without end.
        return Point(n, "steady", rate=r, window=max(window, int(2 * r)), size=size)

    def at_max(n: int) -> Point:
        return Point(n, "max", window=window, size=size)

    alone_at: dict[int, float] = {}

    def alone(n: int) -> Point:
        """The same rate for both rows: from the max rows measured before either."""
        r = alone_at.setdefault(n, alone_rate(rows, n))
        return Point(n, "alone", rate=r, window=max(window, int(2 * r)), size=size, count=ALONE_COUNT)

    def workers_line() -> list[dict[str, Any]]:
        line = workers_summary(rows)
        log(line or "workers: no pair of alone rows to compare")
        return []

    largest = max(counts)
    if "peers" in parts:
        for n in counts:
            for name in servers:
                one(name, lambda n=n: at_max(n))
            for name in servers:
                one(name, lambda n=n: steady(n, INCUMBENTS, ("wsrelay",)))
    # Group.send and the workers beside the channel: at max rate, then all
    # three at one steady rate (half the channel's max), for CPU per
    # delivery at the same work per second.
    beside = [name for part, name in (("group", "wsrelay-group"), ("workers", "wsrelay-w2")) if part in parts]
    if beside:
        if "peers" not in parts or "wsrelay" not in servers:
            one("wsrelay", lambda: at_max(largest))
        for name in beside:
            one(name, lambda: at_max(largest))
        for name in ("wsrelay", *beside):
            one(name, lambda: steady(largest, ("wsrelay",)))
    # The workers against the one process at the same work: each
    # publication written alone to each socket in both, counted whole.
    if "workers" in parts:
        for name in ("wsrelay", "wsrelay-w2"):
            one(name, lambda: alone(largest))
        out.append(workers_line)
    if "api" in parts:
        one("wsrelay", lambda: Point(1, "api", size=size))
    return out


def summary(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"FAILED: {row['failed']}"
    keys = ("publishes_per_s", "deliveries_per_s", "p50_ms", "p99_ms", "cpu_us_per_delivery", "writes_per_delivery",
            "cpu_us_per_write", "cpu_us_per_call", "server_cpu_pct", "client_cpu_pct", "publisher_cpu_pct")
    parts = [f"{k}={row[k]:,.2f}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}" for k in keys]
    if row.get("mode") == "alone" and not comparable(row):
        parts.append("coalescing: not comparable" if not row.get("comparable") else "cut: not comparable")
    by_part = row.get("cpu_pct_by_part") or {}
    if len(by_part) > 1:
        parts.append("cpu%=" + ",".join(f"{k.replace(' ', '')}:{v:.1f}" for k, v in by_part.items()))
    if row.get("sockets_by_worker"):
        parts.append("sockets=" + ",".join(str(v) for v in row["sockets_by_worker"].values()))
    errors = row.get("errors") or {}
    parts.append("errors=" + (", ".join(f"{k}={v}" for k, v in errors.items()) if errors else "0"))
    return " ".join(parts)
