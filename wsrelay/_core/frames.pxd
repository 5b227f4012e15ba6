from cpython.object cimport PyObject

from .deflate cimport Inflater


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
    MISPLACED_RSV1
    CORRUPT_DEFLATE


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
    # A compressed message (RSV1 on its first frame): its fragments are
    # inflated into ``inflated`` as they come, by a worker's inflater held
    # for the message's life; ``received`` counts their bytes on the wire.
    cdef Inflater inflater
    cdef bytearray inflated
    cdef Py_ssize_t received
    cdef Problem add(self, const char* data, Py_ssize_t size, bint fin) except *
    cdef Problem _inflate(self, const char* data, Py_ssize_t size, bint fin) except *
    cdef int _grow(self, Py_ssize_t need) except -1
    cdef object finish(self, Problem* problem)
    cdef int release(self) except -1


cdef class FrameReader:
    cdef Py_ssize_t limit
    # The connection negotiated permessage-deflate: RSV1 may mark a message.
    cdef bint deflate
    cdef Assembler partial
    cdef object read(self, int opcode, bint fin, int rsv, const char* data, Py_ssize_t size,
                     Py_ssize_t* nbytes, Problem* problem)
    cdef int drop_partial(self) except -1
    cdef void reset(self) noexcept


cdef enum:
    # RFC 7692 §6: permessage-deflate's bit, in the rsv value (RSV1 << 2 | RSV2 << 1 | RSV3).
    RSV1 = 4

cdef Problem check_frame(int opcode, bint fin, int rsv, int fragmented_opcode, bint deflate) noexcept
cdef object inflate_message(int opcode, const char* data, Py_ssize_t size, Py_ssize_t limit, Problem* problem)
cdef object decode_message(int opcode, const char* data, Py_ssize_t size, Py_ssize_t limit, Problem* problem)
cdef int problem_code(Problem problem) noexcept
cdef str problem_text(Problem problem)
cdef bint utf8_feed(Utf8State* state, const unsigned char* data, Py_ssize_t size) noexcept nogil

cdef bytes encode_frame(int opcode, const char* data, Py_ssize_t size)
cdef object encode_send(object payload, Py_ssize_t* size)
cdef object encode_send_deflated(object payload, int window_bits, Py_ssize_t min_size, Py_ssize_t* size)
cdef object send_data(object payload, int* opcode, const char** data, Py_ssize_t* size)
cdef object encode_data_frame(int opcode, object owner, const char* data, Py_ssize_t size, Py_ssize_t* wire)
cdef object encode_deflated_frame(int opcode, const char* data, Py_ssize_t size, int window_bits, Py_ssize_t* wire)
cdef int check_send_payload(object payload) except -1
cdef bytes parse_close_payload(object payload, int* code)
cdef bytes close_reason_bytes(object reason)
cdef bint valid_received_close_code(int code) noexcept
