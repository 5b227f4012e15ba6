# C-API pieces Cython's own cpython/*.pxd do not declare.

from cpython.object cimport PyObject

ctypedef PyObject* (*iternextfunc)(PyObject*)

cdef extern from "Python.h":
    # Only the slot the runtime replaces: see runtime.pyx, _Receive.
    ctypedef struct TypeSlots "PyTypeObject":
        iternextfunc tp_iternext
    PyObject* PyExc_StopIteration
    void PyErr_SetObject(PyObject* exc, PyObject* value)

    # Resizes a bytes object nobody else holds, in place when the allocator
    # can (frames.pyx grows a fragmented message's buffer with it).
    int _PyBytes_Resize(PyObject** data, Py_ssize_t size) except -1
