"""``GET /metrics``: Prometheus text exposition of the core's counters.

The counters are plain integers bumped in the Cython core; this collector
only reads them when scraped, so metrics cost nothing on the hot path. The
families are generated from the core's one list of counters
(``wsrelay._core.stats.COUNTERS``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._core.channels import here as channels_here
from ._core.history import logs as history_logs
from ._core.presence import here as presence_here
from ._core.runtime import node
from ._core.stats import COUNTERS


def _families() -> list[tuple[str, str, str | None, list[tuple[str, str | None]]]]:
    """(metric, help, label name, [(field, label value)]) per family, in
    COUNTERS order."""
    families: dict[str, tuple[str, str, str | None, list[tuple[str, str | None]]]] = {}
    for field, metric, label, doc in COUNTERS:
        if metric not in families:
            families[metric] = (metric, doc or "", label[0] if label else None, [])
        families[metric][3].append((field, label[1] if label else None))
    return list(families.values())


_FAMILIES = _families()


class _GatewayCollector:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        counters = node().counters
        for metric, doc, label, rows in _FAMILIES:
            if label is None:
                yield CounterMetricFamily(metric, doc, value=getattr(counters, rows[0][0]))
                continue
            family = CounterMetricFamily(metric, doc, labels=[label])
            for field, value in rows:
                family.add_metric([value], getattr(counters, field))
            yield family
        services = self.gateway.services.values()
        yield GaugeMetricFamily("wsrelay_connections_open", "Open WebSocket connections",
                                value=self.gateway.connection_count())
        yield GaugeMetricFamily("wsrelay_handshakes_pending", "Accepted sockets whose request head is not in yet",
                                value=sum(rt.handshakes.pending for rt in services))
        yield GaugeMetricFamily("wsrelay_processes_alive", "Live processes, connections and the system process",
                                value=node().process_count())
        logs, kept = history_logs()
        yield GaugeMetricFamily("wsrelay_history_channels", "Channels with a history on this node", value=logs)
        yield GaugeMetricFamily("wsrelay_history_bytes", "Bytes of publications the histories here keep",
                                value=kept)
        channels, subscriptions, users = channels_here()
        yield GaugeMetricFamily("wsrelay_channels", "Channels with subscribers on this node", value=channels)
        yield GaugeMetricFamily("wsrelay_channel_subscriptions", "Subscriptions of this node's connections",
                                value=subscriptions)
        yield GaugeMetricFamily("wsrelay_users", "Users with connections on this node", value=users)
        _, mine, theirs = presence_here()
        entries = GaugeMetricFamily("wsrelay_presence_entries", "Presence entries this node holds, by origin",
                                    labels=["origin"])
        entries.add_metric(["local"], mine)
        entries.add_metric(["remote"], theirs)
        yield entries
        transport = getattr(self.gateway, "transport", None)
        if transport is not None:
            from .cluster.stats import COUNTERS as CLUSTER_COUNTERS

            for field, metric, doc in CLUSTER_COUNTERS:
                yield CounterMetricFamily(metric, doc, value=getattr(transport.counters, field))
            peers = GaugeMetricFamily("wsrelay_cluster_peers", "Other nodes heard of, by state", labels=["state"])
            states = Counter(transport.peers().values())
            for state in ("up", "joining", "down"):
                peers.add_metric([state], states.get(state, 0))
            yield peers
        failures = CounterMetricFamily("wsrelay_handshake_failures", "Refused upgrade requests", labels=["reason"])
        totals: Counter[str] = Counter()
        for rt in services:
            totals.update(rt.handshakes.failures)
        for reason, count in sorted(totals.items()):
            failures.add_metric([reason], count)
        yield failures
        api = getattr(self.gateway, "api", None)
        if api is not None:
            yield from _api_families(api)


def _api_families(api: Any) -> Iterator[Metric]:
    """The server API's counters (wsrelay/api.py): requests by method and
    status, connections refused by reason, idempotency keys forgotten early."""
    from .api import REFUSALS

    requests = CounterMetricFamily("wsrelay_api_requests", "Server API requests answered, by method and status",
                                   labels=["method", "status"])
    for (method, status), count in sorted(api.requests.items()):
        requests.add_metric([method, str(status)], count)
    yield requests
    refused = CounterMetricFamily("wsrelay_api_refused", "Server API connections closed on a refused request",
                                  labels=["reason"])
    for reason in REFUSALS:
        refused.add_metric([reason], api.refused.get(reason, 0))
    yield refused
    yield CounterMetricFamily("wsrelay_api_idempotency_evicted",
                              "Idempotency keys forgotten before their 5 minutes, to stay within the cap",
                              value=getattr(api.keys, "evicted", 0))
    yield GaugeMetricFamily("wsrelay_api_connections_open", "Open server API connections",
                            value=len(api.connections))


def render(gateway: Any) -> tuple[bytes, str]:
    registry = getattr(gateway, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_GatewayCollector(gateway))  # type: ignore[arg-type]
        gateway._metrics_registry = registry
    return generate_latest(registry), CONTENT_TYPE_LATEST
