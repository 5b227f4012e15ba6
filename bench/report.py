"""Results as Markdown tables and PNG plots (matplotlib, Agg), and the
targets of docs/performance.md ("Targets"; "Cluster: workers on one
machine") judged on the rows of one run: the load scenarios' (``python -m
bench``: wsrelay against its peers) and the cluster's (``python -m bench
cluster``: each cluster figure next to the single process measured in the
same run; ``data["suite"] == "cluster"``)."""

from __future__ import annotations

import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Optional

import matplotlib
import matplotlib.pyplot as plt

from .procfs import loadavg, proc_lines
from .publish import ALONE_WRITES, INCUMBENTS, comparable, workers_summary
from .servers import NODE_DIR, ROOT

SERVER_ORDER = ("wsrelay", "wsrelay@base", "picows", "websockets", "aiohttp", "node")
Row = dict[str, Any]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    for line in proc_lines("/proc/cpuinfo"):
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    load = loadavg()
    if load:
        info["loadavg_at_start"] = load
    versions = {}
    for mod in ("picows", "uvloop", "websockets", "aiohttp"):
        try:
            versions[mod] = version(mod)
        except PackageNotFoundError:
            continue  # a peer not installed here is not run either: nothing to report
    node = _command(["node", "-e", "process.stdout.write(process.version + ' ws ' + "
                     "require('ws/package.json').version)"], NODE_DIR)
    if node:
        versions["node"] = node
    info["versions"] = versions
    head = _command(["git", "rev-parse", "--short", "HEAD"], ROOT)
    dirty = _command(["git", "status", "--porcelain", "--", "wsrelay"], ROOT)
    if head:
        info["git"] = head + (f" + {len(dirty.splitlines())} uncommitted file(s) in wsrelay/" if dirty else "")
    return info


def _command(argv: list[str], cwd: pathlib.Path) -> str:
    """What ``argv`` printed, stripped; empty when it is not installed here
    (no node, no git, not a checkout) or failed: the report leaves it out."""
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# -- tables ------------------------------------------------------------------------------------------


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}"


