"""``python -m bench SCENARIO [options]``; see docs/performance.md.

Scenarios: echo, broadcast, connections, churn (load, against wsrelay and its
peers), all (the four in a row), setup (npm ci for the Node peer), report
(rebuild the Markdown and plots of a results.json), runtime (the
process-runtime microbenchmark, bench/runtime.py), cluster (WSRELAY_WORKERS
against the single process, bench/cluster.py: ``python -m bench cluster -h``),
publish (a publisher process to a room of subscribers, wsrelay channels
against Django Channels and python-socketio, bench/publish.py:
``python -m bench publish -h``), presence (what presence costs,
bench/presence.py: ``python -m bench presence -h``), history (what history
costs, and a mass reconnect against Socket.IO's connection state recovery,
bench/history.py: ``python -m bench history -h``), callgrind (the server's
instructions per relay echo, broadcast delivery and handshake, checkouts
side by side, bench/callgrind.py: ``python -m bench callgrind -h``).
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
from typing import Any, Callable, Optional, Sequence

from . import callgrind, cluster, history, presence, publish, report
from .cluster import OWN_VARIABLES, ClusterRunner, hop, server_spec
from .common import log, parse_ints
from .procfs import kernel_state, loadavg
from .scenarios import Options, Runner
from .servers import DEFAULT_SERVERS, NODE_DIR, ROOT, SERVERS, add_baseline

LOAD_SCENARIOS = ("echo", "broadcast", "connections", "churn")
RESULTS = ROOT / "bench" / "results"
Rows = list[dict[str, Any]]

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

CLUSTER_DEFAULTS: dict[str, dict[str, Any]] = {
    # full run                                   # --quick
    "idle": {"conns": [15_000, 100_000]},
    "idle_quick": {"conns": [2_000, 10_000]},
    "echo": {"points": [(50, 4, 256), (1000, 1, 64)]},
    "echo_quick": {"points": [(50, 4, 256)]},
    "handshakes": {"conns": [10_000]},
    "handshakes_quick": {"conns": [2_000]},
    "hop": {"messages": 200_000, "round_trips": 2000, "repeat": 3},
    "hop_quick": {"messages": 20_000, "round_trips": 300, "repeat": 1},
    "broadcast": {"subscribers": 60_000, "baseline": 15_000},
    "broadcast_quick": {"subscribers": 8_000, "baseline": 2_000},
}

PUBLISH_DEFAULTS: dict[str, dict[str, Any]] = {
    # full run                                   # --quick
    "publish": {"subscribers": [1_000, 15_000]},
    "publish_quick": {"subscribers": [200, 1_000]},
}


# -- command lines -------------------------------------------------------------------------------


def _servers(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    return names


def _points(text: str) -> list[tuple[int, int, int]]:
    """``CONNSxINFLIGHTxSIZE[,...]``, e.g. ``50x4x256,1000x1x64``."""
    out = []
    for part in text.split(","):
        try:
            conns, inflight, size = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: expected CONNSxINFLIGHTxSIZE, e.g. 50x4x256") from None
        out.append((conns, inflight, size))
    return out


def _quick_and_procs(add: Callable[..., Any], procs_help: str) -> None:
    """``--quick`` and ``--procs``, first in both command lines."""
    add("--quick", action="store_true",
        help="small sizes and short windows: a check that everything works, not a measurement")
    add("--procs", type=int, default=2, help=procs_help)


def _client_options(add: Callable[..., Any]) -> None:
    """The load generator's options, the same in both command lines."""
    add("--duration", type=float, help="seconds of the measurement window (default 5, quick 2)")
    add("--warmup", type=float, help="seconds of load before the window (default 1, quick 0.5)")
    add("--timeout", type=float, default=10.0, help="seconds before a connect or reply counts as lost")
    add("--source-ips", type=int, default=32,
        help="loopback source addresses 127.0.0.x the clients bind to (default 32)")
    add("--connect-concurrency", type=int, default=64,
        help="handshakes in progress at once per load generator process (default 64)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=(*LOAD_SCENARIOS, "all", "setup", "report", "runtime", "cluster", "publish",
                                        "presence", "history", "callgrind"))
    p.add_argument("path", nargs="?", help="report: the results.json to render")
    g = p.add_argument_group("all load scenarios")
    g.add_argument("--servers", type=_servers, default=list(DEFAULT_SERVERS),
                   help=f"comma-separated subset of {','.join(SERVERS)} (default: {','.join(DEFAULT_SERVERS)}; "
                        "the +deflate variants run with permessage-deflate on)")
    _quick_and_procs(g.add_argument, "load generator processes (default 2)")
    _client_options(g.add_argument)
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
    g.add_argument("--conns", type=parse_ints, help="connection / subscriber counts, e.g. 1,10,100,1k,10k")
    g.add_argument("--sizes", "--size", dest="sizes", type=parse_ints,
                   help="message sizes in bytes, e.g. 64,1KiB,64KiB")
    g.add_argument("--inflight", type=int,
                   help="echo: messages in flight per connection (default 1); "
                        "broadcast: messages in flight (not yet received by every subscriber) (default 4)")
    g.add_argument("--side-by-side", action="store_true",
                   help="connections: the servers run at once, the load generator's connections alternating "
                        "among them (--conns to each), each server's CPU read at the same instants: CPU ratios "
                        "that what else the machine does falls on alike (rates are then the pair's)")
    g = p.add_argument_group("churn")
    g.add_argument("--cycles", type=parse_ints, help="connect/message/close cycles (default 100k, quick 5k)")
    g.add_argument("--concurrency", type=int, default=32, help="cycles in progress at once, in total (default 32)")
    return p


