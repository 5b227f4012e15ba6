"""Values between nodes: MessagePack by ormsgpack, a Pid as extension type 1.

What may cross: None, bool, int (64-bit), float, str, bytes (bytearray and
memoryview arrive as bytes), list and tuple (both arrive as lists), dict with
str keys, Pid. Anything else raises TypeError when encoded, so a send fails
at the call rather than on another node. Never pickle: a peer's bytes are
data, not code. bench/cluster_codec.py measured this codec against msgpack
(and orjson, which cannot carry bytes).
"""

from __future__ import annotations

from typing import Any

import ormsgpack

from .._core.pid import Pid, PidCache

PID_EXT = 1

# Without the passthrough options ormsgpack would quietly turn dataclasses,
# datetimes, enums and UUIDs into maps and strings, and refuse big ints with
# an error of its own; with them, each reaches _default and is refused there.
_OPTIONS = (ormsgpack.OPT_PASSTHROUGH_BIG_INT | ormsgpack.OPT_PASSTHROUGH_DATACLASS
            | ormsgpack.OPT_PASSTHROUGH_DATETIME | ormsgpack.OPT_PASSTHROUGH_ENUM
            | ormsgpack.OPT_PASSTHROUGH_UUID)

CARRIES = "None, bool, int (64-bit), float, str, bytes, list, tuple, dict with str keys and Pid"

_packb = ormsgpack.packb
_unpackb = ormsgpack.unpackb
_Ext = ormsgpack.Ext


def _default(obj: Any) -> Any:
    if isinstance(obj, Pid):
        return _Ext(PID_EXT, str(obj).encode())
    if type(obj) is int:
        raise TypeError(f"int {obj} does not fit in 64 bits")
    # IntEnum and friends are ints and strs: carried as their plain value.
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"a {type(obj).__name__} cannot be carried")


def encode(value: Any) -> bytes:
    """``value`` as MessagePack; TypeError naming what cannot be carried."""
    try:
        return _packb(value, default=_default, option=_OPTIONS)
    except TypeError as exc:
        raise TypeError(f"cluster codec: {exc} (a cross-node payload may hold {CARRIES})") from None


# Senders repeat: a decoded Pid is looked up by its bytes before it is parsed.
_pid_cache = PidCache()


def _ext_hook(code: int, data: bytes) -> Any:
    if code != PID_EXT:
        raise ValueError(f"unknown MessagePack extension type {code}")
    pid = _pid_cache.get(data)
    if pid is None:
        pid = _pid_cache.put(data, Pid.parse(data.decode()))
    return pid


def decode(data: bytes) -> Any:
    """The value encoded in ``data``; ValueError (or a subclass) when it is
    not valid MessagePack of what ``encode`` writes."""
    return _unpackb(data, ext_hook=_ext_hook)