def _spread(row: dict[str, Any]) -> str:
    """(max − min) / median of the main metric over the runs of a row."""
    runs = [v for v in row.get("runs") or [] if v is not None]
    if len(runs) < 2:
        return ""
    runs.sort()
    mid = runs[len(runs) // 2] if len(runs) % 2 else (runs[len(runs) // 2 - 1] + runs[len(runs) // 2]) / 2
    return f" ±{50 * (runs[-1] - runs[0]) / mid:.0f}%" if mid else ""


def _errors_cell(row: dict[str, Any]) -> str:
    """A row's errors column: FAILED and why, its error counters, a failed check."""
    if row.get("failed"):
        return "FAILED: " + row["failed"].replace("|", "/")
    errors = row.get("errors") or {}
    parts = [f"{k}={v}" for k, v in sorted(errors.items())]
    if row.get("check"):
        parts.append("check failed: " + "; ".join(row["check"]))
    return ", ".join(parts) if parts else "0"


def _sort(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> int:
        return SERVER_ORDER.index(r["server"]) if r["server"] in SERVER_ORDER else 99

    return sorted(rows, key=key)


def _reference(group: list[dict[str, Any]], row: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The wsrelay row a row is compared with: wsrelay+deflate for the
    compressed variants of the peers, wsrelay for the others."""
    name = "wsrelay+deflate" if row["server"].endswith("+deflate") else "wsrelay"
    return next((r for r in group if r["server"] == name and not r.get("failed")), None)


def _groups(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    order: list[tuple[Any, ...]] = []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        k = tuple(r.get(x) for x in keys)
        if k not in groups:
            order.append(k)
            groups[k] = []
        groups[k].append(r)
    return [(k, _sort(groups[k])) for k in order]


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _vs_ref(r: Row, ref: Optional[Row], key: str) -> str:
    """``wsrelay ÷ this`` of ``key``: 1 on the reference row itself."""
    return "1" if r is ref else _ratio(ref and ref.get(key), r.get(key))


def _wsrelay(group: list[Row], row: Row) -> Optional[Row]:
    return next((r for r in group if r["server"] == "wsrelay" and not r.get("failed")), None)


def _compared(rows: list[Row], group_by: tuple[str, ...], line: Callable[[Row, Optional[Row]], list[str]],
              reference: Callable[[list[Row], Row], Optional[Row]] = _reference) -> list[list[str]]:
    """The table lines of ``rows``, grouped by the fields ``group_by`` (rows
    measured alike), each built by ``line(row, its reference row)``."""
    return [line(r, reference(group, r)) for _, group in _groups(rows, group_by) for r in group]


def _server_cell(r: Row, ref: Optional[Row]) -> str:
    return f"**{r['server']}**" if r is ref else r["server"]


def _rate_table(rows: list[dict[str, Any]], group_by: tuple[str, ...], lead: list[tuple[str, str]],
                rate: tuple[str, str], cpu: tuple[str, str, int]) -> str:
    """A throughput table: per group of rows measured alike, the ``lead``
    columns (header, field), then the rate, its ratio to wsrelay's, latency,
    server CPU per unit and its ratio, and CPU use and errors."""
    header = [h for h, _ in lead] + ["server", rate[0], "wsrelay ÷ this", "p50 ms", "p99 ms", cpu[0],
                                     "wsrelay ÷ this", "wire B/msg", "server CPU %", "loadgen CPU %", "errors"]
    rate_key, cpu_key, cpu_digits = rate[1], cpu[1], cpu[2]

    def line(r: Row, ref: Optional[Row]) -> list[str]:
        return [_f(r[field]) for _, field in lead] + [
            _server_cell(r, ref), _f(r.get(rate_key)) + _spread(r), _vs_ref(r, ref, rate_key),
            _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2), _f(r.get(cpu_key), cpu_digits),
            _vs_ref(r, ref, cpu_key), _f(r.get("wire_bytes_per_msg"), 0),
            _f(r.get("server_cpu_pct"), 0), _f(r.get("client_cpu_pct"), 0), _errors_cell(r),
        ]

    return _table(header, _compared(rows, group_by, line))


def table_echo(rows: list[dict[str, Any]]) -> str:
    return _rate_table(rows, ("size", "conns", "inflight", "binary"),
                       [("size B", "size"), ("conns", "conns"), ("inflight", "inflight")],
                       ("msgs/s", "msgs_per_s"), ("server CPU µs/msg", "cpu_us_per_msg", 1))


def table_broadcast(rows: list[dict[str, Any]]) -> str:
    return _rate_table(rows, ("subscribers", "size", "window", "binary"),
                       [("subscribers", "subscribers"), ("size B", "size")],
                       ("deliveries/s", "deliveries_per_s"), ("server CPU µs/delivery", "cpu_us_per_delivery", 2))


def table_connections(rows: list[dict[str, Any]]) -> str:
    header = ["conns", "server", "open", "handshakes/s", "wsrelay ÷ this", "hs p99 ms", "server CPU µs/handshake",
              "wsrelay ÷ this", "loadgen CPU µs/handshake", "RSS before MiB", "RSS open MiB", "KiB/conn",
              "wsrelay ÷ this", "errors"]

    def line(r: Row, ref: Optional[Row]) -> list[str]:
        return [
            _f(r["conns"]), _server_cell(r, ref), _f(r.get("connected")),
            _f(r.get("handshakes_per_s")) + _spread(r), _vs_ref(r, ref, "handshakes_per_s"),
            _f(r.get("hs_p99_ms"), 1), _f(r.get("cpu_us_per_handshake"), 0), _vs_ref(r, ref, "cpu_us_per_handshake"),
            _f(r.get("client_cpu_us_per_handshake"), 0), _f(r.get("rss_before_mib"), 1),
            _f(r.get("rss_with_mib"), 1), _f(r.get("kib_per_conn"), 2), _vs_ref(r, ref, "kib_per_conn"),
            _errors_cell(r),
        ]

    return _table(header, _compared(rows, ("conns",), line))


def table_churn(rows: list[dict[str, Any]]) -> str:
    header = ["cycles", "server", "completed", "cycles/s", "wsrelay ÷ this", "cycle p99 ms", "server CPU µs/cycle",
              "loadgen CPU µs/cycle", "RSS cold MiB", "RSS before MiB", "RSS after MiB", "growth %", "errors"]

    def line(r: Row, ref: Optional[Row]) -> list[str]:
        return [
            _f(r["cycles"]), _server_cell(r, ref), _f(r.get("completed")),
            _f(r.get("cycles_per_s")) + _spread(r), _vs_ref(r, ref, "cycles_per_s"),
            _f(r.get("cycle_p99_ms"), 1), _f(r.get("cpu_us_per_cycle"), 0),
            _f(r.get("client_cpu_us_per_cycle"), 0), _f(r.get("rss_cold_mib"), 1),
            _f(r.get("rss_before_mib"), 1), _f(r.get("rss_after_mib"), 1), _f(r.get("rss_growth_pct"), 2),
            _errors_cell(r),
        ]

    return _table(header, _compared(rows, ("cycles", "concurrency", "size"), line, _wsrelay))


LOAD_TABLES = {"echo": table_echo, "broadcast": table_broadcast, "connections": table_connections, "churn": table_churn}


# -- targets -------------------------------------------------------------------------------------------


def _row(rows: list[dict[str, Any]], server: str, **match: Any) -> Optional[dict[str, Any]]:
    for r in rows:
        if r["server"] == server and not r.get("failed") and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _largest(rows: list[dict[str, Any]], scenario: str, key: str) -> Optional[int]:
    values = [r[key] for r in rows if r["scenario"] == scenario and r["server"] == "wsrelay" and not r.get("failed")]
    return max(values) if values else None


def load_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The load scenarios' targets (docs/performance.md, "Targets"), judged
    on this run's rows (ratios within the run)."""
    out: list[dict[str, Any]] = []

    def add(target: str, at: str, measured: str, met: Optional[bool]) -> None:
        out.append({"target": target, "at": at, "measured": measured, "met": met})

    subs = _largest(rows, "broadcast", "subscribers")
    if subs is not None:
        w = _row(rows, "wsrelay", scenario="broadcast", subscribers=subs)
        ws = _row(rows, "websockets", scenario="broadcast", subscribers=subs)
        if w and ws and ws.get("deliveries_per_s") and w.get("p99_ms") is not None and ws.get("p99_ms") is not None:
            ratio = w["deliveries_per_s"] / ws["deliveries_per_s"]
            cpu_ratio = (ws["cpu_us_per_delivery"] / w["cpu_us_per_delivery"]
                         if w.get("cpu_us_per_delivery") and ws.get("cpu_us_per_delivery") else None)
            add("broadcast: ≥ 5× websockets' broadcast() deliveries/s, lower p99",
                f"{subs:,} subscribers" + ("" if subs >= 15000 else " (target is at 15k)"),
                f"{ratio:.2f}× deliveries/s; p99 {w['p99_ms']:.1f} vs {ws['p99_ms']:.1f} ms; "
                + (f"server CPU per delivery {cpu_ratio:.2f}× lower" if cpu_ratio else ""),
                ratio >= 5 and w["p99_ms"] < ws["p99_ms"])
    conns = _largest(rows, "connections", "conns")
    if conns is not None:
        w = _row(rows, "wsrelay", scenario="connections", conns=conns)
        if w and w.get("kib_per_conn") is not None:
            peers = ", ".join(f"{r['server']} {r['kib_per_conn']:.1f}" for r in _sort(rows)
                              if r["scenario"] == "connections" and r.get("conns") == conns
                              and r["server"] != "wsrelay" and r.get("kib_per_conn") is not None)
            add("idle connections: ≤ 8 KiB server RSS per connection, a process per connection",
                f"{conns:,} connections" + ("" if conns >= 15000 else " (target is at 15k)"),
                f"{w['kib_per_conn']:.2f} KiB/conn (peers: {peers})", w["kib_per_conn"] <= 8.0)
        p = _row(rows, "picows", scenario="connections", conns=conns)
        if w and p and w.get("handshakes_per_s") and p.get("handshakes_per_s"):
            ratio = w["handshakes_per_s"] / p["handshakes_per_s"]
            add("handshake rate with a process per connection ≥ 0.8× bare picows",
                f"{conns:,} connections",
                f"{w['handshakes_per_s']:,.0f}/s vs {p['handshakes_per_s']:,.0f}/s = {ratio:.2f}×", ratio >= 0.8)
    churn = [r for r in rows if r["scenario"] == "churn" and r["server"] == "wsrelay" and not r.get("failed")]
    if churn:
        w = churn[-1]
        add("churn: server RSS after the cycles within 5% of before",
            f"{w['cycles']:,} cycles" + ("" if w["cycles"] >= 100_000 else " (target is after 100k)"),
            f"{w['rss_before_mib']:.1f} → {w['rss_after_mib']:.1f} MiB ({w['rss_growth_pct']:+.2f}%), "
            f"cold start {w['rss_cold_mib']:.1f} MiB; processes after: "
            f"{(w.get('health_after') or {}).get('processes', '?')}",
            abs(w["rss_growth_pct"]) <= 5.0)
    w = _row(rows, "wsrelay", scenario="echo", conns=50, inflight=4, size=256, binary=True)
    p = _row(rows, "picows", scenario="echo", conns=50, inflight=4, size=256, binary=True)
    ws = _row(rows, "websockets", scenario="echo", conns=50, inflight=4, size=256, binary=True)
    if w and p and w.get("cpu_us_per_msg") and p.get("cpu_us_per_msg"):
        ratio = w["cpu_us_per_msg"] / p["cpu_us_per_msg"]
        below = ws is not None and ws.get("cpu_us_per_msg") and w["cpu_us_per_msg"] < ws["cpu_us_per_msg"]
        ws_text = f"; websockets {ws['cpu_us_per_msg']:.1f} µs" if ws and ws.get("cpu_us_per_msg") else ""
        add("relay echo (50 conns × 4 in flight × 256 B binary): CPU/msg ≤ 1.5× bare picows and below websockets",
            "50 × 4 × 256 B binary",
            f"wsrelay {w['cpu_us_per_msg']:.1f} µs/msg, picows {p['cpu_us_per_msg']:.1f} µs ({ratio:.2f}×){ws_text}",
            ratio <= 1.5 and bool(below))
    return out


def table_targets(items: list[dict[str, Any]], measured: str, unjudged: str) -> str:
    """The targets as a table: ``measured`` heads the figures' column,
    ``unjudged`` is the result of a target nothing in the run could judge."""
    lines = [[t["target"], t["at"], t["measured"], {True: "met", False: "**missed**", None: unjudged}[t["met"]]]
             for t in items]
    return _table(["target", "measured at", measured, "result"], lines)


# -- plots ------------------------------------------------------------------------------------------------


def _plot(rows: list[dict[str, Any]], x: str, metrics: list[tuple[str, str]], path: pathlib.Path,
          title: str, facet: Optional[str] = None, logy: tuple[str, ...] = ()) -> Optional[pathlib.Path]:
    matplotlib.use("Agg")
    rows = [r for r in rows if not r.get("failed")]
    if not rows:
        return None
    facets = sorted({r.get(facet) for r in rows}) if facet else [None]
    servers = [s for s in SERVER_ORDER if any(r["server"] == s for r in rows)]
    fig, axes = plt.subplots(len(metrics), len(facets),
                             figsize=(max(6.0, 4.2 * len(facets) + 1), 3.0 * len(metrics)), squeeze=False)
    xs_all = sorted({r[x] for r in rows})
    for col, fv in enumerate(facets):
        sub = [r for r in rows if facet is None or r.get(facet) == fv]
        for row_i, (metric, label) in enumerate(metrics):
            ax = axes[row_i][col]
            if len(xs_all) > 1:
                for s in servers:
                    pts = sorted((r[x], r.get(metric)) for r in sub if r["server"] == s and r.get(metric) is not None)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                label=s, linewidth=2.5 if s == "wsrelay" else 1.2)
                ax.set_xscale("log")
                ax.set_xticks(xs_all)
                ax.set_xticklabels([f"{v:,}" for v in xs_all])
                ax.minorticks_off()
                ax.set_xlabel(x)
            else:
                vals = [next((r.get(metric) for r in sub if r["server"] == s), None) for s in servers]
                colors = [f"C{i}" for i in range(len(servers))]
                ax.bar(servers, [v or 0 for v in vals], color=colors)
                ax.tick_params(axis="x", labelrotation=30)
            if metric in logy and len(xs_all) > 1:
                ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if row_i == 0 and facet:
                ax.set_title(f"{facet} = {fv}")
    if len(xs_all) > 1:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def load_plots(data: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    rows = data["rows"]
    made = []
    echo = [r for r in rows if r["scenario"] == "echo"]
    if echo:
        made.append(_plot(echo, "conns", [("msgs_per_s", "msgs/s"), ("cpu_us_per_msg", "server CPU µs/msg"),
                                          ("p99_ms", "p99 latency ms")],
                          out / "echo.png", "echo: throughput, server CPU per message, p99 vs connections",
                          facet="size", logy=("p99_ms", "cpu_us_per_msg")))
    bc = [r for r in rows if r["scenario"] == "broadcast"]
    if bc:
        made.append(_plot(bc, "subscribers", [("deliveries_per_s", "deliveries/s"),
                                              ("cpu_us_per_delivery", "server CPU µs/delivery"),
                                              ("p99_ms", "p99 publish→receive ms")],
                          out / "broadcast.png", "broadcast: one publisher, N subscribers", logy=("p99_ms",)))
    cn = [r for r in rows if r["scenario"] == "connections"]
    if cn:
        made.append(_plot(cn, "conns", [("handshakes_per_s", "handshakes/s"), ("kib_per_conn", "server KiB/conn")],
                          out / "connections.png", "idle connections: handshake rate and RSS per connection"))
    ch = [r for r in rows if r["scenario"] == "churn"]
    if ch:
        made.append(_plot(ch, "cycles", [("cycles_per_s", "cycles/s"), ("rss_growth_pct", "RSS growth %")],
                          out / "churn.png", "churn: connect, one message, close"))
    return [m for m in made if m is not None]


def _health_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What wsrelay's /health said around the measurement (connections, processes)."""
    notes = []
    for r in rows:
        if r["server"] != "wsrelay":
            continue
        seen = [(label, r.get(key)) for label, key in (("before", "health_before"), ("with the connections open",
                                                                                  "health_open"),
                                                         ("after", "health_after")) if r.get(key)]
        if seen:
            point = r.get("conns") or r.get("cycles")
            notes.append(f"- wsrelay /health at {point:,}: " + "; ".join(
                f"{label}: {h.get('connections')} connections, {h.get('processes')} processes" for label, h in seen))
    return notes + [""] if notes else []


# -- cluster tables -------------------------------------------------------------------------------


def _label(r: dict[str, Any]) -> str:
    w = r.get("workers") or 0
    return "1 process" if not w else f"{w} worker{'s' if w > 1 else ''}"


def _single_ref(rows: list[dict[str, Any]], r: dict[str, Any], match: tuple[str, ...]) -> Optional[dict[str, Any]]:
    """The single-process row measured alike (the same ``match`` fields), or
    the single-process row with the most connections when none is."""
    singles = [x for x in rows if not x.get("workers") and not x.get("failed")]
    same = [x for x in singles if all(x.get(k) == r.get(k) for k in match)]
    if same:
        return same[0]
    return max(singles, key=lambda x: x.get("conns") or x.get("subscribers") or 0, default=None)


def _vs_single(rows: list[dict[str, Any]], r: dict[str, Any], key: str, match: tuple[str, ...]) -> str:
    if not r.get("workers"):
        return "1"
    ref = _single_ref(rows, r, match)
    if ref is None:
        return "-"
    text = _ratio(r.get(key), ref.get(key))
    at = [k for k in match if ref.get(k) != r.get(k)]
    return text + (f" (vs {_f(ref[at[0]])})" if at and text != "-" else "")


def _per_worker(r: dict[str, Any]) -> str:
    held = r.get("per_worker_open") or {}
    counts = [v for k, v in held.items() if k.startswith("worker")]
    if not counts:
        return "-"
    return f"{min(counts):,}–{max(counts):,}"


def _window_spread(r: dict[str, Any]) -> str:
    """Connections per worker in an echo window (sockets each worker held)
    and the broker's share of CPU."""
    procs = r.get("per_process") or []
    workers = [p for p in procs if p["role"].startswith("worker")]
    broker = next((p for p in procs if p["role"] == "broker"), None)
    parts = []
    if workers:
        parts.append("CPU " + " / ".join(f"{p['cpu_pct']:.0f}" for p in workers) + " %")
    if broker is not None:
        parts.append(f"broker {broker['cpu_pct']:.1f} %")
    return "; ".join(parts) if parts else "-"


def _per_msg(r: dict[str, Any], key: str, per: str) -> str:
    """System calls that read or wrote, per message: how many messages each one carried."""
    if r.get(key) is None or not r.get(per):
        return "-"
    return _f(r[key] / r[per], 2)


def cluster_table_idle(rows: list[dict[str, Any]]) -> str:
    header = ["conns", "server", "open (clients)", "open (server sockets)", "per worker", "handshakes/s",
              "÷ 1 process", "server CPU µs/handshake", "÷ 1 process", "loadgen CPU µs/handshake",
              "RSS before MiB", "RSS open MiB", "KiB/conn", "÷ 1 process", "KiB/conn incl. base",
              "PSS KiB/conn", "errors"]
    lines = []
    for r in rows:
        lines.append([
            _f(r["conns"]), _label(r), _f(r.get("connected")), _f(r.get("server_open")), _per_worker(r),
            _f(r.get("handshakes_per_s")) + _spread(r), _vs_single(rows, r, "handshakes_per_s", ("conns",)),
            _f(r.get("cpu_us_per_handshake"), 0), _vs_single(rows, r, "cpu_us_per_handshake", ("conns",)),
            _f(r.get("client_cpu_us_per_handshake"), 0), _f(r.get("rss_before_mib"), 1),
            _f(r.get("rss_with_mib"), 1), _f(r.get("kib_per_conn"), 2), _vs_single(rows, r, "kib_per_conn", ("conns",)),
            _f(r.get("kib_per_conn_total"), 2), _f(r.get("pss_kib_per_conn"), 2), _errors_cell(r),
        ])
    return _table(header, lines)


def cluster_table_idle_processes(r: dict[str, Any]) -> str:
    before = {p["role"]: p for p in r.get("processes_before") or []}
    lines = []
    for p in r.get("processes_open") or []:
        b = before.get(p["role"], {})
        lines.append([p["role"], _f(b.get("rss", 0) / 2**20, 1), _f(p["rss"] / 2**20, 1),
                      _f((p["rss"] - b.get("rss", 0)) / 2**20, 1), _f((p.get("pss") or 0) / 2**20, 1),
                      _f(p["sockets"] - b.get("sockets", 0)), _f(p["cpu_s"] - b.get("cpu_s", 0), 2)])
    return _table(["process", "RSS before MiB", "RSS open MiB", "grew MiB", "PSS open MiB", "sockets opened",
                   "CPU s (connecting, settling)"], lines)


def cluster_table_echo(rows: list[dict[str, Any]]) -> str:
    header = ["size B", "conns", "inflight", "server", "msgs/s", "÷ 1 process", "p50 ms", "p99 ms",
              "server CPU µs/msg", "÷ 1 process", "server syscalls/msg", "server CPU %", "loadgen CPU %",
              "workers' CPU, broker", "errors"]
    match = ("size", "conns", "inflight")
    lines = []
    for r in rows:
        lines.append([
            _f(r["size"]), _f(r["conns"]), _f(r["inflight"]), _label(r),
            _f(r.get("msgs_per_s")) + _spread(r), _vs_single(rows, r, "msgs_per_s", match),
            _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2), _f(r.get("cpu_us_per_msg"), 1),
            _vs_single(rows, r, "cpu_us_per_msg", match), _per_msg(r, "server_syscalls", "messages"),
            _f(r.get("server_cpu_pct"), 0), _f(r.get("client_cpu_pct"), 0),
            _window_spread(r) if r.get("workers") else "-", _errors_cell(r),
        ])
    return _table(header, lines)


def cluster_table_handshakes(rows: list[dict[str, Any]]) -> str:
    header = ["conns", "server", "open", "handshakes/s", "÷ 1 process", "hs p99 ms", "server CPU µs/handshake",
              "÷ 1 process", "loadgen CPU µs/handshake", "server CPU %", "loadgen CPU %", "errors"]
    lines = []
    for r in rows:
        lines.append([
            _f(r["conns"]), _label(r), _f(r.get("connected")), _f(r.get("handshakes_per_s")) + _spread(r),
            _vs_single(rows, r, "handshakes_per_s", ("conns",)), _f(r.get("hs_p99_ms"), 1),
            _f(r.get("cpu_us_per_handshake"), 0), _vs_single(rows, r, "cpu_us_per_handshake", ("conns",)),
            _f(r.get("client_cpu_us_per_handshake"), 0), _f(r.get("server_cpu_pct"), 0),
            _f(r.get("client_cpu_pct"), 0), _errors_cell(r),
        ])
    return _table(header, lines)


def cluster_table_hop(rows: list[dict[str, Any]]) -> str:
    header = ["path", "round trip p50 µs", "p99 µs", f"one way msgs/s ({rows[0].get('size', '?')} B)",
              "CPU µs/msg sender", "receiver", "broker", "total", "cluster ÷ this"]
    cluster = next((r for r in rows if r["server"] == "cluster" and not r.get("failed")), None)
    lines = []
    for r in rows:
        if r.get("failed"):
            lines.append([r["server"], "FAILED: " + r["failed"]] + [""] * (len(header) - 2))
            continue
        ratios = []
        if cluster is not None and r is not cluster:
            for key, name in (("rtt_p50_us", "p50"), ("msgs_per_s", "msgs/s"), ("cpu_us_total", "CPU")):
                if r.get(key) and cluster.get(key):
                    ratios.append(f"{name} {cluster[key] / r[key]:.2f}")
        lines.append([
            r["path"], _f(r.get("rtt_p50_us"), 1), _f(r.get("rtt_p99_us"), 1), _f(r.get("msgs_per_s")),
            _f(r.get("cpu_us_sender"), 2), _f(r.get("cpu_us_receiver"), 2), _f(r.get("cpu_us_broker"), 2),
            _f(r.get("cpu_us_total"), 2), "1" if r is cluster else ", ".join(ratios) or "-",
        ])
    return _table(header, lines)


def cluster_table_broadcast(rows: list[dict[str, Any]]) -> str:
    header = ["subscribers", "server", "deliveries/s", "÷ 1 process", "p50 ms", "p99 ms", "server CPU µs/delivery",
              "÷ 1 process", "server CPU %", "loadgen CPU %", "errors"]
    lines = []
    for r in rows:
        lines.append([
            _f(r["subscribers"]), _label(r), _f(r.get("deliveries_per_s")) + _spread(r),
            _vs_single(rows, r, "deliveries_per_s", ()), _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2),
            _f(r.get("cpu_us_per_delivery"), 2), _vs_single(rows, r, "cpu_us_per_delivery", ()),
            _f(r.get("server_cpu_pct"), 0), _f(r.get("client_cpu_pct"), 0), _errors_cell(r),
        ])
    return _table(header, lines)


CLUSTER_TABLES = {"idle": cluster_table_idle, "echo": cluster_table_echo, "handshakes": cluster_table_handshakes,
                  "hop": cluster_table_hop, "broadcast": cluster_table_broadcast}

CLUSTER_NOTES = {
    "idle": "Idle connections, a process each (2 per connection: the connection's and the one its handler "
            "spawned). RSS summed over the server's process tree (for workers: the supervisor, every worker "
            "and nats-server), before the connections and 1.5 s (100k: 5 s) after the last handshake. "
            "*KiB/conn* = (RSS open − RSS before) / connections, as the single-process scenario measures it; "
            "*incl. base* = RSS open / connections (every process's start-up memory charged to the "
            "connections); *PSS* counts pages shared between processes once. *per worker*: the fewest and "
            "most connections one worker held (sockets it opened). Ratios: a cluster figure over the single "
            "process's in the same run (at the same count, or at the largest it can hold).",
    "echo": "Relay echo (a process per connection), server CPU summed over every process of the tree: for "
            "workers, each worker, the supervisor and nats-server. *server syscalls/msg*: system calls that "
            "read or wrote (`/proc/<pid>/io`, summed over the tree) per echoed message, fewer when one "
            "`writev` carries several replies. *workers' CPU, broker*: each worker's share of a core in the "
            "window, and the broker's (echo stays inside the worker that accepted the connection: nothing "
            "crosses the bus).",
    "handshakes": "Idle connections opened as fast as the server takes them (bench.scenarios' connections): "
                  "rate from the first connect to the last established; server CPU summed over the tree.",
    "hop": "bench/cluster_transport.py: round trip one message at a time; one way with a window of 50,000 "
           "unacknowledged messages; CPU per message of each side from its own process time, the broker's "
           "from /proc. Each figure the best of the runs. One node: the same round trip and stream between "
           "two wsrelay processes of one process (sender and receiver share one CPU time: *total*).",
    "broadcast": "One publisher, subscribers spread over the workers in one room found by its global name "
                 "(bench/servers/wsrelay_app/cluster.yaml), against the single process at its own count; server CPU "
                 "per delivery summed over every worker, the supervisor and nats-server.",
}


# -- cluster targets -------------------------------------------------------------------------------------------


def cluster_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cluster's targets (docs/performance.md, "Cluster: workers on one
    machine"), judged on this run's rows."""
    out: list[dict[str, Any]] = []

    def add(target: str, at: str, measured: str, met: Optional[bool]) -> None:
        out.append({"target": target, "at": at, "measured": measured, "met": met})

    idle = [r for r in rows if r["scenario"] == "idle" and r.get("workers") and not r.get("failed")]
    if idle:
        r = max(idle, key=lambda x: x["conns"])
        ref = _single_ref([x for x in rows if x["scenario"] == "idle"], r, ("conns",))
        ref_text = ""
        if ref is not None and ref.get("kib_per_conn"):
            ref_text = f"; 1 process at {ref['conns']:,}: {ref['kib_per_conn']:.2f} KiB"
        all_open = r.get("connected") == r["conns"] and r.get("server_open", 0) >= r["conns"] and not r.get("errors")
        add(f"idle: {r['conns']:,} connections over WSRELAY_WORKERS={r['workers']}, all open, RSS summed over "
            "supervisor, workers and broker ≤ 8 KiB per connection",
            f"{r['conns']:,} connections" + ("" if r["conns"] >= 100_000 else " (target is at 100k)"),
            f"{r.get('connected', 0):,} open ({r.get('server_open', 0):,} server sockets), "
            f"{r['kib_per_conn']:.2f} KiB/conn ({r['kib_per_conn_total']:.2f} with the processes' base)"
            + ref_text,
            all_open and r["kib_per_conn"] <= 8.0)
    hop = {r["server"]: r for r in rows if r["scenario"] == "hop" and not r.get("failed")}
    c = hop.get("cluster")
    if c:
        add("cross-node round trip p50 ≤ 300 µs", f"{c['round_trips']:,} round trips",
            f"p50 {c['rtt_p50_us']:.0f} µs, p99 {c['rtt_p99_us']:.0f} µs"
            + (f" (bare nats-py {hop['nats']['rtt_p50_us']:.0f} µs; one node "
               f"{hop['local']['rtt_p50_us']:.1f} µs)" if "nats" in hop and "local" in hop else ""),
            c["rtt_p50_us"] <= 300)
        add(f"cross-node one way ≥ 200k messages/s at {c['size']} B", f"{c['messages']:,} messages",
            f"{c['msgs_per_s']:,.0f}/s" + (f" (one node: {hop['local']['msgs_per_s']:,.0f}/s)" if "local" in hop
                                          else ""),
            c["msgs_per_s"] >= 200_000)
        add("CPU per cross-node message ≤ 3 µs each side", f"{c['size']} B one way",
            f"sender {c['cpu_us_sender']:.2f} µs, receiver {c['cpu_us_receiver']:.2f} µs, broker "
            f"{c['cpu_us_broker']:.2f} µs", c["cpu_us_sender"] <= 3 and c["cpu_us_receiver"] <= 3)
    bc = [r for r in rows if r["scenario"] == "broadcast"]
    if bc:
        many = next((r for r in bc if r.get("workers")), None)
        one = next((r for r in bc if not r.get("workers")), None)
        target = "broadcast over workers: server CPU per delivery ≤ 1.3× the single process at its count"
        if many is None or one is None:
            add(target, "-", "not run", None)
        elif many.get("cpu_us_per_delivery") and one.get("cpu_us_per_delivery"):
            ratio = many["cpu_us_per_delivery"] / one["cpu_us_per_delivery"]
            add(target, f"{many['subscribers']:,} over {many['workers']} workers vs {one['subscribers']:,}",
                f"{many['cpu_us_per_delivery']:.2f} vs {one['cpu_us_per_delivery']:.2f} µs = {ratio:.2f}×",
                ratio <= 1.3 and not many.get("errors"))
        else:
            add(target, "-", many.get("failed") or "no deliveries", False)
    return out


# -- cluster plots ------------------------------------------------------------------------------------------------


def _bars(ax: Any, labels: list[str], series: dict[str, list[Optional[float]]], ylabel: str,
          logy: bool = False) -> None:
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v or 0 for v in values], width, label=name, color=f"C{i}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)


