from .presence cimport Presence
from .runtime cimport Node


cdef class Channel:
    cdef readonly str name
    # Connection -> the info it subscribed with (a dict or None).
    cdef dict members
    # In a cluster, subscribers whose position the channel's keeper has not
    # answered yet: Connection -> the publications held for it meanwhile
    # (None when there are none).
    cdef dict holding
    # Its presence entries (presence.pyx), or None: its namespace has no presence.
    cdef Presence presence


cdef object publish_checked(Node node, str checked, object data)
