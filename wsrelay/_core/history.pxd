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
    # The entries, oldest first, offsets contiguous: a ring of ``cap``
    # slots from ``head``, ``count`` of them used, the oldest publication
    # ``first``; each slot's envelope (``texts``, a list: the UTF-8 bytes
    # that were framed, on one node; its str on a cluster's keeper, which
    # stores and ships text), its bytes and when it expires (C arrays: a
    # publication kept allocates nothing of its own). The ring grows by
    # doubling up to ``size``.
    cdef list texts
    cdef Py_ssize_t* sizes
    cdef double* expires
    cdef Py_ssize_t cap
    cdef Py_ssize_t head
    cdef Py_ssize_t count
    cdef unsigned long long first
    cdef Py_ssize_t nbytes
    # When the last publication was kept (monotonic seconds).
    cdef double last

    cdef int keep(self, unsigned long long offset, object text, Py_ssize_t nbytes) except -1
    cdef int trim(self, double now) except -1
    cdef int _add(self, unsigned long long offset, object text, Py_ssize_t nbytes, double expires) except -1
    cdef int _grow(self) except -1
    cdef int _drop_oldest(self) except -1
    cdef inline object _text(self, Py_ssize_t i)
    cdef list after(self, str epoch, unsigned long long offset)


cdef Log log_for(str channel)
cdef object limits_of(str channel)
cdef object cluster_keeper()
cdef Log existing(str channel)
cdef Py_ssize_t recovery_max() noexcept
