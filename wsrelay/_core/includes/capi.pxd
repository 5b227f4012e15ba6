# C-API pieces Cython's own cpython/*.pxd do not declare.

from cpython.object cimport PyObject

ctypedef PyObject* (*iternextfunc)(PyObject*)

cdef extern from "Python.h":
    # Only the slot the runtime replaces: see runtime.pyx, _Receive.
    ctypedef struct TypeSlots "PyTypeObject":
        iternextfunc tp_iternext
    PyObject* PyExc_StopIteration
    void PyErr_SetObject(PyObject* exc, PyObject* value)
