# Where wsrelay relies on more of picows than its public API promises: each
# reliance is here, with why it is needed. Checked against the picows that
# CHECKED_AGAINST names (picows_private.pyx); tests/test_picows_private.py fails, naming the reliance, when an upgrade
# breaks one (a missing attribute already fails the build of the modules that
# cimport this one).
#
# These are inline functions: the C of a caller is what it was when it read
# the attributes itself (writer.pyx and relay.pyx call them per frame), with
# no Python call in between.

from picows.picows cimport MemoryBuffer, WSTransport


cdef inline object wire(WSTransport transport):
    """The socket's asyncio transport, which the Writer writes its own frames
    to (writer.pyx) and asks for the bytes still unsent.

    Relied on: picows writes each frame it sends itself (pong, ping, close)
    at once: straight to the socket only while the transport holds nothing
    (WSTransport._fast_write), through the transport otherwise. So frames
    written here stay in order with picows' own, and
    ``get_write_buffer_size()`` counts every byte not yet sent (picows keeps
    none back). Pausing reading here is not seen by picows, which keeps no
    reading state of its own."""
    return transport.underlying_transport


cdef inline int release_upgrade(WSTransport transport, Py_ssize_t write_buffer) except -1:
    """Per-connection memory (docs/performance.md), once upgraded.

    ``request`` and ``response`` are readonly to Python; picows reads them
    only during the upgrade. ``_write_buffer`` is private: picows builds
    every frame it sends in it, starting at 1024 bytes and growing on demand
    (MemoryBuffer.resize), never shrinking. The relay writes data frames from
    its own buffers, so picows only ever builds control frames there: a
    buffer of ``write_buffer`` bytes holds them."""
    transport.request = None
    transport.response = None
    transport._write_buffer = MemoryBuffer(write_buffer)
    return 0
