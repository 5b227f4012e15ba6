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

import json
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from . import procfs
from .common import log, per, sum_errors
from .loadgen import latencies
from .scenarios import IdleTimes, Options, Runner
from .servers import BENCH, ROOT, SERVERS, RunningServer, ServerError, ServerSpec

SCENARIOS = ("idle", "echo", "handshakes", "hop", "broadcast")
SERVING = "wsrelay: serving "
APP = BENCH / "servers" / "wsrelay_app" / "app.yaml"
GLOBAL_APP = BENCH / "servers" / "wsrelay_app" / "cluster.yaml"
# The settings the cluster bench chooses itself: not passed on from the caller's environment.
OWN_VARIABLES = ("WSRELAY_WORKERS", "WSRELAY_CLUSTER_URL", "WSRELAY_CLUSTER_TOKEN", "WSRELAY_CLUSTER_CREDS",
                 "WSRELAY_NODE")
# Errors of a read of /proc about a process of the tree that ended between
# the walk and the read (its loss is counted at stop, ``ClusterServer.lost``).
GONE = (OSError, IndexError, ValueError)


# -- the server's process tree -----------------------------------------------------------------


def role(pid: int, root: int) -> str:
    """supervisor, broker, worker I, or server (the single process)."""
    argv = procfs.cmdline(pid)
    if argv is None:
        return "gone"
    name = pathlib.PurePath(argv[0].decode(errors="replace")).name
    if name == "nats-server":
        return "broker"
    if b"--worker" in argv:
        i = argv.index(b"--worker")
        return f"worker {argv[i + 1].decode()}" if i + 1 < len(argv) else "worker"
    return "server" if pid == root else f"other ({name})"


