from .includes.zlib cimport z_stream


cdef class DeflateParams:
    # The LZ77 window the server compresses with (server_max_window_bits).
    cdef readonly int server_max_window_bits
    # The window the client compresses with (client_max_window_bits, 15 when
    # not agreed). Informational: the inflater always accepts a 15-bit window.
    cdef readonly int client_max_window_bits
    # The Sec-WebSocket-Extensions value of the 101 response.
    cdef readonly str response


cdef class Deflater:
    cdef z_stream _strm
    cdef bint _ready
    cdef readonly int window_bits
    cdef readonly int level
    # Reused output space, see _KEEP_SCRATCH.
    cdef unsigned char* _scratch
    cdef size_t _scratch_size

    cdef int _reserve(self, size_t size) except -1
    cdef void _trim_scratch(self)
    cdef bytes _compress(self, const unsigned char* data, Py_ssize_t size)


cdef class Inflater:
    cdef z_stream _strm
    cdef bint _ready
    # Inside a message: between begin() and the feed with fin.
    cdef bint _active
    # Bytes inflated for the current message, bounded by max_size.
    cdef Py_ssize_t _produced

    cdef int _begin(self) except -1
    cdef int _feed(self, const unsigned char* data, Py_ssize_t size, bytearray out,
                   Py_ssize_t max_size, bint fin) except -1
    cdef int _inflate(self, const unsigned char* data, Py_ssize_t size, bytearray out,
                      Py_ssize_t max_size) except -1


# The worker's compressor for a window (9..15), created on first use.
cdef Deflater deflater_for(int window_bits)
# One message as a raw DEFLATE stream, sync-flushed, without its trailing
# 0x00 0x00 0xff 0xff (RFC 7692 §7.2.1).
cdef bytes compress_buffer(const unsigned char* data, Py_ssize_t size, int window_bits)
# The worker's spare inflaters: a connection takes one for the life of a
# message (several fragments may arrive over several loop iterations) and
# gives it back at the message's end or when it closes.
cpdef Inflater acquire_inflater()
cpdef bint release_inflater(Inflater inflater) except -1
# A whole (single-frame) message, appended to out.
cdef int inflate_buffer(const unsigned char* data, Py_ssize_t size, bytearray out,
                        Py_ssize_t max_size) except -1
