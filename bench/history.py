"""``python -m bench history [publish] [recovery] [idle] [--quick] [--json PATH]``:
what history costs (docs/guide.md, "History and recovery"; docs/cluster.md,
"History"), and a mass reconnect against Socket.IO's connection state recovery.

- ``publish``: publications into one channel and spread over 1,000 channels,
  with history (``hist:*``, bench/servers/wsrelay_app/app.yaml's namespace
  ``history_channels``: 300 kept) against the same channels without
  (``plain:*``), on one process (history in memory) and with
  ``WSRELAY_WORKERS=2`` (history in the private broker's JetStream, whose
  nats-server's CPU counts with the server's). The publisher is a process
  inside the server (bench_relay.history_publisher: ``channels.publish`` in
  a loop, spawned by a connection to ``/ws/history_pub``), so that what is
  measured is the node's publishing, not an HTTP client's. One subscriber
  per channel, in this process, checks that every publication arrives once,
  in order (consecutive offsets on a channel with history). The rate is
  publications over the time until the last one has reached its subscriber;
  server CPU per publication over the same time.
- ``recovery``: ``--clients`` (1,000) clients in one channel drop without a
  close handshake, ``--missed`` (300) publications are made, and all
  reconnect at once with their position; the time until every one has its
  ``subscribed`` with ``recovered: true`` and the missed publications, and
  the server's CPU meanwhile, against Socket.IO 4.8 on Node
  (bench/node/socketio_recovery.js: ``connectionStateRecovery``, the
  in-memory adapter) doing the same, in one run. The Socket.IO clients speak
  Engine.IO v4 over a raw WebSocket as its client does: they reconnect with
  ``40{"pid", "offset"}`` and are recovered when the server answers with the
  same ``pid``.
- ``idle``: RSS per idle connection granted a channel with history against
  one granted a channel without (a fresh one-process server each).

Goals: history on one process <= 1.3x the CPU per publication of a channel
without; JetStream >= 20,000 publications/s into one channel; recovery at
least 2x faster than Socket.IO's; a connection in a history channel within
0.5 KiB of one in a channel without. The machine is shared: develop with
``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from typing import Any, Optional

import orjson
import picows
import uvloop

from wsrelay.client import AsyncClient

from . import procfs
from .cluster import ClusterServer
from .common import chosen, log, stop_child
from .servers import BENCH, NODE_DIR, ROOT, ServerError, ServerSpec, free_port

SCENARIOS = ("publish", "recovery", "idle")
API_KEY = "bench-history"
APP = BENCH / "servers" / "wsrelay_app" / "app.yaml"
SOCKETIO = NODE_DIR / "socketio_recovery.js"
TEXT = picows.WSMsgType.TEXT
# Characters of filler in each publication's data, after "<run> <seq> ".
SIZE = 64
# Seconds a phase may take before the run counts it as failed.
PHASE_S = 120.0


# -- the clients ---------------------------------------------------------------------------------


class Tally:
    """What a set of clients saw: errors by kind, how many have subscribed,
    how many are done (have every publication they were told to expect)."""

    def __init__(self) -> None:
        self.errors: collections.Counter[str] = collections.Counter()
        self.subscribed = 0
        self.done = 0
        self.target = 0
        self.delivered = 0  # publications of the runs checked
        self.t_last = 0.0
        self.times: list[float] = []  # when each was done
        # Set once every client is done, and by nothing else: all_done's
        # wait ends with the last one.
        self.complete = asyncio.Event()

    def expect(self, target: int) -> None:
        self.done, self.target, self.times = 0, target, []
        self.complete.clear()

    def finished(self) -> None:
        self.done += 1
        self.t_last = time.perf_counter()
        self.times.append(self.t_last)
        if self.done >= self.target:
            self.complete.set()

    async def all_done(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.complete.wait(), timeout)
        except asyncio.TimeoutError:
            self.errors["not_delivered"] += self.target - self.done


class Subscriber(picows.WSListener):
    """A client of one channel, wsrelay's envelope or Socket.IO's events:
    keeps its position, checks the run it is told of (``expect``): every
    publication once, in order, then tells the tally it is done."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.run = ""
        self.want = 0
        self.got = 0
        self.last_seq = -1
        self.seen = 0  # publications of any run
        self.transport: Any = None
        self.dropping = False

    def expect(self, run: str, want: int) -> None:
        self.run, self.want, self.got, self.last_seq = run, want, 0, -1
        if want == 0:
            self.tally.finished()

    def publication(self, text: str) -> None:
        self.seen += 1
        run, seq, _ = text.split(" ", 2)
        if run != self.run:
            return
        s = int(seq)
        if s <= self.last_seq:
            self.tally.errors["out_of_order"] += 1
        self.last_seq = s
        self.got += 1
        self.tally.delivered += 1
        if self.got == self.want:
            self.tally.finished()
        elif self.got > self.want:
            self.tally.errors["extra"] += 1

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is picows.WSMsgType.CLOSE:
            transport.disconnect()
        elif frame.msg_type is TEXT:
            self.message(transport, frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: Any) -> None:
        if not self.dropping:
            self.tally.errors["disconnected"] += 1

    def message(self, transport: Any, data: bytes) -> None:
        raise NotImplementedError


