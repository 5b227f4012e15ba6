from cpython.object cimport PyObject

from .message cimport Message


cdef class RoomWaiter:
    """Something waiting for a full mailbox to drain (a paused connection's
    backpressure). A mailbox holds each waiter at most once."""
    cdef Mailbox waiting_on
    cdef int on_room(self) except -1


cdef class Mailbox:
    cdef PyObject** _slots
    cdef Py_ssize_t _head
    cdef Py_ssize_t _count
    cdef Py_ssize_t _alloc
    cdef readonly Py_ssize_t capacity
    # Messages ever taken out: a waiter tells a slow target from a stuck one.
    cdef readonly unsigned long long taken
    # The future a receiving task sleeps on; resolved by the next push.
    cdef object waiter
    # RoomWaiters, in the order they started waiting; woken once when the
    # mailbox drains to half its capacity.
    cdef dict _room_waiters

    cdef void _release(self)
    cdef int _grow(self) except -1
    cdef int _append(self, Message msg) except -1
    cdef int _wake_room_waiters(self) except -1
    cdef bint push(self, Message msg) except -1
    cdef int push_force(self, Message msg) except -1
    cdef Message pop(self)
    cdef int wait_for_room(self, RoomWaiter waiter) except -1
    cdef int withdraw(self, RoomWaiter waiter) except -1
    cdef int clear(self) except -1
    cdef inline bint full(self):
        return self._count >= self.capacity