def _figure(panels: int) -> tuple[Any, Any]:
    matplotlib.use("Agg")
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 0.5, 3.6), squeeze=False)
    return fig, axes[0]


def _save(fig: Any, path: pathlib.Path, title: str) -> pathlib.Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _point_series(rows: list[dict[str, Any]], keys: tuple[str, ...], metric: str,
                  fmt: Any) -> tuple[list[str], dict[str, list[Optional[float]]]]:
    points: list[tuple[Any, ...]] = []
    for r in rows:
        k = tuple(r.get(x) for x in keys)
        if k not in points:
            points.append(k)
    series: dict[str, list[Optional[float]]] = {}
    for label in dict.fromkeys(_label(r) for r in rows):
        series[label] = [next((r.get(metric) for r in rows if _label(r) == label
                               and tuple(r.get(x) for x in keys) == p), None) for p in points]
    return [fmt(p) for p in points], series


def _bar_axes(axes: Any) -> None:
    """The look every bar panel of the cluster plots shares."""
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)


def _plot_idle(idle: list[Row], path: pathlib.Path) -> pathlib.Path:
    fig, axes = _figure(2)
    labels = [f"{_label(r)}\n{r['conns']:,}" for r in idle]
    colors = ["C0" if not r.get("workers") else "C1" for r in idle]
    axes[0].bar(labels, [r.get("kib_per_conn") or 0 for r in idle], color=colors)
    axes[0].axhline(8.0, color="red", linestyle="--", linewidth=1, label="target 8 KiB")
    axes[0].set_ylabel("server KiB per connection\n(RSS summed over the tree)")
    axes[0].legend(fontsize=8)
    axes[1].bar(labels, [r.get("handshakes_per_s") or 0 for r in idle], color=colors)
    axes[1].set_ylabel("handshakes/s")
    _bar_axes(axes)
    return _save(fig, path, "idle connections, a process each")


