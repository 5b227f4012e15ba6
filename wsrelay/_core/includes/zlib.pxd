# The part of zlib's C API (zlib.h) that permessage-deflate uses.

# ZLIB_CONST makes next_in a const pointer, as the input buffers here are.
cdef extern from *:
    """
    #define ZLIB_CONST
    """

cdef extern from "zlib.h" nogil:
    ctypedef unsigned char Bytef
    ctypedef unsigned int uInt
    ctypedef unsigned long uLong

    # Only the fields read or written here; the stream is zeroed before
    # deflateInit2/inflateInit2, which leaves zalloc/zfree/opaque at Z_NULL
    # (zlib's own allocator).
    ctypedef struct z_stream:
        const Bytef* next_in
        uInt avail_in
        Bytef* next_out
        uInt avail_out
        const char* msg

    ctypedef z_stream* z_streamp

    enum:
        Z_OK
        Z_STREAM_END
        Z_NEED_DICT
        Z_ERRNO
        Z_STREAM_ERROR
        Z_DATA_ERROR
        Z_MEM_ERROR
        Z_BUF_ERROR
        Z_VERSION_ERROR

    enum:
        Z_NO_FLUSH
        Z_SYNC_FLUSH
        Z_FINISH

    enum:
        Z_DEFLATED
        Z_DEFAULT_STRATEGY
        Z_DEFAULT_COMPRESSION

    const char* zlibVersion()

    int deflateInit2(z_streamp strm, int level, int method, int windowBits, int memLevel, int strategy)
    int deflate(z_streamp strm, int flush)
    int deflateReset(z_streamp strm)
    int deflateEnd(z_streamp strm)
    uLong deflateBound(z_streamp strm, uLong sourceLen)

    int inflateInit2(z_streamp strm, int windowBits)
    int inflate(z_streamp strm, int flush)
    int inflateReset(z_streamp strm)
    int inflateEnd(z_streamp strm)
