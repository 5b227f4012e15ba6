"""``python -m bench callgrind [CHECKOUT ...] [options]``: the instructions
the wsrelay server executes per relay echo, per broadcast delivery and per
handshake, counted by callgrind, for one or more checkouts (each built
there with ``make build``; this one by default), the first being the
reference of the others' ratios. A measure the machine's load does not
move, for A/B comparisons of two commits (docs/performance.md, "Method",
instruction counts).

Each checkout's ``wsrelay serve bench/servers/wsrelay_app/app.yaml`` runs
under ``valgrind --tool=callgrind --instr-atstart=no``, its work by the
clock off (QUIET); the clients run here, natively. For every point: a
warm-up, then ``--repeat`` windows, each ``callgrind_control -z`` (zero),
``-i on``, the fixed workload, ``-i off``, ``-d`` (dump). A window's
instructions (Ir) are the server's from the first message to the last
reply, divided by the window's messages (echo), deliveries (broadcast) or
handshakes; a last window with nothing sent shows what the seconds alone
add. The dumps stay in ``--out`` for ``callgrind_annotate`` (a
function-by-function diff of two checkouts).

- ``echo``: ``--conns`` connections to /ws/echo (the relay echo: the handler
  spawns an echo process per connection), each sending its next message
  when the previous one has come back, ``--messages`` in all.
- ``broadcast``: ``--subscribers`` connections to /ws/sub and one to
  /ws/pub; each publisher message goes to every subscriber with one
  ``group.send``; the next one is sent when every subscriber has the
  previous one; ``--broadcasts`` messages in all.
- ``handshake``: ``--handshakes`` connections to /ws/echo opened one after
  the other (each spawning its echo process), closed after the window.

With ``--cache-sim``, callgrind simulates the caches too: last-level misses
per op beside the instructions, for what instruction counts cannot see
(larger objects, more of them touched).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any, Optional

import picows

from . import procfs
from .common import chosen, log, parse_ints
from .servers import ROOT, RunningServer, ServerSpec

SCENARIOS = ("echo", "broadcast", "handshake")
# The server's work by the clock rather than by the message (pings, and the
# sweep over every connection that checks them and stalled writers: every 5 s
# by default) is off: it would count by the window's seconds, which the load
# on the machine stretches. The sweep runs while any of the three is set.
QUIET = {"WSRELAY_PING_INTERVAL": "0", "WSRELAY_PING_TIMEOUT": "0", "WSRELAY_STALL_TIMEOUT": "0"}
BINARY = picows.WSMsgType.BINARY
CLOSE = picows.WSMsgType.CLOSE


def _checkout(text: str) -> pathlib.Path:
    path = pathlib.Path(text).resolve()
    if not (path / ".venv" / "bin" / "python").exists():
        raise argparse.ArgumentTypeError(f"{path}: no .venv/bin/python; run `make build` there first")
    if not (path / "bench" / "servers" / "wsrelay_app" / "app.yaml").exists():
        raise argparse.ArgumentTypeError(f"{path}: no bench/servers/wsrelay_app/app.yaml")
    return path


def describe(checkout: pathlib.Path) -> str:
    """The checkout's commit (and ``+dirty`` when its server, wsrelay/, differs)."""
    git = ["git", "-C", str(checkout)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "wsrelay"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return checkout.name  # not a git checkout: its directory names it
    return commit + ("+dirty" if dirty else "")


# -- the server under callgrind -------------------------------------------------------------------


class CallgrindServer(RunningServer):
    """``wsrelay serve`` of ``checkout`` under callgrind, instrumentation off
    until ``window`` turns it on."""

    def __init__(self, checkout: pathlib.Path, out: pathlib.Path, label: str, cache_sim: bool = False) -> None:
        self.out = out
        self.label = label
        python = checkout / ".venv" / "bin" / "python"
        app = checkout / "bench" / "servers" / "wsrelay_app" / "app.yaml"
        dumps = out / f"callgrind.{label}.%p"
        spec = ServerSpec(
            f"wsrelay@{label}", f"wsrelay of {checkout} under callgrind",
            lambda host, port: ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                f"--cache-sim={'yes' if cache_sim else 'no'}",
                                f"--callgrind-out-file={dumps}", f"--log-file={out / f'valgrind.{label}.log'}",
                                str(python), "-m", "wsrelay", "serve", str(app), "--addr", f"{host}:{port}"],
            {}, root=checkout)
        super().__init__(spec, out / f"server.{label}.log", start_timeout=600.0, env=QUIET)
        self.dumps = 0

    def control(self, *args: str) -> None:
        done = subprocess.run(["callgrind_control", *args, str(self.pid)], capture_output=True, text=True)
        if done.returncode or "OK" not in done.stdout:
            raise RuntimeError(f"callgrind_control {' '.join(args)} {self.pid}: {done.stdout}{done.stderr}")

    def dump(self) -> pathlib.Path:
        """Dump the counters (zeroing them); the dump's file."""
        self.control("-d")
        self.dumps += 1
        return self.out / f"callgrind.{self.label}.{self.pid}.{self.dumps}"

    def stop(self, timeout: float = 120.0) -> Optional[int]:
        return super().stop(timeout)


