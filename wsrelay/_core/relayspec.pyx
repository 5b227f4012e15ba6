# cython: language_level=3
"""The relay settings (docs/guide.md, "The X-WS-Relay header" and "Sending to the client"), parsed one way: the ``X-WS-Relay``
header a handler sets, and the ``ws.control`` payload any process sends to a
connection, share these field rules.

| field | rule |
| --- | --- |
| ``target_pid`` | a PID or its text form (required in the header; ``None`` or absent in ws.control: unchanged) |
| ``message_topic`` | a non-empty str not starting with ``@`` |
| ``heartbeat_interval`` | a duration (``"30s"``, ``"500ms"``, a number of seconds) of at least 10 ms, or ``None``: no heartbeat |
| ``metadata`` | a dict (a JSON object); ``None`` means ``{}`` |
"""

import orjson

from .pid cimport Pid, to_pid
from .errors import RelayHeaderError, RelaySettingsError
from .units import parse_duration

RELAY_HEADER = "X-WS-Relay"
FIELDS = frozenset({"target_pid", "message_topic", "heartbeat_interval", "metadata"})
DEFAULT_TOPIC = "ws.message"
MIN_HEARTBEAT = 0.01


cdef class RelaySpec:
    """A relay's settings: where the connection's messages go and how."""

    def __init__(self, target_pid, str message_topic=DEFAULT_TOPIC, double heartbeat_interval=0.0,
                 metadata=None):
        self.target_pid = to_pid(target_pid)
        self.message_topic = message_topic
        self.heartbeat_interval = heartbeat_interval
        self.metadata = {} if metadata is None else metadata

    def __repr__(self):
        return (f"RelaySpec(target_pid={self.target_pid!s}, message_topic={self.message_topic!r}, "
                f"heartbeat_interval={self.heartbeat_interval}, metadata={self.metadata!r})")


cdef object _fields(object value, str where, object error):
    if not isinstance(value, dict):
        raise error(f"{where} must be a JSON object (a dict), got {type(value).__name__}")
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        raise error(f"{where} has unknown field(s) {unknown}; known: {sorted(FIELDS)}")
    return value


cdef Pid _target(object value, str where, object error):
    if not isinstance(value, (str, Pid)):
        raise error(f"{where} target_pid must be a string (a PID's text form), got {type(value).__name__}")
    try:
        return to_pid(value)
    except ValueError as exc:
        raise error(f"{where} target_pid: {exc}") from None


cdef str _topic(object value, str where, object error):
    if type(value) is not str or not value or (<str>value)[0] == "@":
        raise error(f"{where} message_topic must be a non-empty string not starting with '@', got {value!r}")
    return <str>value


cdef double _heartbeat(object value, str where, object error) except -1.0:
    cdef double seconds
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise error(f"{where} heartbeat_interval must be a duration like '30s', got {type(value).__name__}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise error(f"{where} heartbeat_interval: {exc}") from None
    if seconds < MIN_HEARTBEAT:
        raise error(f"{where} heartbeat_interval {value!r} is too short (at least 10ms)")
    return seconds


cdef object _metadata(object value, str where, object error):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{where} metadata must be an object (a dict), got {type(value).__name__}")
    return value


def parse_relay_header(str raw not None):
    """The RelaySpec in an ``X-WS-Relay`` value; RelayHeaderError names what
    is wrong."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RelayHeaderError(f"{RELAY_HEADER} is not valid JSON: {exc}") from None
    _fields(value, RELAY_HEADER, RelayHeaderError)
    if "target_pid" not in value:
        raise RelayHeaderError(f"{RELAY_HEADER} needs target_pid")
    cdef RelaySpec spec = RelaySpec.__new__(RelaySpec)
    spec.target_pid = _target(value["target_pid"], RELAY_HEADER, RelayHeaderError)
    spec.message_topic = _topic(value.get("message_topic", DEFAULT_TOPIC), RELAY_HEADER, RelayHeaderError)
    spec.heartbeat_interval = _heartbeat(value.get("heartbeat_interval"), RELAY_HEADER, RelayHeaderError)
    spec.metadata = _metadata(value.get("metadata"), RELAY_HEADER, RelayHeaderError)
    return spec


cdef dict parse_control(object payload):
    """The changes a ``ws.control`` payload asks for, by field (only those it
    names; ``target_pid`` only when not None); RelaySettingsError (a
    ValueError) names what is wrong."""
    _fields(payload, "ws.control", RelaySettingsError)
    cdef dict changes = {}
    if payload.get("target_pid") is not None:
        changes["target_pid"] = _target(payload["target_pid"], "ws.control", RelaySettingsError)
    if "message_topic" in payload:
        changes["message_topic"] = _topic(payload["message_topic"], "ws.control", RelaySettingsError)
    if "heartbeat_interval" in payload:
        changes["heartbeat_interval"] = _heartbeat(payload["heartbeat_interval"], "ws.control",
                                                   RelaySettingsError)
    if "metadata" in payload:
        changes["metadata"] = _metadata(payload["metadata"], "ws.control", RelaySettingsError)
    return changes


def parse_control_payload(payload):
    """Python view of parse_control, for the unit tests."""
    return parse_control(payload)
