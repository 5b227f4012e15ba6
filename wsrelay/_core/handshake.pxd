cdef class Handshakes:
    cdef readonly Py_ssize_t max_head
    cdef readonly double timeout
    cdef readonly Py_ssize_t pending
    cdef readonly Py_ssize_t receive_buffer
    cdef readonly dict failures
    cdef object make_protocol
    cdef dict routes
    cdef tuple prefixes
    cdef object loop
    # The RouteTasks of async routes still waiting; cancelled at shutdown.
    cdef readonly set waiting
    cdef readonly bint closing
    cdef int count_failure(self, str reason) except -1