def _plot_points(rows: list[Row], keys: tuple[str, ...], metrics: tuple[tuple[str, str], ...],
                 fmt: Callable[[tuple[Any, ...]], str], path: pathlib.Path, title: str) -> pathlib.Path:
    """One panel per metric: a bar per server at each point (the ``keys`` fields)."""
    fig, axes = _figure(len(metrics))
    for ax, (metric, ylabel) in zip(axes, metrics):
        labels, series = _point_series(rows, keys, metric, fmt)
        _bars(ax, labels, series, ylabel)
    axes[0].legend(fontsize=8)
    return _save(fig, path, title)


def _plot_hop(hop: list[Row], path: pathlib.Path) -> pathlib.Path:
    fig, axes = _figure(3)
    names = {"cluster": "2 nodes\n(transport)", "nats": "bare\nnats-py", "local": "1 node\n(wsrelay)",
             "asyncio": "asyncio\nQueue"}
    rtt = [r for r in hop if r.get("rtt_p50_us")]
    _bars(axes[0], [names[r["server"]] for r in rtt], {"p50": [r["rtt_p50_us"] for r in rtt],
                                                       "p99": [r["rtt_p99_us"] for r in rtt]},
          "round trip µs", logy=True)
    axes[0].legend(fontsize=8)
    rate = [r for r in hop if r.get("msgs_per_s")]
    axes[1].bar([names[r["server"]] for r in rate], [r["msgs_per_s"] for r in rate],
                color=[f"C{i}" for i in range(len(rate))])
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"one way msgs/s ({rate[0]['size'] if rate else '?'} B)")
    cpu = [r for r in hop if r.get("cpu_us_total")]
    axes[2].bar([names[r["server"]] for r in cpu], [r["cpu_us_total"] for r in cpu],
                color=[f"C{i}" for i in range(len(cpu))])
    axes[2].set_ylabel("CPU µs per message (all sides)")
    _bar_axes(axes)
    return _save(fig, path, "node-to-node hop against the same on one node")


