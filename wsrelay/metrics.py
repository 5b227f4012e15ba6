"""``GET /metrics``: Prometheus text exposition of the core's counters.

The counters are plain integers bumped in the Cython core; this collector
only reads them when scraped, so metrics cost nothing on the hot path.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._core.runtime import node

_COUNTERS = [
    ("connections_opened", "wsrelay_connections", "WebSocket connections accepted"),
    ("connections_closed", "wsrelay_connections_closed", "WebSocket connections ended"),
    ("ws_messages_in", "wsrelay_messages_in", "Client messages relayed to targets"),
    ("ws_bytes_in", "wsrelay_bytes_in", "Payload bytes of client messages"),
    ("ws_messages_out", "wsrelay_messages_out", "Messages sent to clients"),
    ("ws_bytes_out", "wsrelay_bytes_out", "Payload bytes sent to clients"),
    ("ws_frames_dropped_closing", "wsrelay_sends_after_close", "ws.send to a closing connection (not sent)"),
    ("mailbox_full", "wsrelay_mailbox_full", "Sends refused because the mailbox was full"),
    ("relay_backpressure_pauses", "wsrelay_relay_backpressure_pauses",
     "Times a connection stopped reading because its target's mailbox was full"),
    ("slow_consumer_closes", "wsrelay_slow_consumer_closes", "Connections closed with 1008 as slow consumers"),
    ("heartbeats_coalesced", "wsrelay_heartbeats_coalesced", "Heartbeats merged while the target was full"),
    ("system_events_dropped", "wsrelay_system_events_dropped", "Events dropped at the full system inbox"),
    ("processes_spawned", "wsrelay_processes_spawned", "Processes spawned"),
    ("processes_exited", "wsrelay_processes_exited", "Processes (and connections) ended"),
    ("processes_crashed", "wsrelay_processes_crashed", "Processes that raised"),
    ("messages_sent", "wsrelay_messages_sent", "Messages queued into mailboxes"),
]


class _GatewayCollector:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        counters = node().counters.as_dict()
        for key, name, doc in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=counters[key])
        yield GaugeMetricFamily("wsrelay_connections_open", "Open WebSocket connections",
                                value=self.gateway.connection_count())
        yield GaugeMetricFamily("wsrelay_processes_alive", "Live processes, connections and the system process",
                                value=node().process_count())
        failures = CounterMetricFamily("wsrelay_handshake_failures", "Refused upgrade requests", labels=["reason"])
        totals: Counter[str] = Counter()
        for rt in self.gateway.services.values():
            totals.update(rt.handshake_failures)
        for reason, count in sorted(totals.items()):
            failures.add_metric([reason], count)
        yield failures


def render(gateway: Any) -> tuple[bytes, str]:
    registry = getattr(gateway, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_GatewayCollector(gateway))  # type: ignore[arg-type]
        gateway._metrics_registry = registry
    return generate_latest(registry), CONTENT_TYPE_LATEST