def cluster_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench cluster", description=cluster.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"any of {', '.join(cluster.SCENARIOS)}, or all (the default)")
    g = p.add_argument_group("all scenarios")
    _quick_and_procs(g.add_argument, "load generator processes at least (default 2)")
    g.add_argument("--per-proc", type=int, default=18_000,
                   help="at most this many sockets per load generator process (default 18000; the hard "
                        "open-file limit here is 20000)")
    _client_options(g.add_argument)
    g.add_argument("--repeat", type=int, default=1,
                   help="echo, handshakes, idle, broadcast: runs per (point, server), servers interleaved; medians")
    g.add_argument("--out", type=pathlib.Path, help="results directory (default bench/results/cluster-<time>)")
    g.add_argument("--images", type=pathlib.Path, help="also copy the PNG plots to this directory (e.g. docs/img)")
    g.add_argument("--profile", action="store_true",
                   help="echo, handshakes: a py-spy flame graph (SVG and a .top.txt digest) of the single process "
                        "and of worker 0 in each measurement; perturbs that run's numbers")
    g = p.add_argument_group("idle")
    g.add_argument("--workers", type=int, default=6, help="WSRELAY_WORKERS of the idle scenario (default 6)")
    g.add_argument("--conns", type=parse_ints, help="idle connection counts (default 15k,100k; quick 2k,10k)")
    g = p.add_argument_group("echo, handshakes")
    g.add_argument("--pair-workers", type=parse_ints, default=[2],
                   help="WSRELAY_WORKERS against one process, e.g. 1,2 for both (default 2)")
    g.add_argument("--echo", type=_points, help="echo points CONNSxINFLIGHTxSIZE (default 50x4x256,1000x1x64)")
    g.add_argument("--handshake-conns", type=parse_ints, help="handshakes: connections (default 10k, quick 2k)")
    g = p.add_argument_group("hop")
    g.add_argument("--hop-messages", type=int, help="one-way messages (default 200k, quick 20k)")
    g.add_argument("--hop-round-trips", type=int, help="round trips (default 2000, quick 300)")
    g.add_argument("--hop-repeat", type=int, help="runs, best kept (default 3, quick 1)")
    g.add_argument("--hop-size", type=int, default=256, help="bytes per one-way message (default 256)")
    g = p.add_argument_group("broadcast")
    g.add_argument("--broadcast-workers", type=int, default=4, help="WSRELAY_WORKERS (default 4)")
    g.add_argument("--subscribers", type=parse_ints, help="subscribers over the workers (default 60k, quick 8k)")
    g.add_argument("--baseline-subscribers", type=parse_ints, help="subscribers of the single process (default 15k)")
    return p


def _peers(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in publish.SIDE_BY_SIDE]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; known: {', '.join(publish.SIDE_BY_SIDE)}")
    return names


