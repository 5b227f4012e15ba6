from libc.stdint cimport uint64_t


cdef class Pid:
    cdef readonly str node
    cdef readonly str host
    cdef readonly uint64_t id
    cdef str _text
    cdef Py_hash_t _hash


cdef Pid make_pid(str node, str host, uint64_t ident)
cdef Pid parse_pid(str text)
cdef Pid to_pid(object value)


cdef class PidCache:
    cdef dict _pids
    cpdef Pid get(self, object key)
    cpdef Pid put(self, object key, Pid pid)
