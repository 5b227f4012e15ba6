cdef class Channel:
    cdef readonly str name
    # Connection -> the info it subscribed with (a dict or None).
    cdef dict members