def _plot_broadcast(bc: list[Row], path: pathlib.Path) -> pathlib.Path:
    fig, axes = _figure(2)
    labels = [f"{_label(r)}\n{r['subscribers']:,}" for r in bc]
    axes[0].bar(labels, [r.get("deliveries_per_s") or 0 for r in bc])
    axes[0].set_ylabel("deliveries/s")
    axes[1].bar(labels, [r.get("cpu_us_per_delivery") or 0 for r in bc])
    axes[1].set_ylabel("server CPU µs/delivery")
    return _save(fig, path, "broadcast: one publisher, subscribers over workers")


def cluster_plots(data: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    rows = [r for r in data["rows"] if not r.get("failed")]
    made = []
    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        made.append(_plot_idle(idle, out / "cluster-idle.png"))
    echo = [r for r in rows if r["scenario"] == "echo"]
    if echo:
        made.append(_plot_points(echo, ("conns", "inflight", "size"),
                                 (("msgs_per_s", "msgs/s"), ("cpu_us_per_msg", "server CPU µs/msg"),
                                  ("p99_ms", "p99 ms")),
                                 lambda p: f"{p[0]}×{p[1]}×{p[2]} B", out / "cluster-echo.png",
                                 "relay echo: workers against one process (conns × in flight × size)"))
    hs = [r for r in rows if r["scenario"] == "handshakes"]
    if hs:
        made.append(_plot_points(hs, ("conns",), (("handshakes_per_s", "handshakes/s"),
                                                  ("cpu_us_per_handshake", "server CPU µs/handshake")),
                                 lambda p: f"{p[0]:,} conns", out / "cluster-handshakes.png",
                                 "handshakes: workers against one process"))
    hop = [r for r in rows if r["scenario"] == "hop"]
    if hop:
        made.append(_plot_hop(hop, out / "cluster-hop.png"))
    bc = [r for r in rows if r["scenario"] == "broadcast"]
    if bc:
        made.append(_plot_broadcast(bc, out / "cluster-broadcast.png"))
    return made


# -- the publish scenario -----------------------------------------------------------------------------------------


def _best_incumbent(rows: list[Row], subscribers: int, mode: str, rate: Optional[float] = None) -> Optional[Row]:
    """The incumbent with the most deliveries/s at this point of the run."""
    peers = [r for r in rows if r["scenario"] == "publish" and r["server"] in INCUMBENTS
             and r["subscribers"] == subscribers and r["mode"] == mode and r.get("rate") == rate
             and r.get("deliveries_per_s") and not r.get("failed")]
    return max(peers, key=lambda r: r["deliveries_per_s"], default=None)


def _cpu_parts(r: Row) -> str:
    parts = r.get("cpu_pct_by_part") or {}
    return " + ".join(f"{k} {v:.0f}" for k, v in parts.items()) if parts else "-"


def _publishes_cell(r: Row) -> str:
    """Publishes/s; at a steady rate, how long the window held the publisher back (the server was behind)."""
    held = r.get("publisher_held_s") if r.get("mode") == "steady" else None
    return _f(r.get("publishes_per_s")) + (f" (held back {held:.1f} s)" if held and held >= 0.05 else "")


def _mode_cell(r: Row) -> str:
    mode = r["mode"]
    if mode == "steady":
        return f"steady {_f(r.get('rate'))}/s"
    if mode == "alone":
        return f"alone {_f(r.get('rate'))}/s × {r.get('count')}"
    return f"{mode} (window {r.get('window')})"


def _writes_cell(r: Row) -> str:
    """Writes per delivery; an ``alone`` row that coalesced (or was cut) does
    not compare with the others of its point."""
    cell = _f(r.get("writes_per_delivery"), 2)
    if r.get("mode") == "alone" and not r.get("failed") and not comparable(r):
        cell += " (coalescing: not comparable)" if not r.get("comparable") else " (cut: not comparable)"
    return cell


def table_publish(rows: list[Row]) -> str:
    """Per (subscribers, mode): each server, its ratios to the best incumbent of the same point."""
    header = ["subscribers", "mode", "server", "publishes/s", "deliveries/s", "÷ best incumbent", "p50 ms",
              "p99 ms", "CPU µs/delivery", "writes/delivery", "server CPU % (by part)", "loadgen CPU %",
              "publisher CPU %", "errors"]
    lines = []
    for (subs, mode, rate), group in _groups(rows, ("subscribers", "mode", "rate")):
        best = _best_incumbent(rows, subs, mode, rate)
        for r in group:
            lines.append([_f(subs), _mode_cell(r),
                          f"**{r['server']}**" if r is best else r["server"], _publishes_cell(r),
                          _f(r.get("deliveries_per_s")),
                          _ratio(r.get("deliveries_per_s"), best and best.get("deliveries_per_s")),
                          _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2), _f(r.get("cpu_us_per_delivery"), 2),
                          _writes_cell(r),
                          f"{_f(r.get('server_cpu_pct'), 0)} ({_cpu_parts(r)})", _f(r.get("client_cpu_pct"), 0),
                          _f(r.get("publisher_cpu_pct"), 0), _errors_cell(r)])
    return _table(header, lines)