def costs(dump: pathlib.Path) -> dict[str, int]:
    """The totals of a callgrind dump by event: Ir, and with the cache
    simulation the misses too (ILmr, DLmr, DLmw: the last level's)."""
    events: list[str] = []
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:"):
            return dict(zip(events, (int(x) for x in line.split()[1:])))
    raise ValueError(f"{dump}: no totals line")


def window_row(dump: pathlib.Path, seconds: float, ops: int, **more: Any) -> dict[str, Any]:
    events = costs(dump)
    return {"dump": str(dump), "ir": events["Ir"], "events": events, "ops": ops, "seconds": seconds, **more}


def ll_misses(events: dict[str, int]) -> Optional[int]:
    """Last-level cache misses (instruction and data), or None without the simulation."""
    if "DLmr" not in events:
        return None
    return events.get("ILmr", 0) + events["DLmr"] + events.get("DLmw", 0)


# -- the clients ----------------------------------------------------------------------------------


class Client(picows.WSListener):
    """A connection that counts the binary messages it receives and calls
    ``on_message`` for each."""

    def __init__(self, on_message: Any) -> None:
        self.on_message = on_message
        self.transport: Any = None
        self.received = 0

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is BINARY:
            self.received += 1
            self.on_message(self, frame.get_payload_as_bytes())
        elif frame.msg_type is CLOSE:
            transport.disconnect()


async def connect(url: str, clients: list[Client], concurrency: int = 32) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(client: Client) -> None:
        async with sem:
            client.transport, _ = await picows.ws_connect(lambda: client, url, websocket_handshake_timeout=300,
                                                          use_aiofastnet=False)

    await asyncio.gather(*(one(c) for c in clients))


def payload(seq: int, size: int) -> bytes:
    head = seq.to_bytes(8, "little")
    return head + b"x" * max(0, size - len(head))


async def on_window(server: CallgrindServer, workload: Any) -> tuple[pathlib.Path, float]:
    """Run ``workload()`` with the server's instrumentation on; its dump and
    the window's seconds."""
    await asyncio.to_thread(server.control, "-z")
    await asyncio.to_thread(server.control, "-i", "on")
    t0 = time.perf_counter()
    await workload()
    seconds = time.perf_counter() - t0
    await asyncio.to_thread(server.control, "-i", "off")
    return await asyncio.to_thread(server.dump), seconds


async def idle(server: CallgrindServer, seconds: float) -> dict[str, Any]:
    """A window of ``seconds`` with the connections open and nothing sent:
    what the windows' own seconds add to their counts."""
    dump, took = await on_window(server, lambda: asyncio.sleep(seconds))
    row = window_row(dump, took, 0)
    return {**row, "ir_per_second": row["ir"] / took}


