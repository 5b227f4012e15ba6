"""The load scenarios: each point (a configuration) is measured against every
selected server in turn, each server a fresh OS process, so that the ratios
between servers come from the same minutes of the same machine.

A point's row holds what the load generator saw (rates, latency
percentiles, errors) and what the server cost (CPU user+sys over the
measurement window, RSS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import pathlib
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from .common import log, ms, per, split, status_rate, sum_errors
from .loadgen import LoadGen, LoadGenError, latencies, now_ns, percentile, source_ips
from .servers import SERVERS, RunningServer, ServerError, ServerSpec

Profile = tuple[subprocess.Popen[bytes], pathlib.Path]


@dataclasses.dataclass
class Options:
    servers: list[str]
    procs: int
    duration: float
    warmup: float
    timeout: float
    source_ips: int
    out: pathlib.Path
    binary: bool = True
    inflight: int = 1
    connect_concurrency: int = 64
    profile: bool = False
    quiet: bool = False
    repeat: int = 1
    side_by_side: bool = False


class CpuSampler:
    """Server (and load generator) CPU time at the two ends of a window."""

    def __init__(self, server: RunningServer, lg: LoadGen) -> None:
        self.server = server
        self.lg = lg

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.s0 = self.server.cpu_seconds()
        self.c0 = self.lg.cpu_seconds()

    def stop(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        server = self.server.cpu_seconds() - self.s0
        client = self.lg.cpu_seconds() - self.c0
        return {"window_s": elapsed, "server_cpu_s": server, "client_cpu_s": client,
                "server_cpu_pct": 100.0 * server / elapsed if elapsed else 0.0,
                "client_cpu_pct": 100.0 * client / elapsed if elapsed else 0.0}


@dataclasses.dataclass
class PhaseCost:
    """What one timed phase of the load generator cost: every worker's
    report of it, server and load generator CPU seconds, and the seconds
    from the first worker's start to the last one's end."""

    done: dict[int, dict[str, Any]]
    server_cpu: float
    client_cpu: float
    elapsed: float

    def handshakes(self, n: int, lat: Any) -> dict[str, Any]:
        """The figures of ``n`` handshakes made in this phase (latencies ``lat``)."""
        return {
            "handshakes_per_s": n / self.elapsed if self.elapsed > 0 else None,
            "hs_p50_ms": ms(percentile(lat, 50)),
            "hs_p99_ms": ms(percentile(lat, 99)),
            "cpu_us_per_handshake": per(self.server_cpu, n, 1e6),
            "client_cpu_us_per_handshake": per(self.client_cpu, n, 1e6),
            "server_cpu_pct": 100.0 * self.server_cpu / self.elapsed if self.elapsed > 0 else None,
            "client_cpu_pct": 100.0 * self.client_cpu / self.elapsed if self.elapsed > 0 else None,
        }


@dataclasses.dataclass
class IdleTimes:
    """Seconds of the steps of ``Runner.hold_idle``: to connect them all, to
    let the server settle with them open, to check a sample, to close."""

    connect: float
    settle: float
    check: float
    close: float


@dataclasses.dataclass
class IdleRun:
    """What ``Runner.hold_idle`` saw."""

    problems: list[str]
    before: Any
    open: Any
    cost: PhaseCost
    n: int
    checked: dict[int, dict[str, Any]]
    results: list[dict[str, Any]]


class Runner:
    """The load scenarios against the servers of ``opts.servers``; each
    ``measure_*`` method measures one point against one server."""

    # Seconds a broadcast's subscribers may take to connect, beyond 1 s per 50.
    BROADCAST_CONNECT_S = 60

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.ips = source_ips(opts.source_ips)
        self.logs = opts.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.checks: dict[str, list[str]] = {}

    # -- shared steps ------------------------------------------------------------------------

    def specs(self) -> list[ServerSpec]:
        specs = []
        for name in self.opts.servers:
            spec = SERVERS[name]
            why = spec.unavailable()
            if why:
                log(f"skipping {name}: {why}")
                continue
            specs.append(spec)
        return specs

    def procs_for(self, conns: int) -> int:
        """Load generator processes so that none holds more connections than
        its open-file limit allows (``--procs`` at least)."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200
        need = -(-conns // max(1, limit))
        if need > self.opts.procs:
            log(f"note: {conns} connections need at least {need} load generator processes "
                f"(open-file limit {limit + 200} per process): using --procs {need}")
        return max(self.opts.procs, need)

    def broadcast_procs(self, subscribers: int) -> int:
        """Load generator processes of a broadcast: the subscribers and the publisher."""
        return self.procs_for(subscribers + 1)

    def base_params(self, server: RunningServer, op: str, **extra: Any) -> dict[str, Any]:
        params = {"op": op, "url": server.url, "paths": server.spec.paths, "source_ips": self.ips,
                  "timeout": self.opts.timeout, "connect_concurrency": self.opts.connect_concurrency,
                  "binary": self.opts.binary, "compression": server.spec.compression}
        params.update(extra)
        return params

    def start(self, spec: ServerSpec, tag: str) -> RunningServer:
        return RunningServer(spec, self.logs / f"{spec.name}-{tag}.log", env=spec.env)

    def check(self, server: RunningServer, broadcast: bool) -> list[str]:
        """Run the correctness check of bench.loadgen (exact echo, fan-out)."""
        lg = LoadGen(1, self.base_params(server, "check", broadcast=broadcast), f"check {server.spec.name}")
        try:
            result = lg.wait_results(self.opts.timeout * 6 + 30)[0]
            problems = list(result.get("problems", []))
            problems += [f"{k}: {v}" for k, v in result.get("errors", {}).items()]
        except LoadGenError as exc:
            problems = [str(exc).splitlines()[0]]
        finally:
            lg.close()
        if problems:
            log(f"CHECK FAILED for {server.spec.name}: " + "; ".join(problems))
        self.checks[server.spec.name] = problems
        return problems

    def profiled_pid(self, server: RunningServer) -> Optional[int]:
        """The process --profile records: the wsrelay server's (no peer's)."""
        return server.pid if server.spec.name == "wsrelay" else None

    def profiler(self, server: RunningServer, tag: str) -> Optional[Profile]:
        """With --profile, start py-spy on ``profiled_pid``; stop it with
        ``stop_profiler``."""
        pid = self.profiled_pid(server) if self.opts.profile else None
        if pid is None:
            return None
        exe = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
        if not pathlib.Path(exe).exists():
            log("--profile: py-spy is not installed (pip install py-spy into .venv)")
            return None
        out = self.opts.out / f"profile-{server.spec.name}-{tag}.svg"
        log(f"profiling {server.spec.name} (pid {pid}) into {out}")
        proc = subprocess.Popen([exe, "record", "--native", "-p", str(pid), "-o", str(out), "-r", "200"],
                                stdout=subprocess.DEVNULL, stderr=open(self.logs / f"py-spy-{tag}.log", "wb"))
        return proc, out

    def stop_profiler(self, prof: Optional[Profile]) -> None:
        if prof is None:
            return
        proc, svg = prof
        proc.send_signal(signal.SIGINT)  # py-spy writes the flame graph when interrupted
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if svg.exists():
            svg.with_suffix(".top.txt").write_text(flamegraph_top(svg))

    def window_opened(self, server: RunningServer) -> Any:
        """What a scenario reads of the server as the window opens (for
        ``window_closed``); nothing here."""
        return None

    def window_closed(self, server: RunningServer, opened: Any, cpu: dict[str, Any]) -> dict[str, Any]:
        """Figures of the window beyond CPU and RSS; none here."""
        return {}

    def measured(self, lg: LoadGen, server: RunningServer, tag: str, warmup: float = 0.0) -> dict[str, Any]:
        """Send ``go`` with the window (after ``warmup`` seconds, at least the
        option's), sample CPU at both of its ends."""
        opts = self.opts
        t_measure = now_ns() + int(max(opts.warmup, warmup) * 1e9)
        t_end = t_measure + int(opts.duration * 1e9)
        lg.send_all("go", t_measure=t_measure, t_end=t_end)
        sampler = CpuSampler(server, lg)
        lg.wait_until(t_measure)
        opened = self.window_opened(server)
        sampler.start()
        prof = self.profiler(server, tag)
        lg.wait_until(t_end)
        cpu = sampler.stop()
        extra = self.window_closed(server, opened, cpu)
        cpu["server_rss_mib"] = server.rss() / 2**20
        self.stop_profiler(prof)
        cpu.update(extra)
        return cpu

    def phase_cost(self, lg: LoadGen, server: RunningServer, phase: str, timeout: float,
                   tag: Optional[str] = None, begin: Callable[[], None] = lambda: None) -> PhaseCost:
        """CPU from ``begin()`` until every worker reports ``phase`` (each
        with its ``t0`` and ``t_done``); profiled when ``tag`` names it."""
        cpu0 = server.cpu_seconds()
        client0 = lg.cpu_seconds()
        prof = self.profiler(server, tag) if tag is not None else None
        begin()
        done = lg.wait_phase(phase, timeout)
        self.stop_profiler(prof)
        server_cpu = server.cpu_seconds() - cpu0
        client_cpu = lg.cpu_seconds() - client0
        t0 = min(d["t0"] for d in done.values())
        t_done = max(d["t_done"] for d in done.values())
        return PhaseCost(done, server_cpu, client_cpu, (t_done - t0) / 1e9)

    def run_points(self, points: list[dict[str, Any]], measure: Callable[[ServerSpec, dict[str, Any]], dict[str, Any]],
                   scenario: str) -> list[dict[str, Any]]:
        """Each point against each server, ``repeat`` times; the servers'
        order rotates from one repetition to the next. A row holds the median
        of its runs."""
        specs = self.specs()
        runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rep in range(self.opts.repeat):
            for pi, point in enumerate(points):
                shift = rep % max(1, len(specs))
                for spec in specs[shift:] + specs[:shift]:
                    label = " ".join(f"{k}={v}" for k, v in point.items())
                    rep_text = f" (run {rep + 1}/{self.opts.repeat})" if self.opts.repeat > 1 else ""
                    log(f"== {scenario} {spec.name} {label}{rep_text}")
                    row: dict[str, Any] = {"scenario": scenario, "server": spec.name, **point}
                    try:
                        row.update(measure(spec, point))
                    except (LoadGenError, ServerError) as exc:
                        row["failed"] = str(exc).splitlines()[0]
                        log(f"FAILED: {row['failed']}")
                    row.setdefault("check", self.checks.get(spec.name, []))
                    runs.setdefault((pi, spec.name), []).append(row)
                    if not self.opts.quiet:
                        log("   " + summary(row))
        return [aggregate(runs[(pi, spec.name)]) for pi in range(len(points)) for spec in specs
                if (pi, spec.name) in runs]

    # -- echo ----------------------------------------------------------------------------------

    def echo(self, conns_list: list[int], sizes: list[int], inflight: int) -> list[dict[str, Any]]:
        points = [{"conns": c, "size": s, "inflight": inflight, "binary": self.opts.binary}
                  for c in conns_list for s in sizes]
        return self.run_points(points, self.measure_echo, "echo")

    def measure_echo(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        opts = self.opts
        conns = point["conns"]
        procs = min(self.procs_for(conns), max(1, conns))
        tag = f"echo-c{conns}-s{point['size']}"
        with self.start(spec, tag) as server:
            problems = self.check(server, broadcast=False)
            parts = split(conns, procs)
            params = self.base_params(server, "echo", size=point["size"], inflight=point["inflight"], drain=5.0)
            with LoadGen(procs, params, f"echo {spec.name} c={conns} {point['size']}B",
                         status_rate("msgs", "msgs"), lambda i, _: {"conns": parts[i]}) as lg:
                connected = lg.wait_phase("connected", 60 + conns / 50)
                n_conns = sum(d["n"] for d in connected.values())
                # The first wave of large messages makes every server fault in
                # its buffers (10k x 64 KiB: about 2 GB); measure after it.
                warm = conns * point["size"] * point["inflight"] / ECHO_WARM_RATE
                cpu = self.measured(lg, server, tag, warm)
                results = lg.wait_results(opts.timeout + 60)
        msgs = sum(r["window_msgs"] for r in results)
        lat = latencies(results)
        errors = sum_errors(results)
        if not msgs and n_conns:
            errors["none_in_window"] = 1  # replies came (or not) only after the window
        return {
            "connected": n_conns,
            "msgs_per_s": msgs / cpu["window_s"],
            "mib_per_s": msgs * point["size"] / cpu["window_s"] / 2**20,
            "wire_bytes_per_msg": per(sum(r.get("window_bytes", 0) for r in results), msgs),
            "p50_ms": ms(percentile(lat, 50)),
            "p99_ms": ms(percentile(lat, 99)),
            "cpu_us_per_msg": per(cpu["server_cpu_s"], msgs, 1e6),
            "messages": msgs,
            "checked": sum(r["counters"].get("checked", 0) for r in results),
            "errors": errors,
            "check": problems,
            "procs": procs,
            **cpu,
        }

    # -- broadcast -----------------------------------------------------------------------------

    def broadcast(self, conns_list: list[int], size: int, window: int) -> list[dict[str, Any]]:
        points = [{"subscribers": c, "size": size, "window": window, "binary": self.opts.binary} for c in conns_list]
        return self.run_points(points, self.measure_broadcast, "broadcast")

    def measure_broadcast(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        opts = self.opts
        subs = point["subscribers"]
        procs = self.broadcast_procs(subs)
        tag = f"broadcast-c{subs}"
        with self.start(spec, tag) as server:
            problems = self.check(server, broadcast=True)
            parts = split(subs, procs)
            params = self.base_params(server, "broadcast", size=point["size"], inflight=point["window"], drain=10.0)
            with LoadGen(procs, params, f"broadcast {spec.name} subs={subs}", status_rate("msgs", "deliveries"),
                         lambda i, _: {"conns": parts[i], "publisher": i == 0}) as lg:
                lg.wait_phase("connected", self.BROADCAST_CONNECT_S + subs / 50)
                lg.send_all("sync")
                lg.wait_phase("synced", 60 + subs / 200)
                cpu = self.measured(lg, server, tag)
                results = lg.wait_results(opts.timeout + 60)
        deliveries = sum(r["window_msgs"] for r in results)
        lat = latencies(results)
        errors = sum_errors(results)
        if not deliveries:
            errors["none_in_window"] = 1
        return {
            "connected": sum(r["conns"] for r in results),
            "deliveries_per_s": deliveries / cpu["window_s"],
            "wire_bytes_per_msg": per(sum(r.get("window_bytes", 0) for r in results), deliveries),
            "p50_ms": ms(percentile(lat, 50)),
            "p99_ms": ms(percentile(lat, 99)),
            "cpu_us_per_delivery": per(cpu["server_cpu_s"], deliveries, 1e6),
            "deliveries": deliveries,
            "published": sum(r.get("published", 0) for r in results),
            "checked": sum(r["counters"].get("checked", 0) for r in results),
            "errors": errors,
            "check": problems,
            "procs": procs,
            **cpu,
        }

    # -- connections ---------------------------------------------------------------------------

    def connections(self, conns_list: list[int]) -> list[dict[str, Any]]:
        if self.opts.side_by_side:
            return self.connections_side_by_side(conns_list)
        return self.run_points([{"conns": c} for c in conns_list], self.measure_connections, "connections")

    def connections_side_by_side(self, conns_list: list[int]) -> list[dict[str, Any]]:
        """``--side-by-side``: the servers run at once and one load
        generator's connections alternate among them (``conns`` to each), so
        that whatever else the machine does in those seconds falls on each
        server alike; each one's CPU is read at the same instants. For CPU
        ratios between servers (two builds, two routes of one) on a shared
        machine, where a server's CPU per handshake moves more from one
        minute to the next than the difference measured; the rates are the
        pair's, paced together, not each server's own."""
        specs = self.specs()
        runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rep in range(self.opts.repeat):
            for pi, conns in enumerate(conns_list):
                rep_text = f" (run {rep + 1}/{self.opts.repeat})" if self.opts.repeat > 1 else ""
                log(f"== connections side by side {', '.join(s.name for s in specs)} conns={conns}{rep_text}")
                try:
                    rows = self.measure_side_by_side(specs, conns)
                except (LoadGenError, ServerError) as exc:
                    failed = str(exc).splitlines()[0]
                    log(f"FAILED: {failed}")
                    rows = [{"failed": failed} for _ in specs]
                first = rows[0].get("cpu_us_per_handshake")
                for spec, row in zip(specs, rows):
                    mine = row.get("cpu_us_per_handshake")
                    # This run's CPU over the first server's, measured in the same seconds.
                    row["cpu_vs_first"] = mine / first if mine and first else None
                    row = {"scenario": "connections", "server": spec.name, "conns": conns, "side_by_side": True, **row}
                    row.setdefault("check", self.checks.get(spec.name, []))
                    runs.setdefault((pi, spec.name), []).append(row)
                    if not self.opts.quiet:
                        log(f"   {spec.name}: " + summary(row))
        out = []
        for pi in range(len(conns_list)):
            for spec in specs:
                if (pi, spec.name) in runs:
                    row = aggregate(runs[(pi, spec.name)])
                    row["cpu_vs_first_runs"] = [r.get("cpu_vs_first") for r in runs[(pi, spec.name)]]
                    out.append(row)
        return out

    def measure_side_by_side(self, specs: list[ServerSpec], conns: int) -> list[dict[str, Any]]:
        k = len(specs)
        procs = self.procs_for(conns * k)
        tag = f"connections-c{conns}"
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(self.start(spec, tag)) for spec in specs]
            problems = [self.check(server, broadcast=False) for server in servers]
            time.sleep(1.0)
            before = [(server.rss(), server.health()) for server in servers]
            parts = split(conns * k, procs)
            params = self.base_params(servers[0], "connections",
                                      targets=[[server.url, server.spec.paths["echo"]] for server in servers])
            with LoadGen(procs, params, f"connections side by side c={conns}", status_rate("connected", "handshakes"),
                         lambda i, _: {"conns": parts[i]}) as lg:
                go(lg)
                cpu0 = [server.cpu_seconds() for server in servers]
                client0 = lg.cpu_seconds()
                done = lg.wait_phase("connected", 60 + conns * k / 20)
                cpu = [server.cpu_seconds() - c for server, c in zip(servers, cpu0)]
                client = lg.cpu_seconds() - client0
                elapsed = (max(d["t_done"] for d in done.values()) - min(d["t0"] for d in done.values())) / 1e9
                lg.wait_until(now_ns() + int(1.5e9))
                opened = [(server.rss(), server.health()) for server in servers]
                lg.send_all("check")
                lg.wait_phase("checked", 60)
                lg.send_all("close")
                results = lg.wait_results(60)
        rows = []
        for i in range(k):
            mine = [r["targets"][i] for r in results]
            n = sum(t["conns"] for t in mine)
            # The load generator's CPU is shared by the servers: each is charged its share.
            cost = PhaseCost(done, cpu[i], client * n / max(1, sum(r["conns"] for r in results)), elapsed)
            (rss_before, health_before), (rss_with, health) = before[i], opened[i]
            rows.append({
                "connected": n,
                **cost.handshakes(n, latencies(mine)),
                "rss_before_mib": rss_before / 2**20,
                "rss_with_mib": rss_with / 2**20,
                "kib_per_conn": per(rss_with - rss_before, n, 1 / 1024),
                "health_before": health_before,
                "health_open": health,
                # The load generator's, not told apart by server: each row shows them all.
                "errors": sum_errors(results),
                "check": problems[i],
                "procs": procs,
            })
        return rows

    def measure_connections(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        conns = point["conns"]
        procs = self.procs_for(conns)
        run = self.hold_idle(spec, conns, "connections", procs, IdleTimes(60 + conns / 20, 1.5, 60, 60),
                             lambda server: (server.rss(), server.health()),
                             lambda server: (server.rss(), server.health()), profile=True)
        (rss_before, health_before), (rss_with, health) = run.before, run.open
        return {
            "connected": run.n,
            **run.cost.handshakes(run.n, latencies(run.results)),
            "rss_before_mib": rss_before / 2**20,
            "rss_with_mib": rss_with / 2**20,
            "kib_per_conn": per(rss_with - rss_before, run.n, 1 / 1024),
            "health_before": health_before,
            "health_open": health,
            "errors": sum_errors(run.results),
            "check": run.problems,
            "procs": procs,
        }

    def hold_idle(self, spec: ServerSpec, conns: int, label: str, procs: int, times: IdleTimes,
                  before: Callable[[Any], Any], with_open: Callable[[Any], Any], profile: bool) -> IdleRun:
        """Open ``conns`` idle connections as fast as the server takes them,
        hold them a while, check that a sample still echoes, close them:
        what ``before`` and ``with_open`` read of the server at both ends."""
        tag = f"{label}-c{conns}"
        with self.start(spec, tag) as server:
            problems = self.check(server, broadcast=False)
            time.sleep(1.0)
            read_before = before(server)
            parts = split(conns, procs)
            with LoadGen(procs, self.base_params(server, "connections"), f"{label} {spec.name} c={conns}",
                         status_rate("connected", "handshakes"), lambda i, _: {"conns": parts[i]}) as lg:
                go(lg)
                cost = self.phase_cost(lg, server, "connected", times.connect, tag if profile else None)
                n = sum(d["n"] for d in cost.done.values())
                lg.wait_until(now_ns() + int(times.settle * 1e9))
                read_open = with_open(server)
                lg.send_all("check")
                checked = lg.wait_phase("checked", times.check)
                lg.send_all("close")
                results = lg.wait_results(times.close)
        return IdleRun(problems, read_before, read_open, cost, n, checked, results)

    # -- churn ---------------------------------------------------------------------------------

    def churn(self, cycles: int, concurrency: int, size: int) -> list[dict[str, Any]]:
        points = [{"cycles": cycles, "concurrency": concurrency, "size": size}]
        return self.run_points(points, self.measure_churn, "churn")

    def measure_churn(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        cycles = point["cycles"]
        procs = self.opts.procs
        warm = max(200, min(5000, cycles // 20))
        conc = split(point["concurrency"], procs)
        tag = f"churn-n{cycles}"
        with self.start(spec, tag) as server:
            problems = self.check(server, broadcast=False)
            rss_cold = server.rss()
            params = self.base_params(server, "churn", size=point["size"])
            with LoadGen(procs, params, f"churn {spec.name}", status_rate("cycles", "cycles"),
                         lambda i, _: {"concurrency": max(1, conc[i])}) as lg:
                for i, n in enumerate(split(warm, procs)):
                    lg.send(i, "warmup", cycles=n)
                lg.wait_phase("warmup_done", 60 + warm / 20)
                lg.wait_until(now_ns() + int(1.5e9))
                rss_before = server.rss()
                health_before = server.health()

                def measure() -> None:
                    for i, n in enumerate(split(cycles, procs)):
                        lg.send(i, "measure", cycles=n)

                cost = self.phase_cost(lg, server, "measure_done", 120 + cycles / 20, tag, measure)
                results = lg.wait_results(60)
            time.sleep(2.0)
            rss_after = server.rss()
            health_after = server.health()
        n = sum(r["cycles"] for r in results)
        lat = latencies(results)
        elapsed = cost.elapsed
        return {
            "completed": n,
            "warmup_cycles": warm,
            "cycles_per_s": n / elapsed if elapsed > 0 else None,
            "cycle_p50_ms": ms(percentile(lat, 50)),
            "cycle_p99_ms": ms(percentile(lat, 99)),
            "cpu_us_per_cycle": per(cost.server_cpu, n, 1e6),
            "client_cpu_us_per_cycle": per(cost.client_cpu, n, 1e6),
            "server_cpu_pct": 100.0 * cost.server_cpu / elapsed if elapsed > 0 else None,
            "client_cpu_pct": 100.0 * cost.client_cpu / elapsed if elapsed > 0 else None,
            "rss_cold_mib": rss_cold / 2**20,
            "rss_before_mib": rss_before / 2**20,
            "rss_after_mib": rss_after / 2**20,
            "rss_growth_pct": 100.0 * (rss_after - rss_before) / rss_before,
            "health_before": health_before,
            "health_after": health_after,
            "errors": sum_errors(results),
            "check": problems,
            "procs": procs,
        }


def go(lg: LoadGen) -> None:
    """Start the workers' connecting in half a second, all at one instant,
    and wait for it."""
    t_go = now_ns() + int(0.5e9)
    lg.send_all("go", t_measure=t_go, t_end=t_go)
    lg.wait_until(t_go)


def flamegraph_top(svg: pathlib.Path, n: int = 40) -> str:
    """A text digest of a py-spy flame graph: the functions with the most
    samples of their own (self time, line numbers merged), then the frames
    with the most samples including their callees."""
    text = svg.read_text(errors="replace")
    frames = []  # (y, x, w, name)
    for title, y, fx, fw in re.findall(
            r'<g><title>([^<]*)</title><rect [^>]*?y="([\d.]+)"[^>]*?fg:x="(\d+)" fg:w="(\d+)"', text):
        name = re.sub(r" \([\d,]+ samples?, [\d.]+%\)$", "", html.unescape(title).strip())
        frames.append((float(y), int(fx), int(fw), name))
    if not frames:
        return "no frames found\n"
    total = max(f[2] for f in frames)
    by_depth: dict[float, list[tuple[int, int]]] = {}
    for y, x, w, _ in frames:
        by_depth.setdefault(y, []).append((x, w))
    step = min((b - a for a, b in zip(sorted(by_depth), sorted(by_depth)[1:])), default=16.0)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for y, x, w, name in frames:
        children = sum(cw for cx, cw in by_depth.get(y + step, []) if x <= cx < x + w)
        func = re.sub(r":\d+\)$", ")", name)
        own[func] = own.get(func, 0) + w - children
        inclusive[name] = max(inclusive.get(name, 0), w)
    out = [f"{total} samples\n\nself time (the function itself, not its callees):\n"]
    out += [f"{100 * v / total:6.2f}%  {k}\n" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:n]]
    out.append("\nincluding callees:\n")
    out += [f"{100 * v / total:6.2f}%  {k}\n" for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:n]]
    return "".join(out)


MAIN_METRIC = {"echo": "msgs_per_s", "broadcast": "deliveries_per_s", "connections": "handshakes_per_s",
               "churn": "cycles_per_s"}
# The server CPU figure of each scenario, also kept run by run (``runs_cpu``):
# servers are interleaved, so run i of two servers are neighbours in time,
# and their ratio is less exposed to the machine's load than the medians'.
CPU_METRIC = {"echo": "cpu_us_per_msg", "broadcast": "cpu_us_per_delivery", "connections": "cpu_us_per_handshake",
              "churn": "cpu_us_per_cycle"}


# Bytes in flight per second of warm-up an echo point gets at least.
ECHO_WARM_RATE = 64 << 20

POINT_KEYS = {"conns", "size", "inflight", "binary", "subscribers", "window", "cycles", "concurrency", "procs"}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the runs of a (point, server): the median of each number,
    errors summed, the main metric of every run kept in ``runs``."""
    if len(runs) == 1:
        return runs[0]
    ok = [r for r in runs if not r.get("failed")]
    if not ok:
        return runs[-1]
    out = dict(ok[len(ok) // 2])
    for key, value in ok[0].items():
        if key in POINT_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        if values:
            median = statistics.median(values)
            out[key] = int(round(median)) if all(isinstance(v, int) for v in values) else median
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
        if r.get("failed"):
            errors["failed_runs"] = errors.get("failed_runs", 0) + 1
    out["errors"] = errors
    out["check"] = sorted({c for r in runs for c in r.get("check", [])})
    metric = MAIN_METRIC[out["scenario"]]
    out["runs"] = [r.get(metric) for r in runs]
    out["runs_cpu"] = [r.get(CPU_METRIC[out["scenario"]]) for r in runs]
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def summary(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"FAILED: {row['failed']}"
    keys = {
        "echo": ("msgs_per_s", "p50_ms", "p99_ms", "cpu_us_per_msg", "server_cpu_pct", "client_cpu_pct"),
        "broadcast": ("deliveries_per_s", "p50_ms", "p99_ms", "cpu_us_per_delivery", "server_cpu_pct",
                      "client_cpu_pct"),
        "connections": ("connected", "handshakes_per_s", "cpu_us_per_handshake", "client_cpu_us_per_handshake",
                        "server_cpu_pct", "client_cpu_pct", "kib_per_conn"),
        "churn": ("completed", "cycles_per_s", "cpu_us_per_cycle", "client_cpu_us_per_cycle", "server_cpu_pct",
                  "client_cpu_pct", "rss_before_mib", "rss_after_mib", "rss_growth_pct"),
    }[row["scenario"]]
    parts = [f"{k}={_fmt(row.get(k), 2)}" for k in keys]
    errors = row.get("errors") or {}
    parts.append("errors=" + (", ".join(f"{k}={v}" for k, v in errors.items()) if errors else "0"))
    if row.get("check"):
        parts.append("CHECK FAILED")
    return " ".join(parts)
