"""One /metrics for every worker of a machine: each node's Prometheus text,
gathered over the bus (Transport.gather_metrics), merged into one exposition
whose every series carries a ``node`` label, plus ``wsrelay_cluster_node_up``
(0 for a node that did not answer in time)."""

from __future__ import annotations

from typing import Iterator, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families


def merge_expositions(bodies: dict[str, Optional[bytes]]) -> bytes:
    """``bodies``: node name -> its metrics text (None: it did not answer)."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily("wsrelay_cluster_node_up", "1 if the node answered this scrape, 0 if it did not",
                           labels=["node"])
    for node, body in sorted(bodies.items()):
        up.add_metric([node], 0 if body is None else 1)
        if body is None:
            continue
        for family in text_string_to_metric_families(body.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, "node": node}, sample.value, sample.timestamp)

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()
            yield up

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)