def table_api(rows: list[Row]) -> str:
    return _table(["server", "publishes/s", "server CPU µs/call", "p50 ms", "p99 ms", "server CPU %",
                   "publisher CPU %", "errors"],
                  [[r["server"], _f(r.get("publishes_per_s")), _f(r.get("cpu_us_per_call"), 2),
                    _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2), _f(r.get("server_cpu_pct"), 0),
                    _f(r.get("publisher_cpu_pct"), 0), _errors_cell(r)] for r in rows])


def _beside(rows: list[Row], n: int, server: str) -> Optional[tuple[Row, Row, str]]:
    """``server``'s row and the channel's measured alike at ``n``: at the
    ``alone`` point when both have one (each publication written alone,
    counted whole: the same work), else at the same steady rate (the same
    work per second), else at max rate; and which."""
    for r in rows:
        if r["server"] == server and r["subscribers"] == n and r["mode"] == "alone" and r.get("cpu_us_per_delivery"):
            c = _row(rows, "wsrelay", subscribers=n, mode="alone", rate=r.get("rate"), count=r.get("count"))
            if c and c.get("cpu_us_per_delivery"):
                return r, c, (f"both at {r['rate']:g}/s × {r['count']} publications measured whole, "
                              f"{r['writes_per_delivery']:.2f} and {c['writes_per_delivery']:.2f} writes/delivery")
    for r in rows:
        if r["server"] == server and r["subscribers"] == n and r["mode"] == "steady" and r.get("cpu_us_per_delivery"):
            c = _row(rows, "wsrelay", subscribers=n, mode="steady", rate=r.get("rate"))
            if c and c.get("cpu_us_per_delivery"):
                return r, c, f"both at {r['rate']:g}/s"
    r = _row(rows, server, subscribers=n, mode="max")
    c = _row(rows, "wsrelay", subscribers=n, mode="max")
    if r and c and r.get("cpu_us_per_delivery") and c.get("cpu_us_per_delivery"):
        return r, c, "both at max rate"
    return None


