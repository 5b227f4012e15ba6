from .pid cimport Pid


cdef class Message:
    cdef readonly str topic
    cdef readonly object payload
    cdef readonly Pid sender
    # Where a call's reply goes (the caller's waiter, call.pyx); None for a
    # message that is not a call.
    cdef Pid reply_to


cdef Message new_message(str topic, object payload, Pid sender)


# A call's reply, sent by the runtime (runtime.pyx), which registers itself:
# this module comes before it and cannot cimport it.
ctypedef bint (*Replier)(Message msg, object value) except -1
cdef Message new_request(str topic, object payload, Pid sender, Pid reply_to)
cdef int set_replier(Replier replier) except -1
