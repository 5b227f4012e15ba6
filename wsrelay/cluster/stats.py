"""The transport's counters, the one list of them (``COUNTERS``: /metrics is
derived from it), and its trouble: what goes wrong is counted and logged
through the core's ``LimitedLog``, at most one line per kind per second, so a
flood from the bus cannot flood the log."""

from __future__ import annotations

import dataclasses
import logging

from .._core.stats import LimitedLog

log = logging.getLogger("wsrelay.cluster")


@dataclasses.dataclass
class Counters:
    """Plain integers; ``COUNTERS`` names and documents each one."""

    messages_out: int = 0
    bytes_out: int = 0
    batches_out: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    batches_in: int = 0
    node_up_events: int = 0
    node_down_events: int = 0
    stream_resets: int = 0
    malformed: int = 0
    undeliverable: int = 0
    refused: int = 0
    hook_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# (attribute of Counters, Prometheus name, help): the one list of them.
COUNTERS = (
    ("messages_out", "wsrelay_cluster_messages_out", "Records (sends, signals, frames) sent to other nodes"),
    ("bytes_out", "wsrelay_cluster_bytes_out", "Bytes of batches published to other nodes"),
    ("batches_out", "wsrelay_cluster_batches_out", "Batches published to other nodes"),
    ("messages_in", "wsrelay_cluster_messages_in", "Records received from other nodes"),
    ("bytes_in", "wsrelay_cluster_bytes_in", "Bytes of batches received from other nodes"),
    ("batches_in", "wsrelay_cluster_batches_in", "Batches received from other nodes"),
    ("node_up_events", "wsrelay_cluster_node_up_events", "Peers that came up (or back)"),
    ("node_down_events", "wsrelay_cluster_node_down_events", "Peers lost (noconnection)"),
    ("stream_resets", "wsrelay_cluster_stream_resets", "Node-to-node sessions restarted after a gap"),
    ("malformed", "wsrelay_cluster_malformed", "Messages from the bus dropped as malformed"),
    ("undeliverable", "wsrelay_cluster_undeliverable",
     "Records lost: not published (bus away too long), or arrived for a lost session"),
    ("refused", "wsrelay_cluster_refused", "Sends, signals and frames refused: destination node down or unknown"),
    ("hook_errors", "wsrelay_cluster_hook_errors", "Records whose delivery to the core raised"),
)


class Trouble:
    """What goes wrong on the bus or in the core's hooks, for one transport:
    counted in ``counters``, and logged at most once per kind per second
    (the line let through says how many of its kind were held back)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self._log = LimitedLog(log.name)

    def warning(self, kind: str, message: str) -> None:
        self._log.warning(kind, message)

    def malformed(self, what: str) -> None:
        self.counters.malformed += 1
        self._log.warning("malformed", f"cluster: {what}")

    def hook_failed(self, name: str) -> None:
        # Each with its traceback, not rate-limited: a hook that raises is a
        # bug in the core, not trouble from the bus.
        self.counters.hook_errors += 1
        log.exception("cluster: hooks.%s raised", name)