def publish_targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The publish scenario's targets (docs/performance.md, "Publish"), judged on this run's rows."""
    out: list[dict[str, Any]] = []

    def add(target: str, at: str, measured: str, met: Optional[bool]) -> None:
        out.append({"target": target, "at": at, "measured": measured, "met": met})

    pub = [r for r in rows if r["scenario"] == "publish" and not r.get("failed")]
    counts = [r["subscribers"] for r in pub if r["server"] == "wsrelay"]
    if counts:
        n = max(counts)
        at = f"{n:,} subscribers" + ("" if n >= 15000 else " (the target is at 15k)")
        w = _row(pub, "wsrelay", subscribers=n, mode="max")
        best = _best_incumbent(pub, n, "max")
        bs = None if best is None else _row(pub, best["server"], subscribers=n, mode="steady")
        ws = None if bs is None else _row(pub, "wsrelay", subscribers=n, mode="steady", rate=bs.get("rate"))
        if w and best and ws and bs and ws.get("p99_ms") is not None and bs.get("p99_ms") is not None:
            ratio = w["deliveries_per_s"] / best["deliveries_per_s"]
            add("channel publish: ≥ 10× the best incumbent's deliveries/s, lower p99", at,
                f"{ratio:.1f}× {best['server']} ({w['deliveries_per_s']:,.0f} vs {best['deliveries_per_s']:,.0f}/s "
                f"at max rate); p99 at {ws.get('rate')}/s {ws['p99_ms']:.1f} vs {bs['p99_ms']:.1f} ms",
                ratio >= 10 and ws["p99_ms"] < bs["p99_ms"] and not w.get("errors") and not ws.get("errors"))
        pair = _beside(pub, n, "wsrelay-group")
        if pair:
            g, c, how = pair
            ratio = c["cpu_us_per_delivery"] / g["cpu_us_per_delivery"]
            add("channel publish within 10% of Group.send's server CPU per delivery", at,
                f"{c['cpu_us_per_delivery']:.2f} vs {g['cpu_us_per_delivery']:.2f} µs = {ratio:.2f}× ({how})",
                ratio <= 1.1)
        pair = _beside(pub, n, "wsrelay-w2")
        if pair:
            w2, c, how = pair
            ratio = w2["cpu_us_per_delivery"] / c["cpu_us_per_delivery"]
            # At the alone point a row that coalesced did other work: not judged.
            unlike = [r["server"] for r in (c, w2) if r["mode"] == "alone" and not comparable(r)]
            add("channel publish over WSRELAY_WORKERS=2: ≤ 1.2× the single process's CPU per delivery", at,
                f"{w2['cpu_us_per_delivery']:.2f} vs {c['cpu_us_per_delivery']:.2f} µs = {ratio:.2f}× ({how})"
                + (f"; errors {_errors_cell(w2)}" if w2.get("errors") else "")
                + (f"; not comparable: {' and '.join(unlike)} below {ALONE_WRITES} writes/delivery or cut"
                   if unlike else ""),
                None if unlike else ratio <= 1.2 and not w2.get("errors"))
    api = _row(rows, "wsrelay", scenario="api")
    if api and api.get("publishes_per_s") and api.get("cpu_us_per_call"):
        add("API: ≥ 10,000 publishes/s from one keep-alive client, ≤ 30 µs server CPU per call",
            "one subscriber", f"{api['publishes_per_s']:,.0f}/s, {api['cpu_us_per_call']:.1f} µs/call",
            api["publishes_per_s"] >= 10_000 and api["cpu_us_per_call"] <= 30 and not api.get("errors"))
    return out


def _publish_lines(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    m = data.get("machine", {})
    o = data.get("options", {})
    lines = [f"# wsrelay publish benchmark — {data.get('started', '')}", "", f"`{data.get('command', '')}`", "",
             f"{_machine_text(m)}, load average at start {' '.join(m.get('loadavg_at_start', []))}"
             + (f"; wsrelay at {m['git']}" if m.get("git") else "") + ".", "",
             "A publisher in a process of its own publishes to a room of N subscribers (the load generator, "
             "on the same machine). `max`: as fast as the server delivers, at most "
             f"{o.get('window')} publications not yet received by every subscriber; `steady`: the rate shown "
             "(half the best incumbent's max rate at that N unless --rate), at most 2 s of publications in flight; "
             "`alone r/s × k` (the workers part): k publications at r/s, a rate derived from the single process's "
             "max rate and writes/delivery there so that each is written alone to each socket, counted whole "
             "(server CPU from schedstat, from before the first publication until the last has reached every "
             f"subscriber); such a row below {ALONE_WRITES} writes/delivery coalesced, and does not compare. "
             "Server CPU is every process of the server and its redis-server; `÷ best incumbent` divides by "
             "the incumbent (bold) with the most deliveries/s at the same point of this run. Latency is "
             "publish call → receive, on the clock all processes share.", ""]
    pub = [r for r in rows if r["scenario"] == "publish"]
    if pub:
        lines += ["## publish", "", table_publish(pub), ""]
    workers = workers_summary(pub)
    if workers:
        lines += ["## workers", "", workers[0].upper() + workers[1:] + ".", ""]
    api = [r for r in rows if r["scenario"] == "api"]
    if api:
        lines += ["## api", "", "One `wsrelay.client.Client` over keep-alive, publishing to a channel with "
                  "one subscriber as fast as its round trips allow.", "", table_api(api), ""]
    if data.get("targets"):
        lines += ["## targets", "", table_targets(data["targets"], "measured (this run)", "not run"), ""]
    lines += ["## servers", ""] + [f"- `{k}`: {v}" for k, v in data.get("servers", {}).items()] + [""]
    return lines


# -- results.md ------------------------------------------------------------------------------------------


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of the run's suite, judged on its rows."""
    judge = {"cluster": cluster_targets, "publish": publish_targets}.get(data.get("suite", ""), load_targets)
    return judge(data["rows"])


def write(data: dict[str, Any], out: pathlib.Path, images: Optional[pathlib.Path] = None) -> pathlib.Path:
    """results.md and the PNG plots of ``data`` into ``out``; the plots also
    into ``images`` (as bench-NAME.png) when given."""
    if data.get("suite") == "publish":
        path = out / "results.md"
        path.write_text("\n".join(_publish_lines(data)))
        return path
    cluster = data.get("suite") == "cluster"
    made = (cluster_plots if cluster else load_plots)(data, out)
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)
        for p in made:
            shutil.copy(p, images / f"bench-{p.name}")
    lines = _cluster_lines(data, out) if cluster else _load_lines(data, out)
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


