ctypedef unsigned long long counter_t


cdef class Counters:
    # Every field is listed, with its metric name and help, in COUNTERS
    # (stats.pyx); /metrics is generated from that table.
    cdef public counter_t processes_spawned
    cdef public counter_t processes_exited
    cdef public counter_t processes_crashed
    cdef public counter_t messages_sent
    cdef public counter_t call_replies_dropped
    cdef public counter_t channel_publications
    cdef public counter_t channel_publications_remote
    cdef public counter_t channel_deliveries
    cdef public counter_t history_recovered
    cdef public counter_t history_not_recovered
    cdef public counter_t history_recover_malformed
    cdef public counter_t history_write_failures
    cdef public counter_t mailbox_full
    cdef public counter_t system_events_dropped
    cdef public counter_t runtime_errors
    cdef public counter_t connections_opened
    cdef public counter_t connections_closed
    cdef public counter_t ws_messages_in
    cdef public counter_t ws_bytes_in
    cdef public counter_t ws_messages_out
    cdef public counter_t ws_bytes_out
    cdef public counter_t frames_dropped_closing
    cdef public counter_t frames_dropped_slow_consumer
    cdef public counter_t frames_dropped_unwritten
    cdef public counter_t client_messages_dropped_target_gone
    cdef public counter_t client_messages_dropped_closing
    cdef public counter_t client_messages_dropped_connection_lost
    cdef public counter_t relay_backpressure_pauses
    cdef public counter_t slow_consumer_closes
    cdef public counter_t target_stalled_closes
    cdef public counter_t ping_timeouts
    cdef public counter_t heartbeats_skipped
    cdef public counter_t cluster_dropped_noproc
    cdef public counter_t cluster_dropped_mailbox_full
    cdef public counter_t cluster_dropped_unreachable
    cdef public counter_t cluster_dropped_rejected
    cdef public counter_t cluster_node_losses


cdef class LimitedLog:
    cdef object logger
    cdef double interval
    cdef dict _last
    cdef bint allow(self, str kind) except -1
    cdef int write(self, int level, str message) except -1
    cdef Py_ssize_t _held


cdef double monotonic() noexcept nogil