async def echo(server: CallgrindServer, conns: int, messages: int, warmup: int, size: int, repeat: int,
               idle_seconds: float) -> list[dict[str, Any]]:
    """``messages`` relay echoes over ``conns`` connections, each one message
    in flight, per window."""
    state: dict[str, Any] = {}

    def on_message(client: Client, data: bytes) -> None:
        if data != payload(int.from_bytes(data[:8], "little"), size):
            raise RuntimeError(f"echo: unexpected message of {len(data)} bytes")
        state["outstanding"] -= 1
        if state["left"].get(client):
            state["left"][client] -= 1
            client.transport.send(BINARY, payload(client.received, size))
        elif not state["outstanding"]:
            state["done"].set()

    clients = [Client(on_message) for _ in range(conns)]
    await connect(f"{server.url}/ws/echo", clients)

    async def run(total: int) -> None:
        share = [total // conns + (i < total % conns) for i in range(conns)]
        state["done"] = asyncio.Event()
        state["left"] = {c: n - 1 for c, n in zip(clients, share) if n}
        state["outstanding"] = total
        for c in state["left"]:
            c.transport.send(BINARY, payload(c.received, size))
        await state["done"].wait()

    await run(warmup)
    rows = []
    for _ in range(repeat):
        dump, seconds = await on_window(server, lambda: run(messages))
        rows.append(window_row(dump, seconds, messages))
    rows.append(await idle(server, idle_seconds))
    for c in clients:
        c.transport.disconnect()
    return rows


async def broadcast(server: CallgrindServer, subscribers: int, broadcasts: int, warmup: int, size: int,
                    repeat: int, idle_seconds: float) -> list[dict[str, Any]]:
    """``broadcasts`` messages from one publisher to ``subscribers``, one in
    flight, per window."""
    state: dict[str, Any] = {"seq": -1, "count": 0, "event": asyncio.Event()}

    def on_message(client: Client, data: bytes) -> None:
        seq = int.from_bytes(data[:8], "little")
        if seq == state["seq"]:
            state["count"] += 1
            if state["count"] == subscribers:
                state["event"].set()

    subs = [Client(on_message) for _ in range(subscribers)]
    await connect(f"{server.url}/ws/sub", subs)
    pub = Client(lambda client, data: None)
    await connect(f"{server.url}/ws/pub", [pub])

    async def one(seq: int, timeout: Optional[float] = None) -> bool:
        """Publish ``seq``; whether every subscriber had it within ``timeout``."""
        state["seq"], state["count"], state["event"] = seq, 0, asyncio.Event()
        pub.transport.send(BINARY, payload(seq, size))
        try:
            await asyncio.wait_for(state["event"].wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    seq = 0
    # Probes until one reaches every subscriber: the room has them all.
    while not await one(seq, 60.0):
        seq += 1
        log(f"  broadcast: probe {seq} reached {state['count']} of {subscribers} subscribers")
    for _ in range(warmup):
        seq += 1
        await one(seq)

    async def run() -> None:
        nonlocal seq
        for _ in range(broadcasts):
            seq += 1
            await one(seq)

    rows = []
    for _ in range(repeat):
        dump, seconds = await on_window(server, run)
        rows.append(window_row(dump, seconds, broadcasts * subscribers, messages=broadcasts))
    rows.append(await idle(server, idle_seconds))
    for c in (*subs, pub):
        c.transport.disconnect()
    return rows


# -- the run --------------------------------------------------------------------------------------


async def handshakes(server: CallgrindServer, count: int, warmup: int, repeat: int,
                     idle_seconds: float) -> list[dict[str, Any]]:
    """``count`` connections to /ws/echo opened one after the other per
    window (each handshake spawning its echo process), closed after it; the
    next window once the server holds no process but its own again."""
    url = f"{server.url}/ws/echo"

    def state() -> tuple[int, int]:
        """The server's processes (its /health, read without the usual
        timeout: under callgrind the first answers are slow) and open sockets."""
        with urllib.request.urlopen(f"http://{server.host}:{server.port}/health", timeout=120) as r:
            return int(json.loads(r.read())["processes"]), procfs.open_sockets(server.pid)

    resting = state()

    async def settled() -> None:
        """Until the closed connections are gone: their processes ended and their sockets closed."""
        deadline = time.monotonic() + 300
        while await asyncio.to_thread(state) != resting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"handshakes: the server's processes and sockets did not come back to {resting}")
            await asyncio.sleep(0.2)  # polling: the server tells nothing when a connection is gone

    async def run(clients: list[Client]) -> None:
        await connect(url, clients, concurrency=1)

    def close(clients: list[Client]) -> None:
        for c in clients:
            c.transport.disconnect()

    warm = [Client(lambda client, data: None) for _ in range(warmup)]
    await run(warm)
    close(warm)
    await settled()
    rows = []
    for _ in range(repeat):
        clients = [Client(lambda client, data: None) for _ in range(count)]
        dump, seconds = await on_window(server, functools.partial(run, clients))
        rows.append(window_row(dump, seconds, count))
        close(clients)
        await settled()
    rows.append(await idle(server, idle_seconds))
    return rows


# -- the run --------------------------------------------------------------------------------------

UNITS = {"echo": ("conns", "message"), "broadcast": ("subscribers", "delivery"), "handshake": ("conns", "handshake")}


def measure(args: argparse.Namespace, scenarios: list[str]) -> list[dict[str, Any]]:
    results = []
    for scenario in scenarios:
        points = {"echo": args.conns, "broadcast": args.subscribers, "handshake": [args.handshakes]}[scenario]
        for n in points:
            for i, checkout in enumerate(args.checkouts):
                label = f"{i}-{describe(checkout)}"
                log(f"{scenario} {n}: {checkout} ({label}) under callgrind")
                with CallgrindServer(checkout, args.out, f"{label}.{scenario}{n}", args.cache_sim) as server:
                    if scenario == "echo":
                        work = echo(server, n, args.messages, args.warmup, args.size, args.repeat, args.idle)
                    elif scenario == "broadcast":
                        work = broadcast(server, n, args.broadcasts, args.warmup, args.size, args.repeat,
                                         args.idle)
                    else:
                        work = handshakes(server, n, min(args.warmup, n), args.repeat, args.idle)
                    *rows, quiet = asyncio.run(work)
                per = [r["ir"] / r["ops"] for r in rows]
                result = {"scenario": scenario, "n": n, "checkout": str(checkout), "commit": describe(checkout),
                          "index": i, "windows": rows, "idle": quiet, "ir_per_op": statistics.median(per),
                          "ir_per_op_range": [min(per), max(per)]}
                misses = [ll_misses(r["events"]) for r in rows]
                if all(m is not None for m in misses):
                    result["ll_misses_per_op"] = statistics.median(m / r["ops"] for m, r in zip(misses, rows))
                results.append(result)
                seconds = ", ".join(f"{r['seconds']:.1f}" for r in rows)
                log(f"  {result['ir_per_op']:,.0f} Ir per {UNITS[scenario][1]} "
                    f"(windows: {', '.join(f'{p:,.0f}' for p in per)}, of {seconds} s; "
                    f"idle: {quiet['ir_per_second']:,.0f} Ir/s)"
                    + (f"; {result['ll_misses_per_op']:.2f} LL misses" if "ll_misses_per_op" in result else ""))
    return results


def table(results: list[dict[str, Any]]) -> str:
    ref = {(r["scenario"], r["n"]): r for r in results if r["index"] == 0}
    cache = all("ll_misses_per_op" in r for r in results)
    lines = ["| scenario | point | checkout | Ir per op (median) | windows' range | vs first |"
             + (" LL misses per op | vs first |" if cache else ""),
             "|---|---|---|---:|---:|---:|" + ("---:|---:|" if cache else "")]
    for r in results:
        what, op = UNITS[r["scenario"]]
        first = ref[(r["scenario"], r["n"])]
        lo, hi = r["ir_per_op_range"]
        line = (f"| {r['scenario']} | {r['n']} {what} | {r['commit']} | {r['ir_per_op']:,.0f} per {op} | "
                f"{lo:,.0f}-{hi:,.0f} | {r['ir_per_op'] / first['ir_per_op']:.3f} |")
        if cache:
            line += f" {r['ll_misses_per_op']:.2f} | {r['ll_misses_per_op'] / first['ll_misses_per_op']:.3f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench callgrind", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="*", type=_checkout,
                   help="checkouts of wsrelay, each built with `make build` (default: this one); the first is "
                        "the reference of the ratios")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"any of {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--conns", type=parse_ints, default=[1, 50], help="echo: connections (default 1,50)")
    p.add_argument("--messages", type=int, default=2000, help="echo: messages a window (default 2000)")
    p.add_argument("--subscribers", type=parse_ints, default=[1000],
                   help="broadcast: subscribers (default 1000)")
    p.add_argument("--broadcasts", type=int, default=100, help="broadcast: publisher messages a window (default 100)")
    p.add_argument("--handshakes", type=int, default=300, help="handshake: connections a window (default 300)")
    p.add_argument("--warmup", type=int, default=200,
                   help="messages (handshake: connections) before the first window (default 200)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="windows a point (default 3)")
    p.add_argument("--idle", type=float, default=2.0,
                   help="seconds of a last window with nothing sent, connections open: what a window's seconds "
                        "add to its count (default 2)")
    p.add_argument("--cache-sim", action="store_true",
                   help="callgrind's cache simulation too: last-level misses per op beside the instructions "
                        "(several times slower)")
    p.add_argument("--out", type=pathlib.Path,
                   help="directory of the dumps and results.json (default bench/results/callgrind-<time>)")
    args = p.parse_args(argv)
    scenarios = chosen(p, [s for s in args.scenarios.split(",") if s], SCENARIOS)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed")
    args.checkouts = args.checkouts or [ROOT]
    args.out = (args.out or ROOT / "bench" / "results" / time.strftime("callgrind-%Y%m%d-%H%M%S")).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(args, scenarios)
    record = {"argv": sys.argv, "cwd": os.getcwd(), "results": results}
    (args.out / "results.json").write_text(json.dumps(record, indent=2))
    print(table(results))
    log(f"dumps and results.json in {args.out}; e.g. callgrind_annotate {args.out}/callgrind.<label>.<pid>.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
