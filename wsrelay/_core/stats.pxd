ctypedef unsigned long long counter_t


cdef class Counters:
    cdef public counter_t processes_spawned
    cdef public counter_t processes_exited
    cdef public counter_t processes_crashed
    cdef public counter_t messages_sent
    cdef public counter_t mailbox_full
    cdef public counter_t system_events_dropped
    cdef public counter_t connections_opened
    cdef public counter_t connections_closed
    cdef public counter_t ws_messages_in
    cdef public counter_t ws_bytes_in
    cdef public counter_t ws_messages_out
    cdef public counter_t ws_bytes_out
    cdef public counter_t ws_frames_dropped_closing
    cdef public counter_t relay_backpressure_pauses
    cdef public counter_t slow_consumer_closes
    cdef public counter_t heartbeats_coalesced
