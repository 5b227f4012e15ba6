"""``python -m bench SCENARIO [options]``; see docs/performance.md.

Scenarios: echo, broadcast, connections, churn (load, against wsrelay and its
peers), all (the four in a row), setup (npm ci for the Node peer), report
(rebuild the Markdown and plots of a results.json), runtime (the
process-runtime microbenchmark, bench/runtime.py), cluster (WSRELAY_WORKERS
against the single process, bench/cluster.py: ``python -m bench cluster -h``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import runpy
import subprocess
import sys
from typing import Any, Optional, Sequence

from . import report
from .servers import DEFAULT_SERVERS, NODE_DIR, ROOT, SERVERS, add_baseline

LOAD_SCENARIOS = ("echo", "broadcast", "connections", "churn")
RESULTS = ROOT / "bench" / "results"

DEFAULTS: dict[str, dict[str, Any]] = {
    # full run                                   # --quick
    "echo": {"conns": [1, 10, 100, 1000, 10000], "sizes": [64, 1024, 16384, 65536]},
    "echo_quick": {"conns": [1, 100, 1000], "sizes": [64, 4096]},
    "broadcast": {"conns": [1000, 5000, 15000]},
    "broadcast_quick": {"conns": [1000, 5000]},
    "connections": {"conns": [1000, 5000, 15000]},
    "connections_quick": {"conns": [1000, 5000]},
    "churn": {"cycles": 100_000},
    "churn_quick": {"cycles": 5_000},
}


def _ints(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1
        for suffix, m in (("kib", 1024), ("k", 1000), ("b", 1)):
            if part.endswith(suffix):
                part, mult = part[: -len(suffix)], m
                break
        out.append(int(float(part) * mult))
    if not out:
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers")
    return out


def _servers(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=(*LOAD_SCENARIOS, "all", "setup", "report", "runtime", "cluster"))
    p.add_argument("path", nargs="?", help="report: the results.json to render")
    g = p.add_argument_group("all load scenarios")
    g.add_argument("--servers", type=_servers, default=list(DEFAULT_SERVERS),
                   help=f"comma-separated subset of {','.join(SERVERS)} (default: {','.join(DEFAULT_SERVERS)}; "
                        "the +deflate variants run with permessage-deflate on)")
    g.add_argument("--quick", action="store_true",
                   help="small sizes and short windows: a check that everything works, not a measurement")
    g.add_argument("--procs", type=int, default=2, help="load generator processes (default 2)")
    g.add_argument("--duration", type=float, help="seconds of the measurement window (default 5, quick 2)")
    g.add_argument("--warmup", type=float, help="seconds of load before the window (default 1, quick 0.5)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds before a connect or reply counts as lost")
    g.add_argument("--source-ips", type=int, default=32,
                   help="loopback source addresses 127.0.0.x the clients bind to (default 32)")
    g.add_argument("--connect-concurrency", type=int, default=64,
                   help="handshakes in progress at once per load generator process (default 64)")
    g.add_argument("--text", dest="binary", action="store_false", help="text messages (default binary)")
    g.add_argument("--binary", dest="binary", action="store_true", help="binary messages (the default)")
    g.add_argument("--out", type=pathlib.Path, help="results directory (default bench/results/<scenario>-<time>)")
    g.add_argument("--profile", action="store_true",
                   help="record a py-spy flame graph (SVG) of the wsrelay server in each measurement window; "
                        "the profiler perturbs that run's numbers")
    g.add_argument("--repeat", type=int, default=1,
                   help="measure every (point, server) this many times, servers interleaved, and report medians "
                        "(use 3 on a shared machine)")
    g.add_argument("--images", type=pathlib.Path, help="also copy the PNG plots to this directory (e.g. docs/img)")
    g.add_argument("--baseline", type=pathlib.Path,
                   help="another checkout of wsrelay, built there with `make build`, run beside this one as "
                        "'wsrelay@base': before/after figures from the same run")
    g = p.add_argument_group("echo, broadcast, connections")
    g.add_argument("--conns", type=_ints, help="connection / subscriber counts, e.g. 1,10,100,1k,10k")
    g.add_argument("--sizes", "--size", dest="sizes", type=_ints, help="message sizes in bytes, e.g. 64,1KiB,64KiB")
    g.add_argument("--inflight", type=int,
                   help="echo: messages in flight per connection (default 1); "
                        "broadcast: messages in flight (not yet received by every subscriber) (default 4)")
    g = p.add_argument_group("churn")
    g.add_argument("--cycles", type=_ints, help="connect/message/close cycles (default 100k, quick 5k)")
    g.add_argument("--concurrency", type=int, default=32, help="cycles in progress at once, in total (default 32)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "runtime":
        return _runtime(argv[1:])
    if argv and argv[0] == "cluster":
        from .cluster import main as cluster_main

        return cluster_main(argv[1:])
    args = parser().parse_args(argv)
    if args.scenario == "setup":
        return setup()
    if args.scenario == "report":
        if not args.path:
            print("python -m bench report PATH/results.json", file=sys.stderr)
            return 2
        path = pathlib.Path(args.path)
        data = json.loads(path.read_text())
        report.write(data, path.parent, args.images)
        print(path.parent / "results.md")
        return 0
    return run_load(args)


def _runtime(rest: list[str]) -> int:
    """``runtime`` is bench/runtime.py's (the process-runtime microbenchmark)."""
    if not (ROOT / "bench" / "runtime.py").exists():
        print("python -m bench runtime: bench/runtime.py (the process-runtime microbenchmark) is not there yet",
              file=sys.stderr)
        return 2
    sys.argv = ["python -m bench runtime", *rest]
    try:
        runpy.run_module("bench.runtime", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def setup() -> int:
    """Install the Node peer's dependencies from the committed lock file."""
    lock = NODE_DIR / "package-lock.json"
    cmd = ["npm", "ci" if lock.exists() else "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)]
    print("$ " + " ".join(cmd), file=sys.stderr)
    try:
        return subprocess.call(cmd)
    except FileNotFoundError:
        print("npm is not installed: the node peer will be skipped", file=sys.stderr)
        return 1


def run_load(args: argparse.Namespace) -> int:
    from .scenarios import Options, Runner

    quick = args.quick
    scenarios = LOAD_SCENARIOS if args.scenario == "all" else (args.scenario,)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"{args.scenario}{'-quick' if quick else ''}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    if args.baseline is not None:
        args.servers = [*args.servers, add_baseline(args.baseline)]
    if "node" in args.servers and SERVERS["node"].unavailable():
        setup()
    opts = Options(
        servers=args.servers, procs=max(1, args.procs),
        duration=args.duration if args.duration is not None else (2.0 if quick else 5.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        timeout=args.timeout, source_ips=args.source_ips, out=out, binary=args.binary,
        connect_concurrency=args.connect_concurrency, profile=args.profile, repeat=max(1, args.repeat),
    )
    runner = Runner(opts)
    data: dict[str, Any] = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": report.machine(),
        "options": {"quick": quick, "procs": opts.procs, "duration_s": opts.duration, "warmup_s": opts.warmup,
                    "source_ips": opts.source_ips, "binary": opts.binary, "servers": opts.servers,
                    "connect_concurrency": opts.connect_concurrency, "repeat": opts.repeat},
        "servers": {name: SERVERS[name].description for name in opts.servers},
        "wsrelay_env": {k: v for k, v in os.environ.items() if k.startswith("WSRELAY_")},
        "rows": [],
    }
    results_json = out / "results.json"

    def save() -> None:
        data["checks"] = runner.checks
        data["targets"] = report.targets(data["rows"])
        results_json.write_text(json.dumps(data, indent=1, default=str))
        report.write(data, out, args.images)

    suffix = "_quick" if quick else ""
    try:
        for scenario in scenarios:
            d = DEFAULTS.get(scenario + suffix, DEFAULTS.get(scenario, {}))
            if scenario == "echo":
                rows = runner.echo(args.conns or d["conns"], args.sizes or d["sizes"], args.inflight or 1)
            elif scenario == "broadcast":
                size = (args.sizes or [64])[0]
                rows = runner.broadcast(args.conns or d["conns"], size, args.inflight or 4)
            elif scenario == "connections":
                rows = runner.connections(args.conns or d["conns"])
            else:
                size = (args.sizes or [64])[0]
                rows = runner.churn((args.cycles or [d["cycles"]])[0], args.concurrency, size)
            data["rows"].extend(rows)
            save()
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    finally:
        data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        save()
    print((out / "results.md").read_text())
    print(f"results: {results_json} and {out / 'results.md'}", file=sys.stderr)
    failed = [r for r in data["rows"] if r.get("failed") or r.get("check")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
