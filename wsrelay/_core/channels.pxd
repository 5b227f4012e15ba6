from .presence cimport Presence


cdef class Channel:
    cdef readonly str name
    # Connection -> the info it subscribed with (a dict or None).
    cdef dict members
    # Its presence entries (presence.pyx), or None: its namespace has no presence.
    cdef Presence presence
