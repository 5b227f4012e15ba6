from .pid cimport Pid


cdef class Message:
    cdef readonly str topic
    cdef readonly object payload
    cdef readonly Pid sender


cdef Message new_message(str topic, object payload, Pid sender)
