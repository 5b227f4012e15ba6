from cpython.object cimport PyObject

from .message cimport Message


cdef class Mailbox:
    cdef PyObject** _slots
    cdef Py_ssize_t _head
    cdef Py_ssize_t _count
    cdef Py_ssize_t _alloc
    cdef readonly Py_ssize_t capacity
    # The future a receiving task sleeps on; resolved by the next push.
    cdef object waiter
    # Callables run once when a full mailbox drains to its low watermark.
    cdef list _room_waiters

    cdef void _release(self)
    cdef int _grow(self) except -1
    cdef int _append(self, Message msg) except -1
    cdef void _wake_room_waiters(self)
    cdef bint push(self, Message msg) except -1
    cdef int push_force(self, Message msg) except -1
    cdef Message pop(self)
    cdef int add_room_waiter(self, object callback) except -1
    cdef int clear(self) except -1
    cdef inline bint full(self):
        return self._count >= self.capacity
