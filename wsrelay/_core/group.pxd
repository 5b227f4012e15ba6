cdef class Group:
    # Members on this node (Connections), and on others: node name ->
    # _NodeMembers (group.pyx).
    cdef set members
    cdef dict remote
