# cython: language_level=3
"""Durations ("30s", "500ms", "1m") and sizes ("64KiB", "1M"), parsed one way
everywhere: relay headers, environment variables and the config file."""

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_duration(value, *, bare_unit=None):
    """Seconds in ``value``: a number of seconds, or digits with a unit
    (``ms``, ``s``, ``m``, ``h``). With ``bare_unit`` set, a bare number
    without a unit is refused. Raises ValueError naming the problem."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"invalid duration {value!r}: too large") from None
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"invalid duration {value!r}: use a number with a unit, like '30s', '500ms' or '1m'")
        if match.group(2) is None and bare_unit == "required":
            raise ValueError(f"invalid duration {value!r}: a unit is required, like '30s', '500ms' or '1m'")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds >= 0")
    return seconds


def parse_size(value):
    """Bytes in ``value``: an integer, optionally with a binary unit (``K``,
    ``KiB``, ``M``, ``MiB``, ``G``). Raises ValueError naming the problem."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"invalid size {value!r}: use bytes, optionally with a unit like '64KiB' or '1MiB'")
        unit = (match.group(2) or "").lower()
        size = int(match.group(1)) * _SIZE_UNITS[unit[:1]]
    if size < 0:
        raise ValueError(f"invalid size {value!r}: must be >= 0")
    return size
