"""``python -m bench presence [replication] [serve] [--quick] [--json]``: the
cost of presence (docs/guide.md, "Presence"; docs/cluster.md, "Presence").

- ``replication``: how one node's entries reach another, the two ways
  considered, on a private nats-server in this process: the ordered stream
  between two nodes (two real Transports, PRESENCE records of ``--batch``
  entries per loop iteration, the receiving node's hooks applying them as
  presence.pyx does), against JetStream key-value (a key per entry, puts
  pipelined ``--batch`` at a time, the other node watching the bucket).
  Time and CPU until the other side holds every entry, and then none;
  bytes per entry on the wire; the broker's RSS per key.
- ``serve``: ``wsrelay serve`` with ``WSRELAY_WORKERS=2`` and the server API
  on, ``--subscribers`` (10,000) connections in one presence room, spread
  over the workers by the kernel (bench/loadgen.py's idle connections):
  presence_stats and presence latency p50/p99 through the API
  (``wsrelay.client.AsyncClient``), RSS per entry on each node against the
  same connections in a room without presence, and the server's CPU for a
  storm of 1,000 joins (and their leaves) in one second, with join/leave
  events below the cap (every join to every member) and past it (none).

Goals: presence_stats p99 <= 5 ms, <= 300 bytes per entry on each node, a
connection with presence <= 0.5 KiB more than one without. The machine is
shared: develop with ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

import nats

from wsrelay.client import AsyncClient, Client
from wsrelay.cluster.broker import Broker
from wsrelay.cluster.codec import decode, encode
from wsrelay.cluster.transport import Transport

from . import procfs
from .cluster import ClusterServer
from .common import chosen, log, split, status_rate, sum_errors
from .loadgen import LoadGen, source_ips
from .processes import percentiles
from .scenarios import go
from .servers import ServerSpec

SCENARIOS = ("replication", "serve")
ROOM = "room:bench"


# -- replication: the ordered stream against JetStream key-value -------------------------------


class _Receiver:
    """A node's hooks that hold what another node says of its presence
    entries, as presence.pyx holds them (client -> user, or (user, info))."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self.up = asyncio.Event()

    def on_presence(self, node: str, snapshot: bool, changes: list[Any]) -> None:
        for name, joins, leaves in changes:
            held = self.entries.setdefault(name, {})
            for client, user, info in joins:
                held[client] = user if not info else (user, info)
            for client in leaves:
                held.pop(client, None)
        self.changed.set()

    def on_node_up(self, node: str, incarnation: int) -> None:
        self.up.set()

    def on_node_down(self, node: str, incarnation: int, reason: str) -> None:
        """A node lost mid-run shows as a run that never completes."""

    def on_send(self, *args: Any) -> None:
        """Only presence crosses this bench's nodes."""

    on_call = on_signal = on_frames = on_interest = on_publication = on_send

    def on_channel_request(self, args: list[Any]) -> None:
        return None