def publish_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench publish", description=publish.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _quick_and_procs(p.add_argument, "load generator processes at least (default 2)")
    _client_options(p.add_argument)
    p.add_argument("--servers", type=_peers, default=list(publish.SIDE_BY_SIDE),
                   help="the servers side by side (default wsrelay,django-channels,python-socketio)")
    p.add_argument("--subscribers", type=parse_ints, help="room sizes (default 1k,15k; quick 200,1k)")
    p.add_argument("--window", type=int, default=4,
                   help="max rate: publications not yet received by every subscriber, at most (default 4)")
    p.add_argument("--rate", type=float,
                   help="steady rate, publications/s (default: half the best incumbent's max rate at that N)")
    p.add_argument("--size", type=int, default=64, help="characters per publication (default 64)")
    p.add_argument("--parts", default=",".join(publish.PARTS),
                   help=f"comma-separated subset of {','.join(publish.PARTS)} (default: all): the servers "
                        "side by side; wsrelay-group at the largest N; wsrelay-w2 at the largest N; the API rate")
    p.add_argument("--api", action="store_true", help="only the API part (--parts api)")
    p.add_argument("--out", type=pathlib.Path, help="results directory (default bench/results/publish-<time>)")
    # One run per row, nothing profiled: the options of the load scenarios this one has not.
    p.set_defaults(profile=False, repeat=1)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "runtime":
        return _runtime(argv[1:])
    if argv and argv[0] == "cluster":
        return run_cluster(argv[1:])
    if argv and argv[0] == "publish":
        return run_publish(argv[1:])
    if argv and argv[0] == "presence":
        return presence.main(argv[1:])
    if argv and argv[0] == "history":
        return history.main(argv[1:])
    if argv and argv[0] == "callgrind":
        return callgrind.main(argv[1:])
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
    """``runtime`` is bench/runtime.py's (the process-runtime microbenchmark),
    run as its own program: importing it registers its process functions."""
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


# -- a run: its options, its results directory, its rows saved as they come -----------------------


def _results_dir(args: argparse.Namespace, name: str) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: pathlib.Path = args.out or RESULTS / f"{name}{'-quick' if args.quick else ''}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _options(args: argparse.Namespace, out: pathlib.Path, servers: list[str], binary: bool) -> Options:
    quick = args.quick
    return Options(
        servers=servers, procs=max(1, args.procs),
        duration=args.duration if args.duration is not None else (2.0 if quick else 5.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        timeout=args.timeout, source_ips=args.source_ips, out=out, binary=binary,
        connect_concurrency=args.connect_concurrency, profile=args.profile, repeat=max(1, args.repeat),
        side_by_side=getattr(args, "side_by_side", False),
    )


def _run_record(command: str, opts: Options, quick: bool) -> dict[str, Any]:
    """The head of results.json: how the run was started, where, with what."""
    return {
        "command": command,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": report.machine(),
        "options": {"quick": quick, "procs": opts.procs, "duration_s": opts.duration, "warmup_s": opts.warmup,
                    "source_ips": opts.source_ips, "binary": opts.binary,
                    "connect_concurrency": opts.connect_concurrency, "repeat": opts.repeat,
                    "side_by_side": opts.side_by_side},
    }


def _record(data: dict[str, Any], runner: Runner, out: pathlib.Path, images: Optional[pathlib.Path],
            steps: list[Callable[[], Rows]], finish: Callable[[], None] = lambda: None) -> None:
    """Run ``steps``, saving results.json and results.md after each (an
    interrupted run keeps what was measured); ``finish`` adds the last
    figures of the run."""
    results_json = out / "results.json"

    def save() -> None:
        data["checks"] = runner.checks
        data["targets"] = report.targets(data)
        results_json.write_text(json.dumps(data, indent=1, default=str))
        report.write(data, out, images)

    try:
        for step in steps:
            data["rows"].extend(step())
            save()
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    finally:
        data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        finish()
        save()
    print((out / "results.md").read_text())
    print(f"results: {results_json} and {out / 'results.md'}", file=sys.stderr)


def _wsrelay_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("WSRELAY_")}


# -- the load scenarios ----------------------------------------------------------------------------


def run_load(args: argparse.Namespace) -> int:
    quick = args.quick
    scenarios = LOAD_SCENARIOS if args.scenario == "all" else (args.scenario,)
    if args.side_by_side and scenarios != ("connections",):
        print("--side-by-side is for the connections scenario only", file=sys.stderr)
        return 2
    out = _results_dir(args, args.scenario)
    if args.baseline is not None:
        args.servers = [*args.servers, add_baseline(args.baseline)]
    if "node" in args.servers and SERVERS["node"].unavailable():
        setup()
    opts = _options(args, out, args.servers, args.binary)
    runner = Runner(opts)
    data = _run_record("python -m bench " + " ".join(sys.argv[1:]), opts, quick)
    data["options"]["servers"] = opts.servers
    data.update(servers={name: SERVERS[name].description for name in opts.servers}, wsrelay_env=_wsrelay_env(),
                rows=[])
    suffix = "_quick" if quick else ""

    def step(scenario: str) -> Callable[[], Rows]:
        d = DEFAULTS.get(scenario + suffix, DEFAULTS.get(scenario, {}))
        if scenario == "echo":
            return lambda: runner.echo(args.conns or d["conns"], args.sizes or d["sizes"], args.inflight or 1)
        if scenario == "broadcast":
            return lambda: runner.broadcast(args.conns or d["conns"], (args.sizes or [64])[0], args.inflight or 4)
        if scenario == "connections":
            return lambda: runner.connections(args.conns or d["conns"])
        return lambda: runner.churn((args.cycles or [d["cycles"]])[0], args.concurrency, (args.sizes or [64])[0])

    _record(data, runner, out, args.images, [step(s) for s in scenarios])
    failed = [r for r in data["rows"] if r.get("failed") or r.get("check")]
    return 1 if failed else 0


