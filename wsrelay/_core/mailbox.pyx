# cython: language_level=3
"""A bounded FIFO of messages: a ring buffer of object pointers.

The ring grows by doubling as messages arrive and is released once drained,
so an idle process costs no slots. ``capacity`` bounds ordinary messages;
``push_force`` (system events, relay bookkeeping bounded by their own rules)
may pass it.

A sender that must not lose a message when the mailbox is full (a relay
connection) registers a RoomWaiter and stops producing; the mailbox wakes its
waiters once it has drained to half its capacity, and a waiter that stops
waiting (its connection ended or moved to another target) withdraws.
"""

import logging

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

from .message cimport Message

from .stats cimport LimitedLog

cdef enum:
    _MIN_ALLOC = 8
    # A ring larger than this is freed when it drains, returning a burst's memory.
    _KEEP_ALLOC = 64

cdef LimitedLog _log = LimitedLog("wsrelay.runtime")


cdef class RoomWaiter:
    cdef int on_room(self) except -1:
        return 0


cdef class Mailbox:
    def __cinit__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._slots = NULL
        self._head = 0
        self._count = 0
        self._alloc = 0
        self.taken = 0
        self.waiter = None
        self._room_waiters = None

    def __dealloc__(self):
        self._release()

    def __len__(self):
        return self._count

    cdef void _release(self):
        cdef Py_ssize_t i
        cdef PyObject** slots = self._slots
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t count = self._count
        cdef Py_ssize_t mask = self._alloc - 1
        self._slots = NULL
        self._alloc = 0
        self._head = 0
        self._count = 0
        if slots != NULL:
            for i in range(count):
                Py_XDECREF(slots[(head + i) & mask])
            PyMem_Free(slots)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t new_alloc = self._alloc * 2 if self._alloc else _MIN_ALLOC
        cdef PyObject** slots = <PyObject**>PyMem_Malloc(new_alloc * sizeof(PyObject*))
        cdef Py_ssize_t i
        if slots == NULL:
            raise MemoryError()
        for i in range(self._count):
            slots[i] = self._slots[(self._head + i) & (self._alloc - 1)]
        if self._slots != NULL:
            PyMem_Free(self._slots)
        self._slots = slots
        self._alloc = new_alloc
        self._head = 0
        return 0

    cdef int _append(self, Message msg) except -1:
        if self._count == self._alloc:
            self._grow()
        Py_INCREF(msg)
        self._slots[(self._head + self._count) & (self._alloc - 1)] = <PyObject*>msg
        self._count += 1
        if self.waiter is not None:
            waiter = self.waiter
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return 0

    cdef bint push(self, Message msg) except -1:
        """Append unless full; False means the mailbox is at capacity."""
        if self._count >= self.capacity:
            return False
        self._append(msg)
        return True

    cdef int push_force(self, Message msg) except -1:
        self._append(msg)
        return 0

    cdef Message pop(self):
        if self._count == 0:
            return None
        cdef PyObject* slot = self._slots[self._head]
        cdef Message msg = <Message>slot
        Py_XDECREF(slot)
        self._slots[self._head] = NULL
        self._head = (self._head + 1) & (self._alloc - 1)
        self._count -= 1
        self.taken += 1
        if self._count == 0 and self._alloc > _KEEP_ALLOC:
            PyMem_Free(self._slots)
            self._slots = NULL
            self._alloc = 0
            self._head = 0
        if self._room_waiters is not None and self._count <= self.capacity // 2:
            self._wake_room_waiters()
        return msg

    cdef int _wake_room_waiters(self) except -1:
        cdef RoomWaiter waiter
        waiters = self._room_waiters
        self._room_waiters = None
        for waiter in waiters:
            waiter.waiting_on = None
        for waiter in waiters:
            try:
                waiter.on_room()
            except Exception as exc:
                # One waiter's failure must not keep the others paused.
                if _log.allow("room_waiter"):
                    _log.write(logging.ERROR, f"a mailbox room waiter failed: {exc!r}")
        return 0

    cdef int wait_for_room(self, RoomWaiter waiter) except -1:
        if waiter.waiting_on is not None and waiter.waiting_on is not self:
            waiter.waiting_on.withdraw(waiter)
        if self._room_waiters is None:
            self._room_waiters = {}
        self._room_waiters[waiter] = None
        waiter.waiting_on = self
        return 0

    cdef int withdraw(self, RoomWaiter waiter) except -1:
        if self._room_waiters is not None:
            self._room_waiters.pop(waiter, None)
            if not self._room_waiters:
                self._room_waiters = None
        if waiter.waiting_on is self:
            waiter.waiting_on = None
        return 0

    cdef int clear(self) except -1:
        cdef RoomWaiter waiter
        self._release()
        if self._room_waiters is not None:
            for waiter in self._room_waiters:
                waiter.waiting_on = None
            self._room_waiters = None
        return 0

    # Python-visible views for the core's unit tests (tests/test_core_units.py).

    def _test_push(self, Message msg, bint force=False):
        if force:
            self.push_force(msg)
            return True
        return self.push(msg)

    def _test_pop(self):
        return self.pop()

    def _test_allocated(self):
        return self._alloc

    def _test_waiting(self):
        return 0 if self._room_waiters is None else len(self._room_waiters)

    def _test_wait_for_room(self, RoomWaiter waiter):
        self.wait_for_room(waiter)

    def _test_withdraw(self, RoomWaiter waiter):
        self.withdraw(waiter)


cdef class _CallbackWaiter(RoomWaiter):
    """A RoomWaiter that calls a Python function: for the core's unit tests."""

    cdef object callback

    def __init__(self, callback):
        self.callback = callback

    cdef int on_room(self) except -1:
        self.callback()
        return 0

    @property
    def waiting(self):
        return self.waiting_on is not None
