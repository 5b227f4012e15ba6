# cython: language_level=3
"""Process identifiers: ``{host|0x0000a}`` or ``{node@host|0x0000a}``.

A PID is immutable; its text form and hash are computed once, because PIDs are
dictionary keys on every send.
"""

from libc.stdint cimport uint64_t

cdef str _FORBIDDEN = "{}|@ \t\r\n"


cdef inline str _check_name(str value, str what, str text):
    cdef Py_UCS4 ch
    if not value:
        raise ValueError(f"malformed PID {text!r}: empty {what}")
    for ch in value:
        if ch in _FORBIDDEN:
            raise ValueError(f"malformed PID {text!r}: {what} {value!r} contains {ch!r}")
    return value


cdef class Pid:
    """The address of a process: node (None on a single node), host and a
    numeric id that the node never reuses."""

    def __init__(self, str host not None, uint64_t id, str node=None):
        _check_name(host, "host", host)
        if node is not None:
            _check_name(node, "node", node)
        self.node = node
        self.host = host
        self.id = id
        self._text = _format(node, host, id)
        self._hash = hash(self._text)

    @staticmethod
    def parse(str text not None):
        """Parse the text form; raises ValueError naming what is wrong."""
        return parse_pid(text)

    def __str__(self):
        return self._text

    def __repr__(self):
        return f"Pid({self._text!r})"

    def __hash__(self):
        return self._hash

    def __richcmp__(self, other, int op):
        if not isinstance(other, Pid):
            # A Pid equals its text form (and hashes like it), so tables keyed
            # by Pid answer lookups by text without parsing.
            if op == 2:
                return isinstance(other, str) and self._text == other
            if op == 3:
                return not (isinstance(other, str) and self._text == other)
            return NotImplemented
        cdef Pid a = self
        cdef Pid b = <Pid>other
        if op == 2:
            return a is b or (a.id == b.id and a.host == b.host and a.node == b.node)
        if op == 3:
            return not (a is b or (a.id == b.id and a.host == b.host and a.node == b.node))
        ka = (a.node or "", a.id, a.host)
        kb = (b.node or "", b.id, b.host)
        if op == 0:
            return ka < kb
        if op == 1:
            return ka <= kb
        if op == 4:
            return ka > kb
        return ka >= kb

    def __reduce__(self):
        return (Pid, (self.host, self.id, self.node))


cdef inline str _format(str node, str host, uint64_t ident):
    if node is None:
        return f"{{{host}|0x{ident:05x}}}"
    return f"{{{node}@{host}|0x{ident:05x}}}"


cdef Pid make_pid(str node, str host, uint64_t ident):
    """Build a PID from parts already known to be valid (the node's own)."""
    cdef Pid pid = Pid.__new__(Pid)
    pid.node = node
    pid.host = host
    pid.id = ident
    pid._text = _format(node, host, ident)
    pid._hash = hash(pid._text)
    return pid


cdef Pid parse_pid(str text):
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t bar, at
    cdef str node = None
    cdef str host, digits
    cdef Py_UCS4 ch
    if n < 2 or text[0] != "{" or text[n - 1] != "}":
        raise ValueError(f"malformed PID {text!r}: expected the form '{{host|0x0000a}}' or '{{node@host|0x0000a}}'")
    bar = text.rfind("|")
    if bar < 0:
        raise ValueError(f"malformed PID {text!r}: missing '|' between host and id")
    host = text[1:bar]
    digits = text[bar + 1:n - 1]
    at = host.find("@")
    if at >= 0:
        node = _check_name(host[:at], "node", text)
        host = host[at + 1:]
    _check_name(host, "host", text)
    if not digits.startswith("0x"):
        raise ValueError(f"malformed PID {text!r}: id {digits!r} must start with '0x'")
    digits = digits[2:]
    if len(digits) < 5:
        raise ValueError(f"malformed PID {text!r}: id must have at least 5 hex digits")
    if len(digits) > 16:
        raise ValueError(f"malformed PID {text!r}: id {digits!r} is larger than 64 bits")
    for ch in digits:
        if not ("0" <= ch <= "9" or "a" <= ch <= "f"):
            raise ValueError(f"malformed PID {text!r}: id must be lowercase hex, found {ch!r}")
    ident = int(digits, 16)
    if len(digits) > 5 and digits[0] == "0":
        raise ValueError(f"malformed PID {text!r}: id has extra leading zeros")
    return make_pid(node, host, ident)


cdef Pid to_pid(object value):
    """A Pid from a Pid or its text form."""
    if type(value) is Pid:
        return <Pid>value
    if isinstance(value, str):
        return parse_pid(<str>value)
    if isinstance(value, Pid):
        return <Pid>value
    raise TypeError(f"expected a Pid or its text form, got {type(value).__name__}")


cdef enum:
    # Entries a PidCache holds before it starts again empty.
    PID_CACHE_LIMIT = 65536


cdef class PidCache:
    """PIDs by what they were made from (text, bytes, a (host, id) pair),
    so the few processes most traffic goes to are parsed once. Bounded: when
    full it is emptied, which costs nothing per hit, unlike an LRU's upkeep."""

    def __cinit__(self):
        self._pids = {}

    def __len__(self):
        return len(self._pids)

    cpdef Pid get(self, object key):
        """The PID cached for ``key``, or None."""
        return self._pids.get(key)

    cpdef Pid put(self, object key, Pid pid):
        """Cache ``pid`` for ``key``; returns it."""
        if len(self._pids) >= PID_CACHE_LIMIT:
            self._pids.clear()
        self._pids[key] = pid
        return pid