class RelaySubscriber(Subscriber):
    """wsrelay's envelopes: ``subscribed`` (its position, or recovered), then
    publications whose offsets must follow each other without a gap."""

    def __init__(self, tally: Tally, channel: str) -> None:
        super().__init__(tally)
        self.channel = channel
        self.epoch: Optional[str] = None
        self.offset: Optional[int] = None
        self.recovering = False

    def message(self, transport: Any, data: bytes) -> None:
        ev = orjson.loads(data)
        kind = ev["event"]
        if kind == "publication":
            offset = ev.get("offset")
            if offset is not None:
                if self.offset is not None and offset != self.offset + 1:
                    self.tally.errors["gap" if offset > self.offset + 1 else "duplicate"] += 1
                self.offset = offset
            self.publication(ev["data"])
        elif kind == "subscribed":
            self.tally.subscribed += 1
            if self.recovering and not ev["recovered"]:
                self.tally.errors["not_recovered"] += 1
                self.tally.finished()
            if not ev["recovered"]:
                self.epoch, self.offset = ev["epoch"], ev["offset"]

    def path(self, base: str) -> str:
        """The upgrade's path: with ``recover`` once it has a position."""
        query = {"ch": self.channel}
        if self.recovering:
            query["recover"] = json.dumps({self.channel: {"epoch": self.epoch, "offset": self.offset}})
        return f"{base}?{urllib.parse.urlencode(query)}"


class SocketIOSubscriber(Subscriber):
    """Engine.IO v4 and Socket.IO packets as socket.io-client sends them:
    open (``0``), connect to ``/`` (``40``, with ``{"pid", "offset"}`` once
    it has a session), pings answered; an event ``42["bench", text, offset]``
    carries the offset the server appends under connection state recovery."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self.pid: Optional[str] = None
        self.offset: Optional[str] = None
        self.recovering = False

    def message(self, transport: Any, data: bytes) -> None:
        if data.startswith(b"42"):
            ev = orjson.loads(data[2:])
            self.offset = ev[-1]
            self.publication(ev[1])
        elif data == b"2":
            transport.send(TEXT, b"3")
        elif data.startswith(b"40"):
            info = orjson.loads(data[2:])
            self.tally.subscribed += 1
            if self.recovering and info.get("pid") != self.pid:
                self.tally.errors["not_recovered"] += 1
                self.tally.finished()
            self.pid = info.get("pid")
        elif data.startswith(b"0"):
            auth = orjson.dumps({"pid": self.pid, "offset": self.offset}) if self.recovering else b""
            transport.send(TEXT, b"40" + auth)

    def path(self, base: str) -> str:
        return base


async def connect_all(url: str, base: str, clients: list[Any], concurrency: int) -> None:
    """Connect every client to its path under ``base``, ``concurrency``
    handshakes at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(client: Any, path: str) -> None:
        async with sem:
            client.dropping = False
            # uvloop's transports, as bench/loadgen.py's clients.
            client.transport, _ = await picows.ws_connect(lambda: client, url + path, websocket_handshake_timeout=60,
                                                          max_frame_size=16 << 20, use_aiofastnet=False)

    await asyncio.gather(*(one(c, c.path(base)) for c in clients))