class ClusterServer(RunningServer):
    """``wsrelay serve`` with ``WSRELAY_WORKERS=workers`` (0: the single
    process), ready when the supervisor says it serves (every worker
    listens); CPU time and RSS are summed over its process tree."""

    def __init__(self, spec: ServerSpec, log_path: pathlib.Path, workers: int) -> None:
        self.workers = workers
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.initial: dict[int, str] = {}
        self.lost: list[str] = []
        env = {**(spec.env or {}), **({"WSRELAY_WORKERS": str(workers)} if workers else {})}
        super().__init__(spec, log_path, start_timeout=60.0, env=env)

    def wait_ready(self, timeout: float) -> None:
        """Listening, then the supervisor's word that every worker serves."""
        deadline = time.monotonic() + timeout
        super().wait_ready(timeout)
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
        for pid in procfs.descendants(root):
            r = role(pid, root)
            tree[pid] = r if pid != root or not self.workers else "supervisor"
        return tree

    def _summed(self, read: Callable[[int], float]) -> float:
        total = 0.0
        for pid in self.processes():
            try:
                total += read(pid)
            except GONE:
                continue
        return total

    def cpu_by_process(self, precise: bool = False) -> dict[int, tuple[str, float]]:
        """CPU seconds of each process of the tree, with its role: from
        ``stat`` (clock ticks), or ``precise``: from its threads'
        ``schedstat`` (ns; procfs.cpu_ns says when that is right)."""
        out = {}
        for pid, r in self.processes().items():
            try:
                out[pid] = (r, procfs.cpu_ns(pid) / 1e9 if precise else procfs.cpu_seconds(pid))
            except GONE:
                continue
        return out

    def cpu_seconds(self) -> float:
        return sum(cpu for _, cpu in self.cpu_by_process().values())

    def rss(self) -> int:
        return int(self._summed(procfs.rss_bytes))

    def syscalls(self) -> int:
        return int(self._summed(procfs.rw_syscalls))

    def snapshot(self) -> list[dict[str, Any]]:
        """Per process of the tree: role, RSS, PSS, open sockets, CPU seconds."""
        out = []
        for pid, r in sorted(self.processes().items(), key=lambda kv: kv[1]):
            try:
                out.append({"pid": pid, "role": r, "rss": procfs.rss_bytes(pid), "pss": procfs.pss_bytes(pid),
                            "sockets": procfs.open_sockets(pid), "cpu_s": procfs.cpu_seconds(pid)})
            except GONE:
                continue
        return out

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        self.lost = [r for pid, r in self.initial.items() if not procfs.alive(pid)]
        return super().stop(timeout)


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
    """The cluster scenarios: bench.scenarios' measurements against
    ``wsrelay serve`` with and without ``WSRELAY_WORKERS``, the server's
    figures summed over its process tree."""

    BROADCAST_CONNECT_S = 120

    def __init__(self, opts: Options, per_proc: int) -> None:
        super().__init__(opts)
        self.per_proc = per_proc
        self.active: list[ServerSpec] = []
        self.workers_of: dict[str, int] = {}
        self.last_server: Optional[ClusterServer] = None

    def specs(self) -> list[ServerSpec]:
        return self.active

    def start(self, spec: ServerSpec, tag: str) -> ClusterServer:
        self.last_server = None
        server = ClusterServer(spec, self.logs / f"{spec.name}-{tag}.log", self.workers_of[spec.name])
        self.last_server = server
        return server

    def run(self, scenario: str, base: str, points: list[dict[str, Any]], servers: list[ServerSpec],
            measure: Callable[[ServerSpec, dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
        """``measure`` each point against ``servers`` (``Runner.run_points``:
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

        rows = self.run_points(points, checked, base)
        for row in rows:
            row["scenario"] = scenario
            row["workers"] = self.workers_of[row["server"]]
        return rows

    def profiled_pid(self, server: RunningServer) -> Optional[int]:
        """The single process, or worker 0."""
        if not isinstance(server, ClusterServer):
            return None
        return next((p for p, r in server.processes().items() if r in ("server", "worker 0")), server.pid)

    def spread_procs(self, conns: int) -> int:
        """Load generator processes for idle and broadcast: none holds more
        than ``per_proc`` sockets (echo and handshakes: ``procs_for``)."""
        return max(self.opts.procs, -(-conns // self.per_proc))

    def broadcast_procs(self, subscribers: int) -> int:
        return self.spread_procs(subscribers + 1)

    def window_opened(self, server: RunningServer) -> Any:
        assert isinstance(server, ClusterServer)
        return server.cpu_by_process(), server.syscalls()

    def window_closed(self, server: RunningServer, opened: Any, cpu: dict[str, Any]) -> dict[str, Any]:
        """Each process's share of the CPU, its open sockets (how the kernel
        spread the connections), and the system calls that read or wrote
        (how much each one carried)."""
        assert isinstance(server, ClusterServer)
        per0, sys0 = opened
        syscalls = server.syscalls() - sys0
        per1 = server.cpu_by_process()
        return {"server_syscalls": syscalls, "per_process": _per_process(per0, per1, cpu["window_s"])}

    # -- echo, handshakes ---------------------------------------------------------------------

    def echo_pair(self, points: list[tuple[int, int, int]], servers: list[ServerSpec]) -> list[dict[str, Any]]:
        """The relay echo at each (conns, inflight, size) against ``servers``."""
        return self.run("echo", "echo", [{"conns": c, "size": s, "inflight": i, "binary": True}
                                         for c, i, s in points], servers, self.measure_echo)

    def handshakes(self, conns_list: list[int], servers: list[ServerSpec]) -> list[dict[str, Any]]:
        return self.run("handshakes", "connections", [{"conns": c} for c in conns_list], servers,
                        self.measure_connections)

    # -- idle ---------------------------------------------------------------------------------

    def idle(self, conns_list: list[int], workers: int) -> list[dict[str, Any]]:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        single, many = server_spec(0), server_spec(workers)
        rows = []
        for conns in conns_list:
            servers = [single, many] if conns <= hard - 1000 else [many]
            if single not in servers:
                log(f"idle {conns:,}: beyond one process's {hard:,} open files: the single process is not run")
            rows += self.run("idle", "connections", [{"conns": conns}], servers, self.measure_idle)
        return rows

    def measure_idle(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        conns = point["conns"]
        procs = self.spread_procs(conns)
        # The processes before and with the connections open; the settling
        # lets the last processes start and the allocator settle (longer for 100k).
        run = self.hold_idle(spec, conns, "idle", procs,
                             IdleTimes(120 + conns / 50, max(1.5, conns / 20_000), 120, 120 + conns / 1000),
                             lambda server: (procfs.kernel_state(), server.snapshot()),
                             lambda server: (server.snapshot(), procfs.kernel_state()), profile=False)
        (kernel_before, before), (with_open, kernel_open) = run.before, run.open
        return {
            "connected": run.n,
            **_held(before, with_open),
            "sampled": sum(c.get("sampled", 0) for c in run.checked.values()),
            **run.cost.handshakes(run.n, latencies(run.results)),
            **_memory(before, with_open, kernel_before, kernel_open, run.n),
            "processes_before": before,
            "processes_open": with_open,
            "kernel_before": kernel_before,
            "kernel_open": kernel_open,
            "errors": sum_errors(run.results),
            "check": run.problems,
            "procs": procs,
        }

    # -- broadcast --------------------------------------------------------------------------------

    def broadcast_over_workers(self, subscribers: int, baseline: int, workers: int, size: int,
                               window: int) -> list[dict[str, Any]]:
        """Subscribers spread over ``workers`` workers in one room, found by
        its global name (bench/servers/wsrelay_app/cluster.yaml), against the
        single process with ``baseline`` subscribers (app.yaml beside it)."""
        point = {"subscribers": subscribers, "size": size, "window": window, "binary": self.opts.binary}
        rows = self.run("broadcast", "broadcast", [{**point, "subscribers": baseline}], [server_spec(0)],
                        self.measure_broadcast)
        rows += self.run("broadcast", "broadcast", [point], [server_spec(workers, GLOBAL_APP)],
                         self.measure_broadcast)
        return rows

    def measure_broadcast(self, spec: ServerSpec, point: dict[str, Any]) -> dict[str, Any]:
        row = super().measure_broadcast(spec, point)
        # The cluster results have never carried these two (the cluster
        # tables show neither): rows stay comparable with earlier runs.
        del row["wire_bytes_per_msg"], row["checked"]
        return row


def _held(before: list[dict[str, Any]], with_open: list[dict[str, Any]]) -> dict[str, Any]:
    """The sockets each worker (or the single process) opened: how the
    kernel spread the connections."""
    sockets0 = {p["role"]: p["sockets"] for p in before}
    held = {p["role"]: p["sockets"] - sockets0.get(p["role"], 0) for p in with_open
            if p["role"].startswith("worker") or p["role"] == "server"}
    return {"server_open": sum(held.values()), "per_worker_open": held}


def _memory(before: list[dict[str, Any]], with_open: list[dict[str, Any]], kernel_before: dict[str, Any],
            kernel_open: dict[str, Any], n: int) -> dict[str, Any]:
    """RSS and PSS summed over the tree, before and with ``n`` connections
    open, per connection; the machine's memory used per connection."""
    rss0 = sum(p["rss"] for p in before)
    rss1 = sum(p["rss"] for p in with_open)
    pss0 = sum(p["pss"] or 0 for p in before)
    pss1 = sum(p["pss"] or 0 for p in with_open)
    used = kernel_before.get("mem_available", 0) - kernel_open.get("mem_available", 0)
    return {
        "rss_before_mib": rss0 / 2**20,
        "rss_with_mib": rss1 / 2**20,
        "kib_per_conn": per(rss1 - rss0, n, 1 / 1024),
        "kib_per_conn_total": per(rss1, n, 1 / 1024),
        "pss_kib_per_conn": per(pss1 - pss0, n, 1 / 1024),
        "pss_kib_per_conn_total": per(pss1, n, 1 / 1024),
        "machine_kib_per_conn": per(used, n, 1 / 1024),
    }


def _per_process(per0: dict[int, tuple[str, float]], per1: dict[int, tuple[str, float]],
                 window: float) -> list[dict[str, Any]]:
    out = []
    for pid, (r, cpu1) in sorted(per1.items(), key=lambda kv: kv[1][0]):
        if pid in per0:
            out.append({"role": r, "cpu_pct": 100.0 * (cpu1 - per0[pid][1]) / window if window else None,
                        "sockets": procfs.open_sockets(pid)})
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
