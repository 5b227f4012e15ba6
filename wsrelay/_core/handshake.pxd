cdef class RouteTask:
    cdef object coro
    cdef object loop
    cdef object context
    # Where it is kept while it waits.
    cdef set waiting
    # The future its coroutine waits for, if it waits for one.
    cdef object waiter
    cdef object wakeup
    # What its coroutine is about to wait for without a future (park()).
    cdef object parked
    cdef object cancel_message
    cdef bint must_cancel
    cdef bint finished
    cdef bint cancelled_
    cdef Py_ssize_t cancel_requests
    cdef object __weakref__
    cdef int begin(self, coro, loop, set waiting) except -1
    cdef int park(self, object waiter) except -1
    cdef int resume_soon(self) except -1
    cdef int step(self, exc) except -1
    cdef int finish(self) except -1
    cdef int suspend(self, result) except -1
    cdef int fail_soon(self, exc) except -1


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