async def _until(condition: Callable[[], bool], changed: asyncio.Event, timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        changed.clear()
        await asyncio.wait_for(changed.wait(), deadline - time.perf_counter())


def _clients(incarnation: int, n: int) -> list[str]:
    return [f"{{pa@bench:gateway|0x{(incarnation << 32) | (i + 16):05x}}}" for i in range(n)]


async def _stream(broker: Broker, n: int, batch: int) -> dict[str, Any]:
    sender, receiver = _Receiver(), _Receiver()
    a = Transport("pa", broker.url, token=broker.token, hooks=sender)
    b = Transport("pb", broker.url, token=broker.token, hooks=receiver)
    await a.start()
    await b.start()
    try:
        # Each up in the other's view: what a sends is for the nodes it sees up.
        await asyncio.wait_for(asyncio.gather(sender.up.wait(), receiver.up.wait()), 20)
        clients = _clients(a.incarnation, n)
        sent = a.counters.bytes_out
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            joins = [[client, f"user{j}", None] for j, client in enumerate(clients[i:i + batch], i)]
            a.presence(None, False, [[ROOM, joins, []]])
            await asyncio.sleep(0)  # the next loop iteration: the batch is published
        await _until(lambda: len(receiver.entries.get(ROOM, ())) == n, receiver.changed)
        t1, cpu1 = time.perf_counter(), time.process_time()
        wire = a.counters.bytes_out - sent
        for i in range(0, n, batch):
            a.presence(None, False, [[ROOM, [], clients[i:i + batch]]])
            await asyncio.sleep(0)
        await _until(lambda: not receiver.entries.get(ROOM), receiver.changed)
        t2, cpu2 = time.perf_counter(), time.process_time()
    finally:
        await a.stop()
        await b.stop()
    return {"way": "ordered stream", "entries": n, "join_ms": (t1 - t0) * 1e3, "join_cpu_ms": (cpu1 - cpu0) * 1e3,
            "leave_ms": (t2 - t1) * 1e3, "leave_cpu_ms": (cpu2 - cpu1) * 1e3, "wire_bytes_per_entry": wire / n,
            "broker_bytes_per_entry": 0.0}


async def _kv(broker: Broker, n: int, batch: int) -> dict[str, Any]:
    writer = await nats.connect(broker.url, token=broker.token)
    reader = await nats.connect(broker.url, token=broker.token)
    try:
        bucket = await writer.jetstream().create_key_value(bucket="bench_presence", history=1)
        watched = await reader.jetstream().key_value("bench_presence")
        held: dict[str, Any] = {}
        changed = asyncio.Event()
        watcher = await watched.watchall()

        async def watch() -> None:
            async for change in watcher:
                if change is None:  # the end of the initial values
                    continue
                if change.operation in ("DEL", "PURGE"):
                    held.pop(change.key, None)
                else:
                    held[change.key] = decode(change.value)
                changed.set()

        task = asyncio.ensure_future(watch())
        # A key is made of [-/_=.A-Za-z0-9]: a channel name and a PID text
        # must be encoded into one (hex here).
        keys = [f"p.{ROOM.encode().hex()}.{client.encode().hex()}" for client in _clients(1, n)]
        rss = procfs.rss_bytes(broker.pid)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            await asyncio.gather(*(bucket.put(key, encode([f"user{j}", None]))
                                   for j, key in enumerate(keys[i:i + batch], i)))
        await _until(lambda: len(held) == n, changed)
        t1, cpu1 = time.perf_counter(), time.process_time()
        broker_bytes = procfs.rss_bytes(broker.pid) - rss
        for i in range(0, n, batch):
            await asyncio.gather(*(bucket.delete(key) for key in keys[i:i + batch]))
        await _until(lambda: not held, changed)
        t2, cpu2 = time.perf_counter(), time.process_time()
        task.cancel()
        await watcher.stop()
    finally:
        await writer.close()
        await reader.close()
    return {"way": "JetStream KV", "entries": n, "join_ms": (t1 - t0) * 1e3, "join_cpu_ms": (cpu1 - cpu0) * 1e3,
            "leave_ms": (t2 - t1) * 1e3, "leave_cpu_ms": (cpu2 - cpu1) * 1e3, "wire_bytes_per_entry": None,
            "broker_bytes_per_entry": broker_bytes / n}


async def replication(n: int, batch: int) -> list[dict[str, Any]]:
    """Both ways, each on a broker of its own (CPU: this process, both sides)."""
    rows = []
    for way in (_stream, _kv):
        with Broker() as broker:
            rows.append(await way(broker, n, batch))
    return rows


# -- serve: 10,000 subscribers over two workers, through the API ---------------------------------

API_KEY = "bench-presence"
WORKERS = 2
# The subscribers held: presence without join/leave events, so that what
# they cost is their entries' (the first 1,000 joins of a room with events
# would send ~500,000 of them meanwhile).
HELD = "still:bench"
# The storms: join/leave events below the cap (1,000), and past it (a cap of
# 0: no join is within it).
BELOW_CAP = "room:storm"
PAST_CAP = "crowd:storm"
APP = """\
version: "1.0"
namespace: load
entries:
  - {name: gateway, kind: http.service, addr: "127.0.0.1:0"}
  - {name: processes, kind: process.host}
  - name: ws_router
    kind: http.router
    meta: {server: gateway}
    prefix: /ws
    post_middleware: [websocket_relay]
  - {name: echo, kind: process.function, func: "bench.presence:echo"}
  - {name: present, kind: http.endpoint, meta: {router: ws_router}, path: /present, func: "bench.presence:present"}
  - {name: rooms, kind: channel.namespace, pattern: "room:*", presence: true, join_leave: true}
  - {name: crowds, kind: channel.namespace, pattern: "crowd:*", presence: true, join_leave: true,
     presence_max_members: 0}
  - {name: still, kind: channel.namespace, pattern: "still:*", presence: true}
  - {name: plain, kind: channel.namespace, pattern: "plain:*"}
"""


def present(req: Any, res: Any) -> None:
    """The handler of ``serve``: an echo process per connection (the load
    generator's check echoes through it), granted the channel of the query,
    with a user from the client's port (some users have several connections)."""
    from wsrelay import process

    user = f"user{req.client[1] % 5000}"
    res.relay(process.spawn("load:echo", "load:processes"), channels=[req.query("ch", HELD)], user=user)


async def echo() -> None:
    """Every client message back to its client; ends when the client leaves."""
    from wsrelay import process

    async for msg in process.inbox():
        if msg.topic == "ws.message":
            data = msg.payload
            process.send(data["client_pid"], "ws.send", {"type": data["type"], "data": data["data"]})
        elif msg.topic == "ws.leave":
            return


def _spec(app: pathlib.Path) -> ServerSpec:
    def argv(host: str, port: int) -> list[str]:
        return [sys.executable, "-m", "wsrelay", "serve", str(app), "--addr", f"{host}:{port}"]

    return ServerSpec(f"wsrelay-w{WORKERS}", f"WSRELAY_WORKERS={WORKERS}, the server API on; `wsrelay serve` of "
                      "bench/presence.py's APP", argv, {"echo": "/ws/present"}, health="/health",
                      env={"WSRELAY_API_KEY": API_KEY})


@contextlib.contextmanager
def _held(server: ClusterServer, channel: str, n: int, cost: dict[str, Any]) -> Iterator[None]:
    """``n`` idle connections granted ``channel`` (bench/loadgen.py's
    ``connections``), held for the block. ``cost`` gets the server's CPU
    and the time to open them (``join_*``) and, once the API says they are
    all gone, to close them (``leave_*``)."""
    parts = split(n, WORKERS)
    params = {"op": "connections", "url": server.url, "paths": {"echo": f"/ws/present?ch={channel}"},
              "source_ips": source_ips(8), "timeout": 30.0, "connect_concurrency": 64, "binary": True,
              "compression": False}
    stats = Client(server.url.replace("ws://", "http://"), API_KEY)
    present = not channel.startswith("plain:")
    before = stats.presence_stats(channel)["clients"] if present else 0
    with LoadGen(WORKERS, params, f"presence {channel} c={n}", status_rate("connected", "handshakes"),
                 lambda i, _: {"conns": parts[i]}) as lg:
        cpu = server.cpu_seconds()
        go(lg)
        done = lg.wait_phase("connected", 120 + n / 50)
        cost["join_cpu_s"] = server.cpu_seconds() - cpu
        cost["join_s"] = (max(d["t_done"] for d in done.values()) - min(d["t0"] for d in done.values())) / 1e9
        cost["connected"] = sum(d["n"] for d in done.values())
        yield
        lg.send_all("check")
        lg.wait_phase("checked", 120)
        cpu, t0 = server.cpu_seconds(), time.perf_counter()
        lg.send_all("close")
        cost["errors"] = sum_errors(lg.wait_results(120))
    while present and stats.presence_stats(channel)["clients"] > before:
        time.sleep(0.01)  # polled: nothing tells a client outside when the server has seen them all go
    cost["leave_cpu_s"] = server.cpu_seconds() - cpu
    cost["leave_s"] = time.perf_counter() - t0
    stats.close()


async def _latencies(url: str, requests: int) -> dict[str, Any]:
    """presence_stats ``requests`` times and presence a twentieth as many,
    one at a time on one keep-alive connection: p50/p99 in ms."""
    async with AsyncClient(url, API_KEY) as client:
        answer = await client.presence_stats(HELD)
        times: dict[str, list[float]] = {"presence_stats": [], "presence": []}
        for method, count in (("presence_stats", requests), ("presence", max(10, requests // 20))):
            call = getattr(client, method)
            for _ in range(count):
                t0 = time.perf_counter()
                await call(HELD)
                times[method].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"stats": answer}
    for method, values in times.items():
        p50, p99 = percentiles(values)
        out[method] = {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "requests": len(values)}
    return out


def serve(n: int, storm: int, requests: int) -> dict[str, Any]:
    """``n`` subscribers without presence, then with it (each run a fresh
    server): memory, API latencies, the storms."""
    out: dict[str, Any] = {"subscribers": n, "workers": WORKERS, "storm": storm}
    with tempfile.TemporaryDirectory(prefix="bench-presence-") as folder:
        app = pathlib.Path(folder) / "presence.yaml"
        app.write_text(APP)
        spec = _spec(app)
        rss: dict[str, int] = {}
        for label, channel in (("without", "plain:bench"), ("with", HELD)):
            with ClusterServer(spec, pathlib.Path(folder) / f"{label}.log", WORKERS) as server:
                time.sleep(1.0)  # the workers' start settles
                base = server.rss()
                held: dict[str, Any] = {}
                with _held(server, channel, n, held):
                    time.sleep(2.0)  # the last announcements and the allocator settle
                    rss[label] = server.rss() - base
                    log(f"presence: {n:,} subscribers {label} presence: +{rss[label] / n:.0f} B each")
                    if label == "with":
                        url = server.url.replace("ws://", "http://")
                        out["api"] = asyncio.run(_latencies(url, requests))
                        for kind, room in (("below_cap", BELOW_CAP), ("past_cap", PAST_CAP)):
                            cost: dict[str, Any] = {}
                            with _held(server, room, storm, cost):
                                pass
                            out[f"storm_{kind}"] = cost
                out[f"held_{label}"] = held
    extra = rss["with"] - rss["without"]
    out["bytes_per_connection_extra"] = extra / n
    # Every node holds every entry: WORKERS copies of each (its own node's
    # read from the channel's members, the others' kept apart).
    out["bytes_per_entry_per_node"] = extra / (n * WORKERS)
    return out


# -- the command line ------------------------------------------------------------------------------


def _print(rows: list[dict[str, Any]]) -> None:
    print("| way | entries | all in (ms) | CPU (ms) | all gone (ms) | CPU (ms) | wire B/entry | broker B/entry |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        wire = "-" if r["wire_bytes_per_entry"] is None else f"{r['wire_bytes_per_entry']:.0f}"
        print(f"| {r['way']} | {r['entries']:,} | {r['join_ms']:.1f} | {r['join_cpu_ms']:.1f} | {r['leave_ms']:.1f} | "
              f"{r['leave_cpu_ms']:.1f} | {wire} | {r['broker_bytes_per_entry']:.0f} |")


def _print_serve(r: dict[str, Any]) -> None:
    api = r["api"]
    print(f"\n{r['subscribers']:,} subscribers over {r['workers']} workers: presence_stats {api['stats']}")
    for method in ("presence_stats", "presence"):
        print(f"- {method} through the API: p50 {api[method]['p50_ms']:.2f} ms, p99 {api[method]['p99_ms']:.2f} ms "
              f"({api[method]['requests']} requests)")
    print(f"- memory: {r['bytes_per_entry_per_node']:.0f} B per entry per node; a connection with presence "
          f"{r['bytes_per_connection_extra']:.0f} B more than one without")
    for kind in ("below_cap", "past_cap"):
        s = r[f"storm_{kind}"]
        print(f"- {r['storm']:,} joins {kind.replace('_', ' ')}: {s['join_s']:.2f} s, server CPU "
              f"{s['join_cpu_s']:.2f} s; their leaves {s['leave_s']:.2f} s, CPU {s['leave_cpu_s']:.2f} s")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench presence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="1,000 entries / subscribers instead of 10,000")
    p.add_argument("--batch", type=int, default=100, help="replication: entries per loop iteration (default 100)")
    p.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    args = p.parse_args(argv)
    scenarios = chosen(p, args.scenarios, SCENARIOS)
    n = 1_000 if args.quick else 10_000
    results: dict[str, Any] = {}
    if "replication" in scenarios:
        results["replication"] = asyncio.run(replication(n, args.batch))
        _print(results["replication"])
    if "serve" in scenarios:
        results["serve"] = serve(n, 1_000, 200 if args.quick else 1_000)
        _print_serve(results["serve"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
