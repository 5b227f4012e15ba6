# cython: language_level=3
"""Counters bumped on the hot paths, read only by /metrics; and logging that
says every drop without flooding the log.

``COUNTERS`` is the one list of what is counted: each Counters field with the
Prometheus family it is reported in (a family may be split by a label) and
its help text. wsrelay.metrics generates /metrics from it; a field missing
from the table, or a table row naming no field, fails at import.
"""

import logging

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from .vocab import DROP_REASONS

# (field, metric family, (label, value) or None, help of the family)
COUNTERS = (
    ("connections_opened", "wsrelay_connections", None, "WebSocket connections accepted"),
    ("connections_closed", "wsrelay_connections_closed", None, "WebSocket connections ended"),
    ("ws_messages_in", "wsrelay_messages_in", None, "Client messages relayed to targets"),
    ("ws_bytes_in", "wsrelay_bytes_in", None,
     "Payload bytes of client messages relayed to targets, as received (compressed size if compressed)"),
    ("ws_messages_out", "wsrelay_messages_out", None, "Frames written to clients"),
    ("ws_bytes_out", "wsrelay_bytes_out", None,
     "Payload bytes of frames written to clients, as written (compressed size if compressed)"),
    ("frames_dropped_closing", "wsrelay_frames_dropped", ("reason", "closing"),
     "Frames for clients not written: the connection was closing (closing), over its write-buffer "
     "limit (slow_consumer), or gone before the queued frames were flushed (unwritten)"),
    ("frames_dropped_slow_consumer", "wsrelay_frames_dropped", ("reason", "slow_consumer"), None),
    ("frames_dropped_unwritten", "wsrelay_frames_dropped", ("reason", "unwritten"), None),
    ("client_messages_dropped_target_gone", "wsrelay_client_messages_dropped", ("reason", "target_gone"),
     "Client messages not delivered: their target had exited (target_gone), the connection was closing "
     "and the target's mailbox full (closing), or the client went while they waited for room (connection_lost)"),
    ("client_messages_dropped_closing", "wsrelay_client_messages_dropped", ("reason", "closing"), None),
    ("client_messages_dropped_connection_lost", "wsrelay_client_messages_dropped",
     ("reason", "connection_lost"), None),
    ("mailbox_full", "wsrelay_mailbox_full", None, "Sends refused with MailboxFull"),
    ("relay_backpressure_pauses", "wsrelay_relay_backpressure_pauses", None,
     "Times a connection stopped reading because its target's mailbox was full"),
    ("slow_consumer_closes", "wsrelay_slow_consumer_closes", None,
     "Connections closed with 1008: more than WSRELAY_WRITE_BUFFER_LIMIT unsent"),
    ("target_stalled_closes", "wsrelay_target_stalled_closes", None,
     "Connections closed with 1013: paused for WSRELAY_STALL_TIMEOUT with no progress of their target"),
    ("ping_timeouts", "wsrelay_ping_timeouts", None, "Connections closed because a ping went unanswered"),
    ("heartbeats_skipped", "wsrelay_heartbeats_skipped", None,
     "Heartbeats not sent because the target's mailbox was full"),
    ("system_events_dropped", "wsrelay_system_events_dropped", None, "Events dropped at the full system inbox"),
    # One row per drop reason (vocab.DROP_REASONS), the family's help on the first.
    *((f"cluster_dropped_{reason}", "wsrelay_cluster_dropped", ("reason", reason), None if i else
       "Cross-node traffic not delivered: its destination was not alive here (noproc), a send from another node "
       "found a full mailbox (mailbox_full), its destination's node was down or unknown (unreachable), or it was "
       "not what its destination takes (rejected: a frame for a process that is no connection, a refused ws.* "
       "payload)")
      for i, reason in enumerate(DROP_REASONS)),
    ("cluster_node_losses", "wsrelay_cluster_node_losses", None,
     "Other nodes found lost (down, unreachable, or a gap in their stream): their monitors and links fired"),
    ("runtime_errors", "wsrelay_runtime_errors", None,
     "Errors caught in the runtime's own bookkeeping (the exit cascade, the sweep), logged and survived"),
    ("processes_spawned", "wsrelay_processes_spawned", None, "Processes spawned"),
    ("processes_exited", "wsrelay_processes_exited", None, "Processes (and connections) ended"),
    ("processes_crashed", "wsrelay_processes_crashed", None, "Processes that raised"),
    ("messages_sent", "wsrelay_messages_sent", None, "Messages queued into mailboxes"),
    ("channel_publications", "wsrelay_channel_publications", ("origin", "local"),
     "Channel publications: made on this node (local), or arriving from another node for subscribers here "
     "(remote)"),
    ("channel_publications_remote", "wsrelay_channel_publications", ("origin", "remote"), None),
    ("channel_deliveries", "wsrelay_channel_deliveries", None,
     "Channel publications offered to this node's subscribers (one per subscriber)"),
    ("history_recovered", "wsrelay_history_recoveries", ("outcome", "recovered"),
     "Subscriptions to channels with history that named a position: given every publication after it "
     "(recovered), or only live ones (not_recovered: another epoch, too many or no longer kept)"),
    ("history_not_recovered", "wsrelay_history_recoveries", ("outcome", "not_recovered"), None),
    ("history_recover_malformed", "wsrelay_history_recover_malformed", None,
     "Upgrade requests whose recover parameter was malformed, and ignored"),
    ("history_write_failures", "wsrelay_history_write_failures", None,
     "Publications a channel's keeper could not store in JetStream (delivered all the same)"),
    ("call_replies_dropped", "wsrelay_call_replies_dropped", None,
     "Replies to calls that had already ended (timed out, caller cancelled, or answered before): dropped"),
)


cdef class Counters:
    def as_dict(self):
        return {field: getattr(self, field) for field, _, _, _ in COUNTERS}


def _check_table():
    fields = {name for name, value in vars(Counters).items() if type(value).__name__ == "getset_descriptor"}
    listed = [row[0] for row in COUNTERS]
    if len(set(listed)) != len(listed) or set(listed) != fields:
        raise ImportError(f"stats.COUNTERS and the Counters fields differ: {sorted(set(listed) ^ fields)}")


_check_table()


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class LimitedLog:
    """At most one line per kind per ``interval`` seconds; the line that is
    let through says how many of its kind were held back before it.

    Callers ask first and format only when allowed, so a drop counted a
    million times a second costs a clock read each, not a formatted string::

        if log.allow("slow_consumer"):
            log.write(logging.WARNING, f"closing {pid}: ...")
    """

    def __init__(self, str name not None, double interval=1.0):
        self.logger = logging.getLogger(name)
        self.interval = interval
        self._last = {}
        self._held = 0

    cdef bint allow(self, str kind) except -1:
        cdef double now = monotonic()
        cdef list state = self._last.get(kind)
        if state is None:
            self._last[kind] = [now, 0]
            self._held = 0
            return True
        if now - <double>state[0] < self.interval:
            state[1] += 1
            return False
        self._held = state[1]
        state[0] = now
        state[1] = 0
        return True

    cdef int write(self, int level, str message) except -1:
        if self._held:
            message = f"{message} (and {self._held} more like this since the last such line)"
            self._held = 0
        self.logger.log(level, "%s", message)
        return 0

    def forget(self):
        """Start every kind's interval afresh (for tests that count lines)."""
        self._last.clear()
        self._held = 0

    def warning(self, str kind, str message):
        if self.allow(kind):
            self.write(logging.WARNING, message)

    def error(self, str kind, str message):
        if self.allow(kind):
            self.write(logging.ERROR, message)
