from .pid cimport Pid


cdef class RelaySpec:
    cdef readonly Pid target_pid
    cdef readonly str message_topic
    cdef readonly double heartbeat_interval
    cdef readonly object metadata


cdef dict parse_control(object payload)