def drop(clients: list[Any]) -> None:
    """Close every client's socket without a close handshake: a network
    that drops."""
    for c in clients:
        c.dropping = True
        c.transport.disconnect(False)


async def until(condition: Any, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise ServerError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(poll)


# -- the servers ---------------------------------------------------------------------------------


def _spec(workers: int) -> ServerSpec:
    name = "wsrelay" if not workers else f"wsrelay-w{workers}"
    return ServerSpec(name, f"`wsrelay serve {APP.relative_to(ROOT)}`" + (f", WSRELAY_WORKERS={workers}" if workers
                                                                          else ""),
                      lambda host, port: [sys.executable, "-m", "wsrelay", "serve", str(APP), "--addr",
                                          f"{host}:{port}"], {}, health="/health", env={"WSRELAY_API_KEY": API_KEY})


def start_wsrelay(workers: int, logs: pathlib.Path) -> ClusterServer:
    return ClusterServer(_spec(workers), logs / f"wsrelay-w{workers}.log", workers)


def cpu_by_role(server: ClusterServer) -> dict[str, float]:
    """CPU seconds so far, by part: the broker apart, every other process
    of the tree as ``server``; from the scheduler's ns (``schedstat``), not
    clock ticks: a row of 200,000 publications at 1 µs is 20 ticks, which
    rounding moves by 5 %."""
    out: dict[str, float] = collections.defaultdict(float)
    for role, cpu in server.cpu_by_process(precise=True).values():
        out["broker" if role == "broker" else "server"] += cpu
    return dict(out)


class SocketIOServer:
    """bench/node/socketio_recovery.js: ordered through its stdin, one line
    each, answered on its stdout."""

    def __init__(self, log_path: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(["node", str(SOCKETIO), "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=str(NODE_DIR), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)
        line = self._line()
        if not line.startswith("ready"):
            self.stop()
            raise ServerError(f"socket.io did not start ({line!r}); see {log_path}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def ask(self, order: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(order.encode() + b"\n")
        self.proc.stdin.flush()
        return self._line()

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_child(self.proc)
        self.log.close()


def socketio_unavailable() -> Optional[str]:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        return "bench/node/node_modules has no socket.io: run `python -m bench setup` (npm ci)"
    return None


# -- publish: what a publication costs with history and without ----------------------------------


class _Answers(picows.WSListener):
    """The in-server publisher's connection: its answers, one per ask."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[str] = asyncio.Queue()

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is TEXT:
            self.answers.put_nowait(frame.get_payload_as_utf8_text())


# The publisher's pace (``publish_inside``): asks of BATCH publications, at
# most WINDOW of them not yet received by their subscriber, as bench/publish.py's
# max rate: below WSRELAY_WRITE_BUFFER_LIMIT's worth on one socket, so that
# what is measured is the rate the server delivers at, not a slow consumer.
BATCH = 512
WINDOW = 4096


async def publish_inside(url: str, prefix: str, n: int, count: int, run: str,
                         received: Optional[Tally] = None) -> float:
    """Have the server publish ``count`` publications over ``prefix0`` ..
    ``prefix<n-1>``, paced by what ``received`` counts when given (else in
    one ask); the seconds its loop took."""
    query = urllib.parse.urlencode({"prefix": prefix, "n": n, "run": run, "size": SIZE})
    transport, listener = await picows.ws_connect(_Answers, f"{url}/ws/history_pub?{query}", use_aiofastnet=False)
    asked, loop_s = 0, 0.0
    try:
        while asked < count:
            if received is not None:
                while asked - received.delivered > WINDOW - BATCH:
                    await asyncio.sleep(0.0005)
            k = min(count - asked, BATCH if received is not None else count)
            transport.send(TEXT, str(k).encode())
            asked += k
            loop_s += float(await asyncio.wait_for(listener.answers.get(), PHASE_S))
    finally:
        transport.disconnect(False)
    return loop_s


async def _publish_point(server: ClusterServer, kind: str, n: int, count: int) -> dict[str, Any]:
    """``count`` publications over ``n`` channels of ``kind`` (hist, plain),
    one subscriber each."""
    prefix = f"{kind}:n{n}-"
    tally = Tally()
    subs = [RelaySubscriber(tally, f"{prefix}{i}") for i in range(n)]
    await connect_all(server.url, "/ws/history", subs, 64)
    try:
        if kind == "hist":
            await until(lambda: tally.subscribed >= n, PHASE_S, "subscribed")
        # A round of one publication per channel until each subscriber has
        # had one: on several workers, until every node knows where they are.
        for _ in range(50):
            await publish_inside(server.url, prefix, n, n, "warm")
            await asyncio.sleep(0.1)
            if all(s.seen for s in subs):
                break
        else:
            raise ServerError(f"{prefix}*: the warm-up publications did not reach every subscriber")
        tally.expect(n)
        for i, s in enumerate(subs):
            s.expect("m", count // n + (1 if i < count % n else 0))
        cpu0, t0 = cpu_by_role(server), time.perf_counter()
        loop_s = await publish_inside(server.url, prefix, n, count, "m", tally)
        await tally.all_done(PHASE_S)
        t1, cpu1 = tally.t_last or time.perf_counter(), cpu_by_role(server)
    finally:
        drop(subs)
    elapsed = t1 - t0
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    total = sum(cpu.values())
    return {"history": kind == "hist", "channels": n, "publications": count, "publications_per_s": count / elapsed,
            "publisher_loop_per_s": count / loop_s, "cpu_us_per_publication": 1e6 * total / count,
            "cpu_us_by_part": {k: 1e6 * v / count for k, v in cpu.items()}, "elapsed_s": elapsed,
            "delivered": sum(s.got for s in subs), "errors": dict(tally.errors)}


async def publish(logs: pathlib.Path, count: int, spread: int, workers_list: list[int]) -> list[dict[str, Any]]:
    rows = []
    for workers in workers_list:
        with start_wsrelay(workers, logs) as server:
            await asyncio.sleep(1.0)  # the workers' start settles
            for n in (1, spread):
                for kind in ("plain", "hist"):
                    log(f"== history publish workers={workers} channels={n} {kind}")
                    row = {"server": server.spec.name, **await _publish_point(server, kind, n, count)}
                    log("   " + _summary(row, ("publications_per_s", "cpu_us_per_publication", "cpu_us_by_part",
                                               "errors")))
                    rows.append(row)
    return rows


# -- recovery: a mass reconnect, wsrelay against Socket.IO ---------------------------------------


async def _recover(clients: list[Any], tally: Tally, url: str, base: str, make_missed: Any,
                   gone: Any, cpu: Any, calls: Any, missed: int) -> dict[str, Any]:
    """The common run: connected (and a first publication, so that each
    has a position), dropped, ``missed`` publications, all back at once."""
    n = len(clients)
    await connect_all(url, base, clients, 64)
    await until(lambda: tally.subscribed >= n, PHASE_S, "connected")
    tally.expect(n)
    for c in clients:
        c.expect("first", 1)
    await make_missed(1, "first")
    await tally.all_done(PHASE_S)
    drop(clients)
    await until(gone, PHASE_S, "the server saw every client go", poll=0.1)
    await make_missed(missed, "missed")
    tally.expect(n)
    for c in clients:
        c.recovering = True
        c.expect("missed", missed)
    cpu0, calls0, client0, t0 = cpu(), calls(), time.process_time(), time.perf_counter()
    await connect_all(url, base, clients, n)
    await tally.all_done(PHASE_S)
    t1, cpu1, calls1, client1 = tally.t_last or time.perf_counter(), cpu(), calls(), time.process_time()
    drop(clients)
    times = sorted(t - t0 for t in tally.times)
    return {"clients": n, "missed": missed, "all_recovered_s": t1 - t0,
            "half_recovered_s": times[len(times) // 2] if times else None,
            "p90_recovered_s": times[int(len(times) * 0.9)] if times else None, "server_cpu_s": cpu1 - cpu0,
            "client_cpu_s": client1 - client0,
            # read/write system calls of the server's sockets: how many
            # publications each write carries
            "server_syscalls": calls1 - calls0, "recovered": n - tally.errors["not_recovered"],
            "delivered": sum(c.got for c in clients), "errors": dict(tally.errors)}


async def recovery_wsrelay(logs: pathlib.Path, workers: int, n: int, missed: int) -> dict[str, Any]:
    channel = f"hist:recover-w{workers}-"
    with start_wsrelay(workers, logs) as server:
        await asyncio.sleep(1.0)
        api = AsyncClient(server.url.replace("ws://", "http://"), API_KEY)
        tally = Tally()
        clients = [RelaySubscriber(tally, f"{channel}0") for _ in range(n)]
        left = {"subscribers": n}

        async def make_missed(count: int, run: str) -> None:
            await publish_inside(server.url, channel, 1, count, run)

        async def poll_gone() -> None:
            while True:
                left["subscribers"] = (await api.channels(f"{channel}*"))["channels"].get(f"{channel}0", {}).get(
                    "subscribers", 0)
                await asyncio.sleep(0.1)

        poller = asyncio.ensure_future(poll_gone())
        try:
            row = await _recover(clients, tally, server.url, "/ws/history", make_missed,
                                 lambda: left["subscribers"] == 0, lambda: sum(cpu_by_role(server).values()),
                                 server.syscalls, missed)
        finally:
            poller.cancel()
            await api.aclose()
    return {"server": server.spec.name, **row}


async def recovery_socketio(logs: pathlib.Path, n: int, missed: int) -> dict[str, Any]:
    server = SocketIOServer(logs / "socketio-recovery.log")
    try:
        tally = Tally()
        clients = [SocketIOSubscriber(tally) for _ in range(n)]
        count = {"n": n}

        async def make_missed(k: int, run: str) -> None:
            await asyncio.to_thread(server.ask, f"emit {k} {SIZE} {run}")

        def gone() -> bool:
            count["n"] = int(server.ask("count").split()[1])
            return count["n"] == 0

        row = await _recover(clients, tally, server.url, "/socket.io/?EIO=4&transport=websocket", make_missed,
                             gone, server.cpu_seconds, lambda: procfs.rw_syscalls(server.proc.pid), missed)
    finally:
        server.stop()
    return {"server": "socket.io", **row}


async def recovery(logs: pathlib.Path, n: int, missed: int, repeat: int) -> list[dict[str, Any]]:
    """Each server ``repeat`` times, the servers interleaved, a fresh
    server each time (the table shows medians)."""
    runs = {"wsrelay": lambda: recovery_wsrelay(logs, 0, n, missed),
            "wsrelay-w2": lambda: recovery_wsrelay(logs, 2, n, missed),
            "socket.io": lambda: recovery_socketio(logs, n, missed)}
    if socketio_unavailable():
        log(f"history recovery: socket.io skipped: {socketio_unavailable()}")
        del runs["socket.io"]
    rows = []
    for attempt in range(repeat):
        for name, run in runs.items():
            log(f"== history recovery {name} clients={n} missed={missed} attempt {attempt + 1}/{repeat}")
            try:
                row = {**await run(), "attempt": attempt}
            except (ServerError, OSError) as exc:
                row = {"server": name, "attempt": attempt,
                       "failed": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            log("   " + _summary(row, ("all_recovered_s", "half_recovered_s", "p90_recovered_s", "server_cpu_s",
                                       "client_cpu_s", "recovered", "errors", "failed")))
            rows.append(row)
    return rows


# -- idle: what a history channel costs a connection ---------------------------------------------


async def idle(logs: pathlib.Path, counts: list[int]) -> list[dict[str, Any]]:
    """``n`` idle connections, all in one channel, without history then
    with it, each on a fresh one-process server: RSS per connection."""
    rows = []
    for n in counts:
        row: dict[str, Any] = {"connections": n}
        for kind in ("plain", "hist"):
            row[f"bytes_per_connection_{kind}"], dropped = await _idle_rss(logs, kind, n)
            if dropped:
                row.setdefault("errors", {})[f"dropped_{kind}"] = dropped
        row["extra_bytes_per_connection"] = row["bytes_per_connection_hist"] - row["bytes_per_connection_plain"]
        log(f"history idle n={n}: " + _summary(row, ("bytes_per_connection_plain", "bytes_per_connection_hist",
                                                     "extra_bytes_per_connection")))
        rows.append(row)
    return rows


async def _idle_rss(logs: pathlib.Path, kind: str, n: int) -> tuple[float, int]:
    """RSS per connection of ``n`` in channel ``<kind>:idle``; how many
    dropped meanwhile."""
    with start_wsrelay(0, logs) as server:
        await asyncio.sleep(1.0)
        base = server.rss()
        tally = Tally()
        subs = [RelaySubscriber(tally, f"{kind}:idle") for _ in range(n)]
        await connect_all(server.url, "/ws/history", subs, 64)
        if kind == "hist":
            await until(lambda: tally.subscribed >= n, PHASE_S, "subscribed")
        await asyncio.sleep(2.0)  # the allocator settles
        per_connection = (server.rss() - base) / n
        dropped = tally.errors["disconnected"]
        drop(subs)
    return per_connection, dropped


# -- the command line ------------------------------------------------------------------------------


def _summary(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    def text(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {text(x)}" for k, x in v.items()) + "}"
        return str(v)

    return " ".join(f"{k}={text(row[k])}" for k in keys if k in row)


def _print(results: dict[str, Any]) -> None:
    if "publish" in results:
        print("\n| server | channels | history | publications/s | server CPU µs/publication | of which broker | "
              "ratio to without | errors |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
        rows = results["publish"]
        for r in rows:
            plain = next((p for p in rows if p["server"] == r["server"] and p["channels"] == r["channels"]
                          and not p["history"]), None)
            ratio = r["cpu_us_per_publication"] / plain["cpu_us_per_publication"] if plain else None
            print(f"| {r['server']} | {r['channels']:,} | {'yes' if r['history'] else 'no'} | "
                  f"{r['publications_per_s']:,.0f} | {r['cpu_us_per_publication']:.1f} | "
                  f"{r['cpu_us_by_part'].get('broker', 0.0):.1f} | {ratio:.2f} | {r['errors'] or 0} |")
    if "recovery" in results:
        print("\n| server | clients | missed | all recovered (s) | (runs' range) | half, 90 % (s) | server CPU (s) | "
              "server read/write calls | client CPU (s) | recovered | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for name in dict.fromkeys(r["server"] for r in results["recovery"]):
            runs = [r for r in results["recovery"] if r["server"] == name]
            ok = [r for r in runs if "failed" not in r]
            failed = [r["failed"] for r in runs if "failed" in r]
            if not ok:
                print(f"| {name} | FAILED: {failed[0]} |")
                continue
            errors: collections.Counter[str] = collections.Counter()
            for r in ok:
                errors.update(r["errors"])
            if failed:
                errors["failed_runs"] += len(failed)
            med = {k: statistics.median(r[k] for r in ok) for k in (
                "all_recovered_s", "half_recovered_s", "p90_recovered_s", "server_cpu_s", "server_syscalls",
                "client_cpu_s")}
            times = [r["all_recovered_s"] for r in ok]
            print(f"| {name} | {ok[0]['clients']:,} | {ok[0]['missed']} | {med['all_recovered_s']:.3f} | "
                  f"{min(times):.2f}–{max(times):.2f} | {med['half_recovered_s']:.2f}, {med['p90_recovered_s']:.2f} | "
                  f"{med['server_cpu_s']:.3f} | {med['server_syscalls']:,.0f} | "
                  f"{med['client_cpu_s']:.3f} | {min(r['recovered'] for r in ok):,} | {dict(errors) or 0} |")
        print("\n(medians of each server's runs; recovered: the fewest of a run)")
    if "idle" in results:
        print("\n| idle connections | B/connection, channel without history | with history | difference | errors |")
        print("| ---: | ---: | ---: | ---: | --- |")
        for r in results["idle"]:
            print(f"| {r['connections']:,} | {r['bytes_per_connection_plain']:.0f} | "
                  f"{r['bytes_per_connection_hist']:.0f} | {r['extra_bytes_per_connection']:+.0f} | "
                  f"{r.get('errors') or 0} |")


async def _run(chosen: list[str], args: argparse.Namespace, logs: pathlib.Path) -> dict[str, Any]:
    results: dict[str, Any] = {"loadavg": procfs.loadavg()}
    if "publish" in chosen:
        results["publish"] = await publish(logs, args.publications, args.channels, args.workers)
    if "recovery" in chosen:
        results["recovery"] = await recovery(logs, args.clients, args.missed, args.repeat)
    if "idle" in chosen:
        results["idle"] = await idle(logs, args.idle)
    results["loadavg_after"] = procfs.loadavg()
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench history", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="small and short: 30,000 publications, 100 channels, 200 clients, 2,000 idle connections")
    p.add_argument("--publications", type=int, help="publish: publications per measurement (default 200,000)")
    p.add_argument("--channels", type=int, help="publish: the channels of the spread case (default 1,000)")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2],
                   help="publish: WSRELAY_WORKERS of each server, 0 for one process (default 0,2)")
    p.add_argument("--clients", type=int, help="recovery: clients that reconnect (default 1,000)")
    p.add_argument("--missed", type=int, default=300, help="recovery: publications each missed (default 300)")
    p.add_argument("--repeat", type=int, help="recovery: runs of each server, interleaved (default 3, quick 1)")
    p.add_argument("--idle", type=lambda s: [int(x) for x in s.split(",")],
                   help="idle: comma-separated connection counts (default 5000,15000)")
    p.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    args = p.parse_args(argv)
    scenarios = chosen(p, args.scenarios, SCENARIOS)
    quick = args.quick
    args.publications = args.publications or (30_000 if quick else 200_000)
    args.channels = args.channels or (100 if quick else 1_000)
    args.clients = args.clients or (200 if quick else 1_000)
    args.repeat = args.repeat or (1 if quick else 3)
    args.idle = args.idle or ([2_000] if quick else [5_000, 15_000])
    # One socket per client in this process: the 15,000 idle connections' worth.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logs = ROOT / "bench" / "results" / f"history-{time.strftime('%Y%m%d-%H%M%S')}"
    logs.mkdir(parents=True, exist_ok=True)
    results = uvloop.run(_run(scenarios, args, logs))
    _print(results)
    (logs / "results.json").write_text(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    log(f"history: results and logs in {logs.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