# -- the cluster scenarios -------------------------------------------------------------------------


def run_cluster(argv: Sequence[str]) -> int:
    p = cluster_parser()
    args = p.parse_args(list(argv))
    unknown = [s for s in args.scenarios if s not in (*cluster.SCENARIOS, "all")]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(cluster.SCENARIOS)}, all")
    chosen = [s for s in cluster.SCENARIOS if s in args.scenarios or "all" in args.scenarios or not args.scenarios]
    quick = args.quick
    suffix = "_quick" if quick else ""
    for name in OWN_VARIABLES:
        if os.environ.pop(name, None) is not None:
            log(f"note: {name} from the environment is ignored: the cluster bench sets it per server")
    out = _results_dir(args, "cluster")
    opts = _options(args, out, [], True)
    runner = ClusterRunner(opts, max(1000, args.per_proc))
    data = {"suite": "cluster", **_run_record("python -m bench cluster " + " ".join(argv), opts, quick)}
    data["options"].update(per_proc=runner.per_proc, workers=args.workers, pair_workers=args.pair_workers,
                           broadcast_workers=args.broadcast_workers, scenarios=chosen)
    data.update(kernel=kernel_state(), wsrelay_env=_wsrelay_env(), rows=[])
    pair = [server_spec(0)] + [server_spec(w) for w in args.pair_workers if w > 0]

    def d(name: str) -> dict[str, Any]:
        return CLUSTER_DEFAULTS[name + suffix]

    def step(scenario: str) -> Callable[[], Rows]:
        if scenario == "idle":
            return lambda: runner.idle(args.conns or d("idle")["conns"], args.workers)
        if scenario == "echo":
            return lambda: runner.echo_pair(args.echo or d("echo")["points"], pair)
        if scenario == "handshakes":
            return lambda: runner.handshakes(args.handshake_conns or d("handshakes")["conns"], pair)
        if scenario == "hop":
            h = d("hop")
            return lambda: hop(out, args.hop_messages or h["messages"], args.hop_round_trips or h["round_trips"],
                               args.hop_repeat or h["repeat"], args.hop_size)
        b = d("broadcast")
        return lambda: runner.broadcast_over_workers((args.subscribers or [b["subscribers"]])[0],
                                                     (args.baseline_subscribers or [b["baseline"]])[0],
                                                     args.broadcast_workers, 64, 4)

    def finish() -> None:
        data["loadavg_at_end"] = loadavg()

    _record(data, runner, out, args.images, [step(s) for s in chosen], finish)
    failed = [r for r in data["rows"] if r.get("failed") or r.get("check") or r.get("errors")]
    return 1 if failed else 0


# -- the publish scenario --------------------------------------------------------------------------


def run_publish(argv: Sequence[str]) -> int:
    p = publish_parser()
    args = p.parse_args(list(argv))
    parts = ("api",) if args.api else tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = [x for x in parts if x not in publish.PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(publish.PARTS)}")
    for name in ("WSRELAY_WORKERS", "WSRELAY_API_KEY"):
        if os.environ.pop(name, None) is not None:
            log(f"note: {name} from the environment is ignored: the publish bench sets it per server")
    out = _results_dir(args, "publish")
    opts = _options(args, out, args.servers, False)
    runner = publish.PublishRunner(opts)
    counts = args.subscribers or PUBLISH_DEFAULTS["publish_quick" if args.quick else "publish"]["subscribers"]
    data = {"suite": "publish", **_run_record("python -m bench publish " + " ".join(argv), opts, args.quick)}
    data["options"].update(servers=args.servers, subscribers=counts, window=args.window, rate=args.rate,
                           size=args.size, parts=list(parts))
    data.update(servers={name: publish.PEERS[name].description for name in publish.PEERS},
                wsrelay_env=_wsrelay_env(), rows=[])

    steps = publish.steps(runner, counts, args.servers, parts, args.window, args.rate, args.size, data["rows"])
    _record(data, runner, out, None, steps)
    # An incumbent's errors (deliveries it dropped) are a finding of the run, wsrelay's a failure.
    failed = [r for r in data["rows"] if r.get("failed") or (r["server"].startswith("wsrelay") and r.get("errors"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
