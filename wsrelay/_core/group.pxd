cdef class Group:
    cdef set members
