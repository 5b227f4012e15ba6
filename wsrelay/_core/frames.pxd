from cpython.object cimport PyObject


cdef enum:
    # RFC 6455 §5.5: a control frame carries at most 125 bytes; a close
    # frame's reason is what is left after its 2-byte code.
    MAX_CLOSE_REASON = 123
    # A bytes payload larger than this is not copied into its frame: the
    # frame is queued as two buffers (header, payload) for one writev().
    COPY_LIMIT = 4096


# Why a client's frame fails its connection (RFC 6455 §7.1.7); Problem.OK
# when it does not. problem_code() and problem_text() say how it is closed.
cdef enum Problem:
    OK = 0
    RESERVED_BITS
    NEW_MESSAGE_INSIDE_FRAGMENTED
    CONTINUATION_WITHOUT_MESSAGE
    TOO_BIG
    INVALID_UTF8
    UTF8_CUT
    INVALID_CLOSE_CODE


ctypedef struct Utf8State:
    # Continuation bytes still expected, and the range the next one must be in.
    int need
    unsigned char lo
    unsigned char hi


cdef class Assembler:
    cdef readonly int opcode
    # The message's bytes so far: a bytes object (owned here, never shared
    # until the message is whole) of ``capacity`` bytes, of which ``size``
    # are used, grown in place and cut to size at the end.
    cdef PyObject* buffer
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity
    cdef Py_ssize_t frames
    cdef Py_ssize_t limit
    cdef Utf8State utf8
    cdef Problem add(self, const char* data, Py_ssize_t size) except *
    cdef int _grow(self, Py_ssize_t need) except -1
    cdef object finish(self, Problem* problem)


cdef class FrameReader:
    cdef Py_ssize_t limit
    cdef Assembler partial
    cdef object read(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size,
                     Py_ssize_t* nbytes, Problem* problem)
    cdef void reset(self) noexcept


cdef Problem check_frame(int opcode, bint fin, int rsv, int fragmented_opcode) noexcept
cdef object decode_message(int opcode, const char* data, Py_ssize_t size, Py_ssize_t limit, Problem* problem)
cdef int problem_code(Problem problem) noexcept
cdef str problem_text(Problem problem)
cdef bint utf8_feed(Utf8State* state, const unsigned char* data, Py_ssize_t size) noexcept nogil

cdef bytes encode_frame(int opcode, const char* data, Py_ssize_t size)
cdef object encode_send(object payload, Py_ssize_t* size)
cdef int check_send_payload(object payload) except -1
cdef bytes parse_close_payload(object payload, int* code)
cdef bytes close_reason_bytes(object reason)
cdef bint valid_received_close_code(int code) noexcept
