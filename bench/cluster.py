"""``python -m bench cluster [SCENARIO ...]``: wsrelay with ``WSRELAY_WORKERS``
against the single process, measured in the same run.

Scenarios (all of them when none is named):

- ``idle``: N idle connections, a process each (the bench app's echo
  endpoint spawns one per connection), over ``WSRELAY_WORKERS=W`` (default
  6); how many are open, handshakes per second, and RSS summed over the
  supervisor, its workers and the private nats-server (the supervisor's
  process tree, walked through /proc) per connection. The single process
  is measured at the points it can hold (one process may hold at most as
  many open files as the hard limit allows).
- ``echo``: the relay echo with ``WSRELAY_WORKERS=2`` against one process,
  same load generator settings; server CPU summed over every process of the
  tree (workers, supervisor, broker).
- ``handshakes``: idle connections opened as fast as the server takes them,
  ``WSRELAY_WORKERS=2`` against one process.
- ``hop``: the cluster transport's node-to-node hop (bench/cluster_transport.py)
  next to the same between two processes of one node.
- ``broadcast``: one publisher, subscribers spread over 4 workers (60k) in one
  room found by its global name (a Group with members on every worker: the
  frame is shipped once per worker), against the single process at 15k.

Results go to bench/results/cluster-<time>/ (results.json, results.md, PNG
plots), as for the other scenarios; docs/performance.md, section "Cluster".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from . import cluster_report, report
from .loadgen import LoadGen, latencies, now_ns, percentile
from .scenarios import Options, Runner, _CpuSampler, _errors, _ms, _status_rate, log, split
from .servers import BENCH, CLK_TCK, PAGE_SIZE, ROOT, SERVERS, RunningServer, ServerError, ServerSpec

SCENARIOS = ("idle", "echo", "handshakes", "hop", "broadcast")
RESULTS = ROOT / "bench" / "results"
SERVING = "wsrelay: serving "
APP = BENCH / "servers" / "wsrelay_app" / "app.yaml"
GLOBAL_APP = BENCH / "servers" / "wsrelay_cluster_app" / "app.yaml"
# The settings the cluster bench chooses itself: not passed on from the caller's environment.
OWN_VARIABLES = ("WSRELAY_WORKERS", "WSRELAY_CLUSTER_URL", "WSRELAY_CLUSTER_TOKEN", "WSRELAY_CLUSTER_CREDS",
                 "WSRELAY_NODE")

DEFAULTS: dict[str, dict[str, Any]] = {
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


# -- the server's process tree -----------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def role(pid: int, root: int) -> str:
    """supervisor, broker, worker I, or server (the single process)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "gone"
    if os.path.basename(argv[0]) == b"nats-server":
        return "broker"
    if b"--worker" in argv:
        i = argv.index(b"--worker")
        return f"worker {argv[i + 1].decode()}" if i + 1 < len(argv) else "worker"
    return "server" if pid == root else f"other ({os.path.basename(argv[0]).decode(errors='replace')})"