def _machine_text(m: dict[str, Any]) -> str:
    return (f"Machine: {m.get('cpus')} CPUs ({m.get('cpu', '?')}), Linux {m.get('kernel')}, "
            f"Python {m.get('python')}, open files {m.get('nofile')}")


def _repeat_text(data: dict[str, Any], tail: str) -> str:
    options = data.get("options", {})
    repeat = options.get("repeat", 1)
    how = ("servers side by side (running at once, the connections alternating among them)"
           if options.get("side_by_side") else "servers interleaved")
    return (f" Medians of {repeat} runs per row, {how}; ±x% is half the range of the runs{tail}."
            if repeat > 1 else "")


def _checks_text(data: dict[str, Any]) -> str:
    failed = {name: v for name, v in (data.get("checks") or {}).items() if v}
    return "all passed." if not failed else "; ".join(f"{name}: {', '.join(v)}" for name, v in failed.items())


def _sections(rows: list[Row], tables: dict[str, Callable[[list[Row]], str]], png: pathlib.Path,
              head: Callable[[str], list[str]], tail: Callable[[str, list[Row]], list[str]]) -> list[str]:
    """A section per scenario of ``tables`` that has rows: its ``head``
    lines, its table, its ``tail`` lines, its plot (``png`` with ``{}`` for
    the scenario) when there is one."""
    lines = []
    for scenario, render in tables.items():
        sub = [r for r in rows if r["scenario"] == scenario]
        if not sub:
            continue
        lines += [f"## {scenario}", "", *head(scenario), render(sub), ""]
        lines += tail(scenario, sub)
        plot = png.with_name(png.name.format(scenario))
        if plot.exists():
            lines += [f"![{scenario}]({plot.name})", ""]
    return lines


def _load_lines(data: dict[str, Any], out: pathlib.Path) -> list[str]:
    rows = data["rows"]
    m = data.get("machine", {})
    lines = [f"# wsrelay load benchmark — {data.get('started', '')}", "",
             f"`{data.get('command', '')}`", "",
             f"{_machine_text(m)}, load average at start {' '.join(m.get('loadavg_at_start', []))}; "
             + (f"wsrelay at {m['git']}; " if m.get("git") else "")
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ".", "",
             "Ratios (`wsrelay ÷ this`) compare servers measured in this run: for rates > 1 means wsrelay "
             "is faster, for CPU µs and KiB > 1 means wsrelay costs more."
             + _repeat_text(data, " around the median")
             + (" wsrelay environment: " + ", ".join(f"`{k}={v}`" for k, v in data["wsrelay_env"].items()) + "."
                if data.get("wsrelay_env") else ""), ""]
    lines += _sections(rows, LOAD_TABLES, out / "{}.png", lambda scenario: [],
                       lambda scenario, sub: _health_notes(sub))
    paired = [r for r in rows if r.get("side_by_side") and r.get("cpu_vs_first_runs")]
    if paired:
        first: dict[int, str] = {}
        for r in rows:
            if r.get("side_by_side"):
                first.setdefault(r["conns"], r["server"])
        lines += ["## server CPU per handshake, side by side", "",
                  "Each server's CPU per handshake over the first server's, in each run (measured in the same "
                  "seconds), and their median:", "",
                  "| conns | server | ÷ | each run | median |", "|---|---|---|---|---|"]
        for r in paired:
            if r["server"] == first[r["conns"]]:
                continue
            ratios = [x for x in r["cpu_vs_first_runs"] if x is not None]
            median = f"{statistics.median(ratios):.3f}" if ratios else "-"
            lines.append(f"| {r['conns']:,} | {r['server']} | {first[r['conns']]} | "
                         f"{', '.join(f'{x:.3f}' for x in ratios)} | {median} |")
        lines.append("")
    if data.get("targets"):
        lines += ["## targets", "", table_targets(data["targets"], "measured (ratios in this run)", "-"), ""]
    lines += ["## correctness checks", "",
              "Every server started was checked first (exact echo of text and binary messages of 17 B to "
              "200 KB; for broadcast, two subscribers receiving a publisher's messages): " + _checks_text(data), ""]
    return lines


def _cluster_lines(data: dict[str, Any], out: pathlib.Path) -> list[str]:
    rows = data["rows"]
    m = data.get("machine", {})
    k = data.get("kernel", {})
    lines = [f"# wsrelay cluster benchmark — {data.get('started', '')}", "",
             f"`{data.get('command', '')}`", "",
             f"{_machine_text(m)} per process, load average at start "
             f"{' '.join(m.get('loadavg_at_start', []))}"
             + (f", at the end {' '.join(data['loadavg_at_end'])}" if data.get("loadavg_at_end") else "")
             + (f"; wsrelay at {m['git']}" if m.get("git") else "")
             + ". Kernel: ephemeral ports " + "–".join(str(x) for x in k.get("ip_local_port_range", []))
             + f", somaxconn {k.get('somaxconn')}, tcp_max_syn_backlog {k.get('tcp_max_syn_backlog')}, "
             f"nf_conntrack_max {k.get('conntrack_max', '-')}, file-max {k.get('file_max')}.", "",
             "The load generator runs on the same machine as every server process: on 2 cores, the workers, "
             "the broker and the load generator share them. `÷ 1 process` is the cluster figure over the "
             "single process's measured in the same run (rates: > 1 is faster; CPU and KiB: > 1 costs more)."
             + _repeat_text(data, ""), ""]
    lines += _sections(rows, CLUSTER_TABLES, out / "cluster-{}.png", lambda scenario: [CLUSTER_NOTES[scenario], ""],
                       lambda scenario, sub: _idle_processes_lines(sub) if scenario == "idle" else [])
    if data.get("targets"):
        lines += ["## targets", "", table_targets(data["targets"], "measured (this run)", "not run"), ""]
    if data.get("checks") is not None and any(r["scenario"] != "hop" for r in rows):
        lines += ["## correctness checks", "",
                  "Every server started was checked first (exact echo of text and binary messages of 17 B to "
                  "200 KB): " + _checks_text(data), ""]
    return lines


def _idle_processes_lines(idle: list[Row]) -> list[str]:
    """Per process of the largest idle run over workers, and the kernel with its connections open."""
    biggest = max((r for r in idle if r.get("workers") and r.get("processes_open")),
                  key=lambda r: r["conns"], default=None)
    if biggest is None:
        return []
    lines = [f"Per process at {biggest['conns']:,} connections over {biggest['workers']} workers:", "",
             cluster_table_idle_processes(biggest), ""]
    ko = biggest.get("kernel_open", {})
    kb = biggest.get("kernel_before", {})
    if ko:
        lines += [f"Kernel with them open: {ko.get('tcp', {}).get('inuse', '?'):,} TCP sockets in use "
                  f"(before: {kb.get('tcp', {}).get('inuse', '?'):,}), conntrack entries "
                  f"{ko.get('conntrack', '-')} of {ko.get('conntrack_max', '-')}, open files "
                  f"{(ko.get('file_nr') or ['?'])[0]:,}; machine memory used per connection "
                  f"(server, load generator and kernel): {_f(biggest.get('machine_kib_per_conn'), 1)} "
                  "KiB.", ""]
    return lines
