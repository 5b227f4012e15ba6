"""The cluster results (``python -m bench cluster``) as Markdown tables, PNG
plots and the targets of the cluster issue, each cluster figure next to the
single process measured in the same run."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any, Optional

from .report import _errors, _f, _ratio, _spread, _table


def _label(r: dict[str, Any]) -> str:
    w = r.get("workers") or 0
    return "1 process" if not w else f"{w} worker{'s' if w > 1 else ''}"


def _ref(rows: list[dict[str, Any]], r: dict[str, Any], match: tuple[str, ...]) -> Optional[dict[str, Any]]:
    """The single-process row measured alike (the same ``match`` fields), or
    the single-process row with the most connections when none is."""
    singles = [x for x in rows if not x.get("workers") and not x.get("failed")]
    same = [x for x in singles if all(x.get(k) == r.get(k) for k in match)]
    if same:
        return same[0]
    return max(singles, key=lambda x: x.get("conns") or x.get("subscribers") or 0, default=None)


def _vs(rows: list[dict[str, Any]], r: dict[str, Any], key: str, match: tuple[str, ...]) -> str:
    if not r.get("workers"):
        return "1"
    ref = _ref(rows, r, match)
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


def table_idle(rows: list[dict[str, Any]]) -> str:
    header = ["conns", "server", "open (clients)", "open (server sockets)", "per worker", "handshakes/s",
              "÷ 1 process", "server CPU µs/handshake", "÷ 1 process", "loadgen CPU µs/handshake",
              "RSS before MiB", "RSS open MiB", "KiB/conn", "÷ 1 process", "KiB/conn incl. base",
              "PSS KiB/conn", "errors"]
    lines = []
    for r in rows:
        lines.append([
            _f(r["conns"]), _label(r), _f(r.get("connected")), _f(r.get("server_open")), _per_worker(r),
            _f(r.get("handshakes_per_s")) + _spread(r), _vs(rows, r, "handshakes_per_s", ("conns",)),
            _f(r.get("cpu_us_per_handshake"), 0), _vs(rows, r, "cpu_us_per_handshake", ("conns",)),
            _f(r.get("client_cpu_us_per_handshake"), 0), _f(r.get("rss_before_mib"), 1),
            _f(r.get("rss_with_mib"), 1), _f(r.get("kib_per_conn"), 2), _vs(rows, r, "kib_per_conn", ("conns",)),
            _f(r.get("kib_per_conn_total"), 2), _f(r.get("pss_kib_per_conn"), 2), _errors(r),
        ])
    return _table(header, lines)


def table_idle_processes(r: dict[str, Any]) -> str:
    before = {p["role"]: p for p in r.get("processes_before") or []}
    lines = []
    for p in r.get("processes_open") or []:
        b = before.get(p["role"], {})
        lines.append([p["role"], _f(b.get("rss", 0) / 2**20, 1), _f(p["rss"] / 2**20, 1),
                      _f((p["rss"] - b.get("rss", 0)) / 2**20, 1), _f((p.get("pss") or 0) / 2**20, 1),
                      _f(p["sockets"] - b.get("sockets", 0)), _f(p["cpu_s"] - b.get("cpu_s", 0), 2)])
    return _table(["process", "RSS before MiB", "RSS open MiB", "grew MiB", "PSS open MiB", "sockets opened",
                   "CPU s (connecting, settling)"], lines)


def table_echo(rows: list[dict[str, Any]]) -> str:
    header = ["size B", "conns", "inflight", "server", "msgs/s", "÷ 1 process", "p50 ms", "p99 ms",
              "server CPU µs/msg", "÷ 1 process", "server syscalls/msg", "server CPU %", "loadgen CPU %",
              "workers' CPU, broker", "errors"]
    match = ("size", "conns", "inflight")
    lines = []
    for r in rows:
        lines.append([
            _f(r["size"]), _f(r["conns"]), _f(r["inflight"]), _label(r),
            _f(r.get("msgs_per_s")) + _spread(r), _vs(rows, r, "msgs_per_s", match),
            _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2), _f(r.get("cpu_us_per_msg"), 1),
            _vs(rows, r, "cpu_us_per_msg", match), _per_msg(r, "server_syscalls", "messages"),
            _f(r.get("server_cpu_pct"), 0), _f(r.get("client_cpu_pct"), 0),
            _window_spread(r) if r.get("workers") else "-", _errors(r),
        ])
    return _table(header, lines)


def table_handshakes(rows: list[dict[str, Any]]) -> str:
    header = ["conns", "server", "open", "handshakes/s", "÷ 1 process", "hs p99 ms", "server CPU µs/handshake",
              "÷ 1 process", "loadgen CPU µs/handshake", "server CPU %", "loadgen CPU %", "errors"]
    lines = []
    for r in rows:
        lines.append([
            _f(r["conns"]), _label(r), _f(r.get("connected")), _f(r.get("handshakes_per_s")) + _spread(r),
            _vs(rows, r, "handshakes_per_s", ("conns",)), _f(r.get("hs_p99_ms"), 1),
            _f(r.get("cpu_us_per_handshake"), 0), _vs(rows, r, "cpu_us_per_handshake", ("conns",)),
            _f(r.get("client_cpu_us_per_handshake"), 0), _f(r.get("server_cpu_pct"), 0),
            _f(r.get("client_cpu_pct"), 0), _errors(r),
        ])
    return _table(header, lines)


def table_hop(rows: list[dict[str, Any]]) -> str:
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


def table_broadcast(rows: list[dict[str, Any]]) -> str:
    header = ["subscribers", "server", "deliveries/s", "÷ 1 process", "p50 ms", "p99 ms", "server CPU µs/delivery",
              "÷ 1 process", "server CPU %", "loadgen CPU %", "errors"]
    lines = []
    for r in rows:
        lines.append([
            _f(r["subscribers"]), _label(r), _f(r.get("deliveries_per_s")) + _spread(r),
            _vs(rows, r, "deliveries_per_s", ()), _f(r.get("p50_ms"), 2), _f(r.get("p99_ms"), 2),
            _f(r.get("cpu_us_per_delivery"), 2), _vs(rows, r, "cpu_us_per_delivery", ()),
            _f(r.get("server_cpu_pct"), 0), _f(r.get("client_cpu_pct"), 0), _errors(r),
        ])
    return _table(header, lines)


TABLES = {"idle": table_idle, "echo": table_echo, "handshakes": table_handshakes, "hop": table_hop,
          "broadcast": table_broadcast}

NOTES = {
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
                 "(bench/servers/wsrelay_cluster_app), against the single process at its own count; server CPU "
                 "per delivery summed over every worker, the supervisor and nats-server.",
}


# -- targets -------------------------------------------------------------------------------------------


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, at: str, measured: str, met: Optional[bool]) -> None:
        out.append({"target": target, "at": at, "measured": measured, "met": met})

    idle = [r for r in rows if r["scenario"] == "idle" and r.get("workers") and not r.get("failed")]
    if idle:
        r = max(idle, key=lambda x: x["conns"])
        ref = _ref([x for x in rows if x["scenario"] == "idle"], r, ("conns",))
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


def table_targets(items: list[dict[str, Any]]) -> str:
    lines = [[t["target"], t["at"], t["measured"], {True: "met", False: "**missed**", None: "not run"}[t["met"]]]
             for t in items]
    return _table(["target", "measured at", "measured (this run)", "result"], lines)


# -- plots ------------------------------------------------------------------------------------------------


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 0.5, 3.6), squeeze=False)
    return fig, axes[0]


def _save(fig: Any, path: pathlib.Path, title: str) -> pathlib.Path:
    import matplotlib.pyplot as plt

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


def plots(data: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    rows = [r for r in data["rows"] if not r.get("failed")]
    made = []
    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        fig, axes = _figure(2)
        labels = [f"{_label(r)}\n{r['conns']:,}" for r in idle]
        colors = ["C0" if not r.get("workers") else "C1" for r in idle]
        axes[0].bar(labels, [r.get("kib_per_conn") or 0 for r in idle], color=colors)
        axes[0].axhline(8.0, color="red", linestyle="--", linewidth=1, label="target 8 KiB")
        axes[0].set_ylabel("server KiB per connection\n(RSS summed over the tree)")
        axes[0].legend(fontsize=8)
        axes[1].bar(labels, [r.get("handshakes_per_s") or 0 for r in idle], color=colors)
        axes[1].set_ylabel("handshakes/s")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        made.append(_save(fig, out / "cluster-idle.png", "idle connections, a process each"))
    echo = [r for r in rows if r["scenario"] == "echo"]
    if echo:
        fig, axes = _figure(3)
        fmt = lambda p: f"{p[0]}×{p[1]}×{p[2]} B"  # noqa: E731
        for ax, (metric, ylabel) in zip(axes, (("msgs_per_s", "msgs/s"), ("cpu_us_per_msg", "server CPU µs/msg"),
                                               ("p99_ms", "p99 ms"))):
            labels, series = _point_series(echo, ("conns", "inflight", "size"), metric, fmt)
            _bars(ax, labels, series, ylabel)
        axes[0].legend(fontsize=8)
        made.append(_save(fig, out / "cluster-echo.png", "relay echo: workers against one process "
                                                         "(conns × in flight × size)"))
    hs = [r for r in rows if r["scenario"] == "handshakes"]
    if hs:
        fig, axes = _figure(2)
        for ax, (metric, ylabel) in zip(axes, (("handshakes_per_s", "handshakes/s"),
                                               ("cpu_us_per_handshake", "server CPU µs/handshake"))):
            labels, series = _point_series(hs, ("conns",), metric, lambda p: f"{p[0]:,} conns")
            _bars(ax, labels, series, ylabel)
        axes[0].legend(fontsize=8)
        made.append(_save(fig, out / "cluster-handshakes.png", "handshakes: workers against one process"))
    hop = [r for r in rows if r["scenario"] == "hop"]
    if hop:
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
        for ax in axes:
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        made.append(_save(fig, out / "cluster-hop.png", "node-to-node hop against the same on one node"))
    bc = [r for r in rows if r["scenario"] == "broadcast"]
    if bc:
        fig, axes = _figure(2)
        labels = [f"{_label(r)}\n{r['subscribers']:,}" for r in bc]
        axes[0].bar(labels, [r.get("deliveries_per_s") or 0 for r in bc])
        axes[0].set_ylabel("deliveries/s")
        axes[1].bar(labels, [r.get("cpu_us_per_delivery") or 0 for r in bc])
        axes[1].set_ylabel("server CPU µs/delivery")
        made.append(_save(fig, out / "cluster-broadcast.png", "broadcast: one publisher, subscribers over workers"))
    return made


def write(data: dict[str, Any], out: pathlib.Path, images: Optional[pathlib.Path] = None) -> pathlib.Path:
    rows = data["rows"]
    made = plots(data, out)
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)
        for p in made:
            shutil.copy(p, images / f"bench-{p.name}")
    m = data.get("machine", {})
    k = data.get("kernel", {})
    lines = [f"# wsrelay cluster benchmark — {data.get('started', '')}", "",
             f"`{data.get('command', '')}`", "",
             f"Machine: {m.get('cpus')} CPUs ({m.get('cpu', '?')}), Linux {m.get('kernel')}, Python {m.get('python')}, "
             f"open files {m.get('nofile')} per process, load average at start "
             f"{' '.join(m.get('loadavg_at_start', []))}"
             + (f", at the end {' '.join(data['loadavg_at_end'])}" if data.get("loadavg_at_end") else "")
             + (f"; wsrelay at {m['git']}" if m.get("git") else "")
             + ". Kernel: ephemeral ports " + "–".join(str(x) for x in k.get("ip_local_port_range", []))
             + f", somaxconn {k.get('somaxconn')}, tcp_max_syn_backlog {k.get('tcp_max_syn_backlog')}, "
             f"nf_conntrack_max {k.get('conntrack_max', '-')}, file-max {k.get('file_max')}.", "",
             "The load generator runs on the same machine as every server process: on 2 cores, the workers, "
             "the broker and the load generator share them. `÷ 1 process` is the cluster figure over the "
             "single process's measured in the same run (rates: > 1 is faster; CPU and KiB: > 1 costs more)."
             + (f" Medians of {data['options']['repeat']} runs per row, servers interleaved; ±x% is half the "
                "range of the runs." if data.get("options", {}).get("repeat", 1) > 1 else ""), ""]
    for scenario, render in TABLES.items():
        sub = [r for r in rows if r["scenario"] == scenario]
        if not sub:
            continue
        lines += [f"## {scenario}", "", NOTES[scenario], "", render(sub), ""]
        if scenario == "idle":
            biggest = max((r for r in sub if r.get("workers") and r.get("processes_open")),
                          key=lambda r: r["conns"], default=None)
            if biggest is not None:
                lines += [f"Per process at {biggest['conns']:,} connections over {biggest['workers']} workers:", "",
                          table_idle_processes(biggest), ""]
                ko = biggest.get("kernel_open", {})
                kb = biggest.get("kernel_before", {})
                if ko:
                    lines += [f"Kernel with them open: {ko.get('tcp', {}).get('inuse', '?'):,} TCP sockets in use "
                              f"(before: {kb.get('tcp', {}).get('inuse', '?'):,}), conntrack entries "
                              f"{ko.get('conntrack', '-')} of {ko.get('conntrack_max', '-')}, open files "
                              f"{(ko.get('file_nr') or ['?'])[0]:,}; machine memory used per connection "
                              f"(server, load generator and kernel): {_f(biggest.get('machine_kib_per_conn'), 1)} "
                              "KiB.", ""]
        png = out / f"cluster-{scenario}.png"
        if png.exists():
            lines += [f"![{scenario}]({png.name})", ""]
    if data.get("targets"):
        lines += ["## targets", "", table_targets(data["targets"]), ""]
    failed_checks = {name: v for name, v in (data.get("checks") or {}).items() if v}
    if data.get("checks") is not None and any(r["scenario"] != "hop" for r in rows):
        lines += ["## correctness checks", "",
                  "Every server started was checked first (exact echo of text and binary messages of 17 B to "
                  "200 KB): " + ("all passed." if not failed_checks else
                                 "; ".join(f"{name}: {', '.join(v)}" for name, v in failed_checks.items())), ""]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
