"""Results as Markdown tables, PNG plots (matplotlib, Agg) and the targets of
issue 4 checked against the rows of one run."""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
from typing import Any, Optional

SERVER_ORDER = ("wsrelay", "wsrelay@base", "picows", "websockets", "aiohttp", "node")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        import resource

        info["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    versions = {}
    for mod in ("picows", "uvloop", "websockets", "aiohttp"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:
            pass
    try:
        from .servers import NODE_DIR

        out = subprocess.run(["node", "-e", "process.stdout.write(process.version + ' ws ' + "
                              "require('ws/package.json').version)"], cwd=NODE_DIR, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            versions["node"] = out.stdout.strip()
    except Exception:
        pass
    info["versions"] = versions
    try:
        from .servers import ROOT

        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "wsrelay"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        if head:
            info["git"] = head + (f" + {len(dirty.splitlines())} uncommitted file(s) in wsrelay/" if dirty else "")
    except Exception:
        pass
    return info


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


def _errors(row: dict[str, Any]) -> str:
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


def _rate_table(rows: list[dict[str, Any]], group_by: tuple[str, ...], lead: list[tuple[str, str]],
                rate: tuple[str, str], cpu: tuple[str, str, int]) -> str:
    """A throughput table: per group of rows measured alike, the ``lead``
    columns (header, field), then the rate, its ratio to wsrelay's, latency,
    server CPU per unit and its ratio, and CPU use and errors."""
    header = [h for h, _ in lead] + ["server", rate[0], "wsrelay ÷ this", "p50 ms", "p99 ms", cpu[0],
                                     "wsrelay ÷ this", "wire B/msg", "server CPU %", "loadgen CPU %", "errors"]
    rate_key, cpu_key, cpu_digits = rate[1], cpu[1], cpu[2]
    lines = []
    for _, group in _groups(rows, group_by):
        for r in group:
            ref = _reference(group, r)
            is_ref = r is ref
            lines.append([_f(r[field]) for _, field in lead] + [
                f"**{r['server']}**" if is_ref else r["server"],
                _f(r.get(rate_key)) + _spread(r),
                "1" if is_ref else _ratio(ref and ref.get(rate_key), r.get(rate_key)),
                _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2), _f(r.get(cpu_key), cpu_digits),
                "1" if is_ref else _ratio(ref and ref.get(cpu_key), r.get(cpu_key)),
                _f(r.get("wire_bytes_per_msg"), 0),
                _f(r.get("server_cpu_pct"), 0), _f(r.get("client_cpu_pct"), 0), _errors(r),
            ])
    return _table(header, lines)


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
    lines = []
    for _, group in _groups(rows, ("conns",)):
        for r in group:
            ref = _reference(group, r)
            is_ref = r is ref
            lines.append([
                _f(r["conns"]), f"**{r['server']}**" if is_ref else r["server"], _f(r.get("connected")),
                _f(r.get("handshakes_per_s")) + _spread(r),
                "1" if is_ref else _ratio(ref and ref.get("handshakes_per_s"), r.get("handshakes_per_s")),
                _f(r.get("hs_p99_ms"), 1), _f(r.get("cpu_us_per_handshake"), 0),
                "1" if is_ref else _ratio(ref and ref.get("cpu_us_per_handshake"), r.get("cpu_us_per_handshake")),
                _f(r.get("client_cpu_us_per_handshake"), 0), _f(r.get("rss_before_mib"), 1),
                _f(r.get("rss_with_mib"), 1), _f(r.get("kib_per_conn"), 2),
                "1" if is_ref else _ratio(ref and ref.get("kib_per_conn"), r.get("kib_per_conn")),
                _errors(r),
            ])
    return _table(header, lines)


def table_churn(rows: list[dict[str, Any]]) -> str:
    header = ["cycles", "server", "completed", "cycles/s", "wsrelay ÷ this", "cycle p99 ms", "server CPU µs/cycle",
              "loadgen CPU µs/cycle", "RSS cold MiB", "RSS before MiB", "RSS after MiB", "growth %", "errors"]
    lines = []
    for _, group in _groups(rows, ("cycles", "concurrency", "size")):
        ref = next((r for r in group if r["server"] == "wsrelay" and not r.get("failed")), None)
        for r in group:
            is_ref = r is ref
            lines.append([
                _f(r["cycles"]), f"**{r['server']}**" if is_ref else r["server"], _f(r.get("completed")),
                _f(r.get("cycles_per_s")) + _spread(r),
                "1" if is_ref else _ratio(ref and ref.get("cycles_per_s"), r.get("cycles_per_s")),
                _f(r.get("cycle_p99_ms"), 1), _f(r.get("cpu_us_per_cycle"), 0),
                _f(r.get("client_cpu_us_per_cycle"), 0), _f(r.get("rss_cold_mib"), 1),
                _f(r.get("rss_before_mib"), 1), _f(r.get("rss_after_mib"), 1), _f(r.get("rss_growth_pct"), 2),
                _errors(r),
            ])
    return _table(header, lines)


TABLES = {"echo": table_echo, "broadcast": table_broadcast, "connections": table_connections, "churn": table_churn}


# -- targets -------------------------------------------------------------------------------------------


def _row(rows: list[dict[str, Any]], server: str, **match: Any) -> Optional[dict[str, Any]]:
    for r in rows:
        if r["server"] == server and not r.get("failed") and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _largest(rows: list[dict[str, Any]], scenario: str, key: str) -> Optional[int]:
    values = [r[key] for r in rows if r["scenario"] == scenario and r["server"] == "wsrelay" and not r.get("failed")]
    return max(values) if values else None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 4's targets, judged on this run's rows (ratios within the run)."""
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


def table_targets(items: list[dict[str, Any]]) -> str:
    lines = [[t["target"], t["at"], t["measured"], {True: "met", False: "**missed**", None: "-"}[t["met"]]]
             for t in items]
    return _table(["target", "measured at", "measured (ratios in this run)", "result"], lines)


# -- plots ------------------------------------------------------------------------------------------------


def _plot(rows: list[dict[str, Any]], x: str, metrics: list[tuple[str, str]], path: pathlib.Path,
          title: str, facet: Optional[str] = None, logy: tuple[str, ...] = ()) -> Optional[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def plots(data: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
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


def write(data: dict[str, Any], out: pathlib.Path, images: Optional[pathlib.Path] = None) -> pathlib.Path:
    if data.get("suite") == "cluster":
        from . import cluster_report

        return cluster_report.write(data, out, images)
    rows = data["rows"]
    made = plots(data, out)
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)
        for p in made:
            shutil.copy(p, images / f"bench-{p.name}")
    m = data.get("machine", {})
    lines = [f"# wsrelay load benchmark — {data.get('started', '')}", "",
             f"`{data.get('command', '')}`", "",
             f"Machine: {m.get('cpus')} CPUs ({m.get('cpu', '?')}), Linux {m.get('kernel')}, Python {m.get('python')}, "
             f"open files {m.get('nofile')}, load average at start {' '.join(m.get('loadavg_at_start', []))}; "
             + (f"wsrelay at {m['git']}; " if m.get("git") else "")
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ".", "",
             "Ratios (`wsrelay ÷ this`) compare servers measured in this run: for rates > 1 means wsrelay "
             "is faster, for CPU µs and KiB > 1 means wsrelay costs more."
             + (f" Medians of {data['options']['repeat']} runs per row, servers interleaved; ±x% is half the "
                "range of the runs around the median." if data.get("options", {}).get("repeat", 1) > 1 else "")
             + (" wsrelay environment: " + ", ".join(f"`{k}={v}`" for k, v in data["wsrelay_env"].items()) + "."
                if data.get("wsrelay_env") else ""), ""]
    for scenario, render in TABLES.items():
        sub = [r for r in rows if r["scenario"] == scenario]
        if sub:
            lines += [f"## {scenario}", "", render(sub), ""]
            lines += _health_notes(sub)
            png = out / f"{scenario}.png"
            if png.exists():
                lines += [f"![{scenario}]({png.name})", ""]
    if data.get("targets"):
        lines += ["## targets", "", table_targets(data["targets"]), ""]
    failed_checks = {k: v for k, v in (data.get("checks") or {}).items() if v}
    lines += ["## correctness checks", "",
              "Every server started was checked first (exact echo of text and binary messages of 17 B to "
              "200 KB; for broadcast, two subscribers receiving a publisher's messages): "
              + ("all passed." if not failed_checks else
                 "; ".join(f"{k}: {', '.join(v)}" for k, v in failed_checks.items())), ""]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
