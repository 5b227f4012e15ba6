cdef class Log:
    cdef readonly str channel
    # Changes whenever this channel's history is lost (a new Log is made).
    cdef readonly str epoch
    # The latest publication's offset (0: none yet); the next one is offset + 1.
    cdef readonly unsigned long long offset
    # The latest publication delivered to subscribers: ``offset`` on one
    # node; in a cluster the keeper numbers a publication, stores it, and
    # only then delivers it.
    cdef public unsigned long long delivered
    # The namespace's history_size and history_ttl.
    cdef readonly Py_ssize_t size
    cdef readonly double ttl
    # (offset, envelope text, bytes, when it expires), oldest first, offsets
    # contiguous.
    cdef object entries
    # entries.append and entries.popleft, bound once: a publication kept
    # calls each, and a method looked up by name costs more than the call.
    cdef object _append
    cdef object _popleft
    cdef Py_ssize_t nbytes
    # When the last publication was kept (monotonic seconds).
    cdef double last

    cdef int keep(self, unsigned long long offset, str text, Py_ssize_t nbytes) except -1
    cdef int trim(self, double now) except -1
    cdef list after(self, str epoch, unsigned long long offset)


cdef Log log_for(str channel)
cdef object limits_of(str channel)
cdef object cluster_keeper()
cdef Log existing(str channel)
cdef Py_ssize_t recovery_max() noexcept