def _cpu(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def _pss(pid: int) -> Optional[int]:
    """Proportional set size: shared pages divided among the processes sharing
    them (the interpreter and libraries the workers share count once in all)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _sockets(pid: int) -> int:
    n = 0
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return 0
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                n += 1
        except OSError:
            continue  # closed while we looked
    return n


def _syscalls(pid: int) -> int:
    """Read and write system calls so far (read, recv, write, writev, send...)."""
    n = 0
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith(("syscr:", "syscw:")):
                n += int(line.split()[1])
    return n


def _alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class ClusterServer(RunningServer):
    """``wsrelay serve`` with ``WSRELAY_WORKERS=workers`` (0: the single
    process), ready when the supervisor says it serves (every worker
    listens); CPU time and RSS are summed over its process tree."""

    def __init__(self, spec: ServerSpec, log_path: pathlib.Path, workers: int) -> None:
        self.workers = workers
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.initial: dict[int, str] = {}
        self.lost: list[str] = []
        env = {"WSRELAY_WORKERS": str(workers)} if workers else {}
        super().__init__(spec, log_path, start_timeout=60.0, env=env)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        super()._wait_ready(timeout)
        while self.workers:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                if SERVING.encode() in f.read():
                    break
            if self.proc.poll() is not None:
                raise ServerError(f"{self.spec.name} exited with {self.proc.returncode} at start; see {self.log_path}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.spec.name}: its workers were not all serving within {timeout:.0f}s")
            time.sleep(0.05)
        self.initial = self.processes()
        roles = sorted(self.initial.values())
        workers = [r for r in roles if r.startswith("worker")]
        if self.workers and (len(workers) != self.workers or "broker" not in roles):
            raise ServerError(f"{self.spec.name}: expected {self.workers} workers and a broker, found {roles}")

    def processes(self) -> dict[int, str]:
        root = self.pid
        tree = {}
        for pid in descendants(root):
            r = role(pid, root)
            tree[pid] = r if pid != root or not self.workers else "supervisor"
        return tree

    def cpu_by_process(self) -> dict[int, tuple[str, float]]:
        out = {}
        for pid, r in self.processes().items():
            try:
                out[pid] = (r, _cpu(pid))
            except (OSError, IndexError, ValueError):
                continue  # ended between the walk and the read: counted as lost at stop
        return out

    def cpu_seconds(self) -> float:
        return sum(cpu for _, cpu in self.cpu_by_process().values())

    def rss(self) -> int:
        total = 0
        for pid in self.processes():
            try:
                total += _rss(pid)
            except (OSError, IndexError, ValueError):
                continue  # ended between the walk and the read: counted as lost at stop
        return total

    def syscalls(self) -> int:
        total = 0
        for pid in self.processes():
            try:
                total += _syscalls(pid)
            except (OSError, ValueError):
                continue  # ended between the walk and the read: counted as lost at stop
        return total

    def snapshot(self) -> list[dict[str, Any]]:
        """Per process of the tree: role, RSS, PSS, open sockets, CPU seconds."""
        out = []
        for pid, r in sorted(self.processes().items(), key=lambda kv: kv[1]):
            try:
                out.append({"pid": pid, "role": r, "rss": _rss(pid), "pss": _pss(pid), "sockets": _sockets(pid),
                            "cpu_s": _cpu(pid)})
            except (OSError, IndexError, ValueError):
                continue  # ended between the walk and the read: counted as lost at stop
        return out

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        self.lost = [r for pid, r in self.initial.items() if not _alive(pid)]
        return super().stop(timeout)


_KERNEL_FILES = (
    ("conntrack", "/proc/sys/net/netfilter/nf_conntrack_count"),
    ("conntrack_max", "/proc/sys/net/netfilter/nf_conntrack_max"),
    ("somaxconn", "/proc/sys/net/core/somaxconn"),
    ("tcp_max_syn_backlog", "/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    ("netdev_max_backlog", "/proc/sys/net/core/netdev_max_backlog"),
    ("ip_local_port_range", "/proc/sys/net/ipv4/ip_local_port_range"),
    ("file_nr", "/proc/sys/fs/file-nr"), ("file_max", "/proc/sys/fs/file-max"),
    ("tcp_mem", "/proc/sys/net/ipv4/tcp_mem"),
)


def _proc_lines(path: str) -> list[str]:
    """The lines of a /proc file, none if this kernel has no such file (no
    conntrack module, a container hiding /proc/sys): the report leaves that
    key out rather than fail a benchmark over it."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def kernel_state() -> dict[str, Any]:
    """What the kernel holds and allows, machine-wide: TCP sockets in use,
    conntrack entries, open files, memory available, the limits that matter."""
    out: dict[str, Any] = {}
    for line in _proc_lines("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            out["tcp"] = {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    for key, path in _KERNEL_FILES:
        # these files hold whitespace-separated integers: anything else is a
        # kernel we do not know, and the ValueError says so
        text = " ".join(_proc_lines(path)).split()
        if text:
            out[key] = int(text[0]) if len(text) == 1 else [int(x) for x in text]
    for line in _proc_lines("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            out["mem_available"] = int(line.split()[1]) * 1024
    return out


# -- the runner --------------------------------------------------------------------------------


def server_spec(workers: int, app: pathlib.Path = APP) -> ServerSpec:
    base = SERVERS["wsrelay"]
    name = "wsrelay" if not workers else f"wsrelay-w{workers}"
    what = "one process" if not workers else f"WSRELAY_WORKERS={workers}: a supervisor, {workers} workers, nats-server"
    return ServerSpec(
        name, f"{what}; `wsrelay serve {app.relative_to(ROOT)}`",
        lambda host, port: [sys.executable, "-m", "wsrelay", "serve", str(app), "--addr", f"{host}:{port}"],
        base.paths, health=base.health,
    )


class ClusterRunner(Runner):
    def __init__(self, opts: Options, per_proc: int) -> None:
        super().__init__(opts)
        self.per_proc = per_proc
        self.active: list[ServerSpec] = []
        self.workers_of: dict[str, int] = {}
        self.last_server: Optional[ClusterServer] = None

    def specs(self) -> list[ServerSpec]:
        return self.active

    def start(self, spec: ServerSpec, tag: str) -> RunningServer:
        self.last_server = None
        server = ClusterServer(spec, self.logs / f"{spec.name}-{tag}.log", self.workers_of[spec.name])
        self.last_server = server
        return server

    def run(self, scenario: str, base: str, points: list[dict[str, Any]], servers: list[ServerSpec],
            measure: Callable[[ServerSpec, dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
        """``measure`` each point against ``servers`` (bench.scenarios' loop:
        ``--repeat``, servers interleaved, medians); rows named ``scenario``."""
        self.active = servers
        for s in servers:
            self.workers_of[s.name] = int(s.name.rsplit("-w", 1)[1]) if "-w" in s.name else 0

        def checked(s: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
            row = measure(s, point)
            lost = self.last_server.lost if self.last_server is not None else []
            if lost:
                row.setdefault("errors", {})["server_processes_lost"] = len(lost)
                row["lost"] = lost
            return row

        rows = self._run_points(points, checked, base)
        for row in rows:
            row["scenario"] = scenario
            row["workers"] = self.workers_of[row["server"]]
        return rows

    def profiler(self, server: RunningServer, tag: str) -> Optional[tuple[subprocess.Popen[bytes], pathlib.Path]]:
        """With --profile, py-spy on the single process, or on worker 0."""
        if not self.opts.profile or not isinstance(server, ClusterServer):
            return None
        exe = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
        if not pathlib.Path(exe).exists():
            log("--profile: py-spy is not installed (pip install py-spy into .venv)")
            return None
        pid = next((p for p, r in server.processes().items() if r in ("server", "worker 0")), server.pid)
        out = self.opts.out / f"profile-{server.spec.name}-{tag}.svg"
        log(f"profiling {server.spec.name} (pid {pid}) into {out}")
        proc = subprocess.Popen([exe, "record", "--native", "-p", str(pid), "-o", str(out), "-r", "200"],
                                stdout=subprocess.DEVNULL, stderr=open(self.logs / f"py-spy-{tag}.log", "wb"))
        return proc, out

    def procs_for(self, conns: int) -> int:
        """Load generator processes: none holds more than ``per_proc`` sockets."""
        return max(self.opts.procs, -(-conns // self.per_proc))

    def measured(self, lg: LoadGen, server: RunningServer, tag: str, warmup: float = 0.0) -> dict[str, float]:
        """bench.scenarios' window, plus each process's share of the CPU, its
        open sockets (how the kernel spread the connections), and the system
        calls that read or wrote (how much each one carried)."""
        assert isinstance(server, ClusterServer)
        opts = self.opts
        t_measure = now_ns() + int(max(opts.warmup, warmup) * 1e9)
        t_end = t_measure + int(opts.duration * 1e9)
        lg.send_all("go", t_measure=t_measure, t_end=t_end)
        sampler = _CpuSampler(server, lg)
        lg.wait_until(t_measure)
        per0 = server.cpu_by_process()
        sys0 = server.syscalls()
        sampler.start()
        prof = self.profiler(server, tag)
        lg.wait_until(t_end)
        cpu: dict[str, Any] = sampler.stop()
        cpu["server_syscalls"] = server.syscalls() - sys0
        per1 = server.cpu_by_process()
        self.stop_profiler(prof)
        cpu["server_rss_mib"] = server.rss() / 2**20
        cpu["per_process"] = _per_process(per0, per1, cpu["window_s"])
        return cpu

    # -- idle ---------------------------------------------------------------------------------

    def idle(self, conns_list: list[int], workers: int) -> list[dict[str, Any]]:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        single, many = server_spec(0), server_spec(workers)
        rows = []
        for conns in conns_list:
            servers = [single, many] if conns <= hard - 1000 else [many]
            if single not in servers:
                log(f"idle {conns:,}: beyond one process's {hard:,} open files: the single process is not run")
            rows += self.run("idle", "connections", [{"conns": conns}], servers, self._idle_one)
        return rows

    def _idle_one(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        conns = point["conns"]
        procs = self.procs_for(conns)
        tag = f"idle-c{conns}"
        with self.start(spec, tag) as server:
            assert isinstance(server, ClusterServer)
            problems = self.check(server, broadcast=False)
            time.sleep(1.0)
            kernel_before = kernel_state()
            before = server.snapshot()
            parts = split(conns, procs)
            with LoadGen(procs, self.base_params(server, "connections"), f"idle {spec.name} c={conns}",
                         _status_rate("connected", "handshakes"), lambda i, _: {"conns": parts[i]}) as lg:
                t_go = now_ns() + int(0.5e9)
                lg.send_all("go", t_measure=t_go, t_end=t_go)
                lg.wait_until(t_go)
                cpu0 = server.cpu_seconds()
                client0 = lg.cpu_seconds()
                done = lg.wait_phase("connected", 120 + conns / 50)
                cpu_connect = server.cpu_seconds() - cpu0
                client_connect = lg.cpu_seconds() - client0
                n = sum(d["n"] for d in done.values())
                t0 = min(d["t0"] for d in done.values())
                t_done = max(d["t_done"] for d in done.values())
                # Let the last processes start and the allocator settle (as bench.scenarios, longer for 100k).
                lg.wait_until(now_ns() + int(max(1.5, conns / 20_000) * 1e9))
                with_open = server.snapshot()
                kernel_open = kernel_state()
                lg.send_all("check")
                checked = lg.wait_phase("checked", 120)
                lg.send_all("close")
                results = lg.wait_results(120 + conns / 1000)
        elapsed = (t_done - t0) / 1e9
        lat = latencies(results)
        rss0 = sum(p["rss"] for p in before)
        rss1 = sum(p["rss"] for p in with_open)
        pss0 = sum(p["pss"] or 0 for p in before)
        pss1 = sum(p["pss"] or 0 for p in with_open)
        sockets0 = {p["role"]: p["sockets"] for p in before}
        held = {p["role"]: p["sockets"] - sockets0.get(p["role"], 0) for p in with_open
                if p["role"].startswith("worker") or p["role"] == "server"}
        return {
            "connected": n,
            "server_open": sum(held.values()),
            "per_worker_open": held,
            "sampled": sum(c.get("sampled", 0) for c in checked.values()),
            "handshakes_per_s": n / elapsed if elapsed > 0 else None,
            "hs_p50_ms": _ms(percentile(lat, 50)),
            "hs_p99_ms": _ms(percentile(lat, 99)),
            "cpu_us_per_handshake": cpu_connect * 1e6 / n if n else None,
            "client_cpu_us_per_handshake": client_connect * 1e6 / n if n else None,
            "server_cpu_pct": 100.0 * cpu_connect / elapsed if elapsed > 0 else None,
            "client_cpu_pct": 100.0 * client_connect / elapsed if elapsed > 0 else None,
            "rss_before_mib": rss0 / 2**20,
            "rss_with_mib": rss1 / 2**20,
            "kib_per_conn": (rss1 - rss0) / n / 1024 if n else None,
            "kib_per_conn_total": rss1 / n / 1024 if n else None,
            "pss_kib_per_conn": (pss1 - pss0) / n / 1024 if n else None,
            "pss_kib_per_conn_total": pss1 / n / 1024 if n else None,
            "machine_kib_per_conn": ((kernel_before.get("mem_available", 0) - kernel_open.get("mem_available", 0))
                                     / n / 1024 if n else None),
            "processes_before": before,
            "processes_open": with_open,
            "kernel_before": kernel_before,
            "kernel_open": kernel_open,
            "errors": _errors(results),
            "check": problems,
            "procs": procs,
        }

    # -- broadcast --------------------------------------------------------------------------------

    def broadcast(self, subscribers: int, baseline: int, workers: int, size: int,
                  window: int) -> list[dict[str, Any]]:
        """Subscribers spread over ``workers`` workers in one room, found by
        its global name (bench/servers/wsrelay_cluster_app), against the single
        process with ``baseline`` subscribers (bench/servers/wsrelay_app)."""
        point = {"subscribers": subscribers, "size": size, "window": window, "binary": self.opts.binary}
        rows = self.run("broadcast", "broadcast", [{**point, "subscribers": baseline}], [server_spec(0)],
                        self._broadcast_one)
        rows += self.run("broadcast", "broadcast", [point], [server_spec(workers, GLOBAL_APP)], self._broadcast_one)
        return rows

    def _broadcast_one(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        """bench.scenarios' broadcast with the load generator spread as for idle."""
        opts = self.opts
        subs = point["subscribers"]
        procs = self.procs_for(subs + 1)
        tag = f"broadcast-c{subs}"
        with self.start(spec, tag) as server:
            problems = self.check(server, broadcast=True)
            parts = split(subs, procs)
            params = self.base_params(server, "broadcast", size=point["size"], inflight=point["window"], drain=10.0)
            with LoadGen(procs, params, f"broadcast {spec.name} subs={subs}", _status_rate("msgs", "deliveries"),
                         lambda i, _: {"conns": parts[i], "publisher": i == 0}) as lg:
                lg.wait_phase("connected", 120 + subs / 50)
                lg.send_all("sync")
                lg.wait_phase("synced", 60 + subs / 200)
                cpu = self.measured(lg, server, tag)
                results = lg.wait_results(opts.timeout + 60)
        deliveries = sum(r["window_msgs"] for r in results)
        lat = latencies(results)
        errors = _errors(results)
        if not deliveries:
            errors["none_in_window"] = 1
        return {
            "connected": sum(r["conns"] for r in results),
            "deliveries_per_s": deliveries / cpu["window_s"],
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "cpu_us_per_delivery": cpu["server_cpu_s"] * 1e6 / deliveries if deliveries else None,
            "deliveries": deliveries,
            "published": sum(r.get("published", 0) for r in results),
            "errors": errors,
            "check": problems,
            "procs": procs,
            **cpu,
        }


def _per_process(per0: dict[int, tuple[str, float]], per1: dict[int, tuple[str, float]],
                 window: float) -> list[dict[str, Any]]:
    out = []
    for pid, (r, cpu1) in sorted(per1.items(), key=lambda kv: kv[1][0]):
        if pid in per0:
            out.append({"role": r, "cpu_pct": 100.0 * (cpu1 - per0[pid][1]) / window if window else None,
                        "sockets": _sockets(pid)})
    return out


# -- hop ----------------------------------------------------------------------------------------


def hop(out: pathlib.Path, messages: int, round_trips: int, repeat: int, size: int) -> list[dict[str, Any]]:
    """bench/cluster_transport.py in a process of its own; its figures as rows."""
    argv = [sys.executable, "-m", "bench.cluster_transport", "--json", "--size", str(size),
            "--messages", str(messages), "--round-trips", str(round_trips), "--repeat", str(repeat)]
    log("== hop: " + " ".join(argv[1:]))
    logs = out / "logs"
    with open(logs / "hop.log", "wb") as err:
        proc = subprocess.run(argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=err, timeout=1800)
    point = {"size": size, "messages": messages, "round_trips": round_trips, "repeat": repeat}
    if proc.returncode != 0:
        return [{"scenario": "hop", "server": "cluster", **point,
                 "failed": f"bench.cluster_transport exited with {proc.returncode}; see {logs / 'hop.log'}"}]
    r = json.loads(proc.stdout)
    rows = [
        {"scenario": "hop", "server": "cluster", "path": "two nodes over nats-server (wsrelay.cluster.Transport)",
         **point, **r["cluster"]},
        {"scenario": "hop", "server": "nats", "path": "bare nats-py clients, same broker (round trip only)",
         **point, **r["nats"]},
        {"scenario": "hop", "server": "local", "path": "one node: two wsrelay processes (process.send)",
         **point, **r["wsrelay_local"]},
        {"scenario": "hop", "server": "asyncio", "path": "one process: asyncio.Queue between two tasks",
         **point, **r["asyncio_queue"]},
    ]
    for row in rows:
        log("   " + ", ".join(f"{k}={v:,.2f}" for k, v in row.items() if isinstance(v, float)))
    return rows


# -- command line --------------------------------------------------------------------------------


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


def parser() -> argparse.ArgumentParser:
    from .__main__ import _ints

    p = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"any of {', '.join(SCENARIOS)}, or all (the default)")
    g = p.add_argument_group("all scenarios")
    g.add_argument("--quick", action="store_true",
                   help="small sizes and short windows: a check that everything works, not a measurement")
    g.add_argument("--procs", type=int, default=2, help="load generator processes at least (default 2)")
    g.add_argument("--per-proc", type=int, default=18_000,
                   help="at most this many sockets per load generator process (default 18000; the hard "
                        "open-file limit here is 20000)")
    g.add_argument("--duration", type=float, help="seconds of the measurement window (default 5, quick 2)")
    g.add_argument("--warmup", type=float, help="seconds of load before the window (default 1, quick 0.5)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds before a connect or reply counts as lost")
    g.add_argument("--source-ips", type=int, default=32,
                   help="loopback source addresses 127.0.0.x the clients bind to (default 32)")
    g.add_argument("--connect-concurrency", type=int, default=64,
                   help="handshakes in progress at once per load generator process (default 64)")
    g.add_argument("--repeat", type=int, default=1,
                   help="echo, handshakes, idle, broadcast: runs per (point, server), servers interleaved; medians")
    g.add_argument("--out", type=pathlib.Path, help="results directory (default bench/results/cluster-<time>)")
    g.add_argument("--images", type=pathlib.Path, help="also copy the PNG plots to this directory (e.g. docs/img)")
    g.add_argument("--profile", action="store_true",
                   help="echo, handshakes: a py-spy flame graph (SVG and a .top.txt digest) of the single process "
                        "and of worker 0 in each measurement; perturbs that run's numbers")
    g = p.add_argument_group("idle")
    g.add_argument("--workers", type=int, default=6, help="WSRELAY_WORKERS of the idle scenario (default 6)")
    g.add_argument("--conns", type=_ints, help="idle connection counts (default 15k,100k; quick 2k,10k)")
    g = p.add_argument_group("echo, handshakes")
    g.add_argument("--pair-workers", type=_ints, default=[2],
                   help="WSRELAY_WORKERS against one process, e.g. 1,2 for both (default 2)")
    g.add_argument("--echo", type=_points, help="echo points CONNSxINFLIGHTxSIZE (default 50x4x256,1000x1x64)")
    g.add_argument("--handshake-conns", type=_ints, help="handshakes: connections (default 10k, quick 2k)")
    g = p.add_argument_group("hop")
    g.add_argument("--hop-messages", type=int, help="one-way messages (default 200k, quick 20k)")
    g.add_argument("--hop-round-trips", type=int, help="round trips (default 2000, quick 300)")
    g.add_argument("--hop-repeat", type=int, help="runs, best kept (default 3, quick 1)")
    g.add_argument("--hop-size", type=int, default=256, help="bytes per one-way message (default 256)")
    g = p.add_argument_group("broadcast")
    g.add_argument("--broadcast-workers", type=int, default=4, help="WSRELAY_WORKERS (default 4)")
    g.add_argument("--subscribers", type=_ints, help="subscribers over the workers (default 60k, quick 8k)")
    g.add_argument("--baseline-subscribers", type=_ints, help="subscribers of the single process (default 15k)")
    return p


def main(argv: Sequence[str]) -> int:
    p = parser()
    args = p.parse_args(list(argv))
    unknown = [s for s in args.scenarios if s not in (*SCENARIOS, "all")]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}, all")
    chosen = [s for s in SCENARIOS if s in args.scenarios or "all" in args.scenarios or not args.scenarios]
    quick = args.quick
    suffix = "_quick" if quick else ""

    def d(name: str) -> dict[str, Any]:
        return DEFAULTS[name + suffix]

    for name in OWN_VARIABLES:
        if os.environ.pop(name, None) is not None:
            log(f"note: {name} from the environment is ignored: the cluster bench sets it per server")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"cluster{'-quick' if quick else ''}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(
        servers=[], procs=max(1, args.procs),
        duration=args.duration if args.duration is not None else (2.0 if quick else 5.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        timeout=args.timeout, source_ips=args.source_ips, out=out, binary=True,
        connect_concurrency=args.connect_concurrency, repeat=max(1, args.repeat), profile=args.profile,
    )
    runner = ClusterRunner(opts, max(1000, args.per_proc))
    pair = [server_spec(0)] + [server_spec(w) for w in args.pair_workers if w > 0]
    data: dict[str, Any] = {
        "suite": "cluster",
        "command": "python -m bench cluster " + " ".join(argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": report.machine(),
        "options": {"quick": quick, "procs": opts.procs, "per_proc": runner.per_proc, "duration_s": opts.duration,
                    "warmup_s": opts.warmup, "source_ips": opts.source_ips, "binary": opts.binary,
                    "connect_concurrency": opts.connect_concurrency, "repeat": opts.repeat,
                    "workers": args.workers, "pair_workers": args.pair_workers,
                    "broadcast_workers": args.broadcast_workers, "scenarios": chosen},
        "kernel": kernel_state(),
        "wsrelay_env": {k: v for k, v in os.environ.items() if k.startswith("WSRELAY_")},
        "rows": [],
    }
    results_json = out / "results.json"

    def save() -> None:
        data["checks"] = runner.checks
        data["targets"] = cluster_report.targets(data["rows"])
        results_json.write_text(json.dumps(data, indent=1, default=str))
        cluster_report.write(data, out, args.images)

    try:
        for scenario in chosen:
            if scenario == "idle":
                rows = runner.idle(args.conns or d("idle")["conns"], args.workers)
            elif scenario == "echo":
                points = [{"conns": c, "size": s, "inflight": i, "binary": True}
                          for c, i, s in (args.echo or d("echo")["points"])]
                rows = runner.run("echo", "echo", points, pair, runner._echo_one)
            elif scenario == "handshakes":
                points = [{"conns": c} for c in (args.handshake_conns or d("handshakes")["conns"])]
                rows = runner.run("handshakes", "connections", points, pair, runner._connections_one)
            elif scenario == "hop":
                h = d("hop")
                rows = hop(out, args.hop_messages or h["messages"], args.hop_round_trips or h["round_trips"],
                           args.hop_repeat or h["repeat"], args.hop_size)
            else:
                b = d("broadcast")
                rows = runner.broadcast((args.subscribers or [b["subscribers"]])[0],
                                        (args.baseline_subscribers or [b["baseline"]])[0],
                                        args.broadcast_workers, 64, 4)
            data["rows"].extend(rows)
            save()
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    finally:
        data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        with open("/proc/loadavg") as f:
            data["loadavg_at_end"] = f.read().split()[:3]
        save()
    print((out / "results.md").read_text())
    print(f"results: {results_json} and {out / 'results.md'}", file=sys.stderr)
    failed = [r for r in data["rows"] if r.get("failed") or r.get("check") or r.get("errors")]
    return 1 if failed else 0
