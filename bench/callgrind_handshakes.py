"""Instructions per handshake cycle, load-independent: ``python -m
bench.callgrind_handshakes [--paths /ws/echo_lookup,/ws/echo_call]``.

Starts ``wsrelay serve`` of the bench app (bench/servers/wsrelay_app/app.yaml)
under ``valgrind --tool=callgrind --instr-atstart=no``; for each path, a
client makes WARMUP connect + one message + close cycles, one after another,
then callgrind's collection is switched on (``callgrind_control -i on``)
for CYCLES more, off again, and the counts dumped: instructions (Ir) of the
server per cycle, whatever else the machine runs meanwhile (``--handshakes``:
per handshake, CYCLES connections opened and held, one after another or
``--concurrency N`` at a time; ``--cache-sim``: the cycle estimate too). With
``--checkout DIR``, the server is that checkout's (built there with ``make
build``): before and after figures of the same run. ``callgrind_annotate
--inclusive=yes FILE`` shows where they go.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import picows

HERE = pathlib.Path(__file__).resolve().parent


class _Client(picows.WSListener):
    def __init__(self) -> None:
        self.got: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.BINARY and not self.got.done():
            self.got.set_result(frame.get_payload_as_bytes())


async def _cycles(url: str, n: int) -> None:
    for i in range(n):
        transport, client = await picows.ws_connect(_Client, url)
        transport.send(picows.WSMsgType.BINARY, b"ping %d" % i)
        assert await asyncio.wait_for(client.got, 10) == b"ping %d" % i
        transport.disconnect()
        await transport.wait_disconnected()


async def _opens(url: str, n: int, concurrency: int = 1) -> list[Any]:
    """``n`` connections opened, ``concurrency`` at a time (1: one after
    another), and left open."""
    if concurrency <= 1:
        return [(await picows.ws_connect(_Client, url))[0] for _ in range(n)]
    slots = asyncio.Semaphore(concurrency)

    async def one() -> Any:
        async with slots:
            return (await picows.ws_connect(_Client, url))[0]

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _close(transports: list[Any]) -> None:
    for transport in transports:
        transport.disconnect()
        await transport.wait_disconnected()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL)


def _totals(path: pathlib.Path) -> dict[str, int]:
    """The dump's totals by event (Ir; with the cache and branch simulation
    also I1mr, D1mr, ..., Bcm, Bim)."""
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:"):
            return dict(zip(events, map(int, line.split()[1:])))
    raise RuntimeError(f"no totals in {path}")


def cycle_estimate(t: dict[str, int]) -> int:
    """kcachegrind's cycle estimate: an instruction each, 10 for a first-level
    cache miss or a mispredicted branch, 100 for a last-level miss. It tells
    apart work that costs the same instructions and not the same time."""
    l1 = t.get("I1mr", 0) + t.get("D1mr", 0) + t.get("D1mw", 0)
    ll = t.get("ILmr", 0) + t.get("DLmr", 0) + t.get("DLmw", 0)
    return t["Ir"] + 10 * l1 + 100 * ll + 10 * (t.get("Bcm", 0) + t.get("Bim", 0))


def measure(checkout: pathlib.Path, app: pathlib.Path, paths: list[str], warmup: int, cycles: int,
            out: pathlib.Path, handshakes_only: bool = False, concurrency: int = 1,
            cache_sim: bool = False) -> dict[str, dict[str, int]]:
    port = _free_port()
    python = checkout / ".venv" / "bin" / "python"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout), str(app.parent)]))
    base = out / f"callgrind.{checkout.name}"
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", *sim, f"--callgrind-out-file={base}.%p",
            str(python), "-m", "wsrelay", "serve", str(app),
            "--addr", f"127.0.0.1:{port}"]
    log = open(out / f"server.{checkout.name}.log", "w")
    server = subprocess.Popen(argv, cwd=str(checkout), env=env, stdout=log, stderr=subprocess.STDOUT)
    results = {}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server did not start: {out}/server.{checkout.name}.log") from None
                time.sleep(0.5)
        for path in paths:
            url = f"ws://127.0.0.1:{port}{path}?token=t1"
            asyncio.run(_cycles(url, warmup))
            _control(server.pid, "-z")
            _control(server.pid, "-i", "on")
            if handshakes_only:
                # The instructions of the handshakes alone (what `python -m
                # bench connections` measures): the connections are closed
                # once counting is off.
                loop = asyncio.new_event_loop()
                opened = loop.run_until_complete(_opens(url, cycles, concurrency))
                _control(server.pid, "-i", "off")
                loop.run_until_complete(_close(opened))
                loop.close()
            else:
                asyncio.run(_cycles(url, cycles))
                _control(server.pid, "-i", "off")
            name = re.sub(r"\W+", "_", path.strip("/")) + ("-handshakes" if handshakes_only else "")
            _control(server.pid, "--dump=" + name)
            dumps = sorted(out.glob(f"callgrind.{checkout.name}.{server.pid}.*"), key=lambda p: p.stat().st_mtime)
            dump = dumps[-1]
            final = out / f"{checkout.name}.{name}.callgrind"
            dump.rename(final)
            results[path] = {k: v // cycles for k, v in _totals(final).items()}
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.callgrind_handshakes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paths", default="/ws/echo_lookup,/ws/echo_call")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--handshakes", action="store_true",
                   help="count the handshakes alone: CYCLES connections opened one after another and held "
                        "(closed once counting is off), not connect + message + close cycles")
    p.add_argument("--concurrency", type=int, default=1,
                   help="with --handshakes: how many connections are opened at a time (default 1)")
    p.add_argument("--cache-sim", action="store_true",
                   help="simulate the caches and branch prediction too, and report kcachegrind's cycle "
                        "estimate per handshake beside the instructions (slower)")
    p.add_argument("--checkout", type=pathlib.Path, action="append",
                   help="a checkout to measure (repeatable; default this one)")
    p.add_argument("--app", type=pathlib.Path, default=HERE / "servers" / "wsrelay_app" / "app.yaml",
                   help="the application file (default the bench app)")
    p.add_argument("--out", type=pathlib.Path, help="where the callgrind files go (default a new temporary directory)")
    args = p.parse_args(argv)
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="callgrind-handshakes-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = [s for s in args.paths.split(",") if s]
    for checkout in args.checkout or [HERE.parent]:
        results = measure(checkout.resolve(), args.app.resolve(), paths, args.warmup, args.cycles, out,
                          args.handshakes, args.concurrency, args.cache_sim)
        first = results[paths[0]]
        what = "handshake" if args.handshakes else "cycle"
        for path, t in results.items():
            ratio = t["Ir"] / first["Ir"]
            line = f"{checkout}: {path}: {t['Ir'] / 1000:.1f}k instructions per {what} ({ratio:.3f}x {paths[0]})"
            if args.cache_sim:
                est = cycle_estimate(t)
                line += f"; cycle estimate {est / 1000:.1f}k ({est / cycle_estimate(first):.3f}x)"
            print(line)
    print(f"callgrind files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
