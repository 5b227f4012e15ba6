from .pid cimport Pid


cdef class RelaySpec:
    cdef readonly Pid target_pid
    cdef readonly str message_topic
    cdef readonly double heartbeat_interval
    cdef readonly object metadata
    # {name: info or None} granted by the handler, or None.
    cdef readonly dict channels
    cdef readonly str user


cdef dict parse_control(object payload)
cpdef str check_channel_name(object name)
cpdef Py_ssize_t max_channels_per_connection()
