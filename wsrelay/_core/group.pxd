from .runtime cimport Node

cdef class Group:
    # Members on this node (Connections), and on others: node name ->
    # _NodeMembers (group.pyx).
    cdef set members
    cdef dict remote
    cdef tuple _remote_member(self, Node node, object pid)
