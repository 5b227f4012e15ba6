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
| ``channels`` | header only: a list of channel names, or ``{name: {"info": {...}}}``; at most ``max_channels_per_connection()`` |
| ``user`` | header only: a str, the authenticated user |

``channels`` and ``user`` are the handler's grant: ws.control refuses them,
since a connection's channels change later through ``channels.subscribe`` /
``channels.unsubscribe`` (docs/guide.md, "Channels"). Channel names are
checked here (``check_channel_name``) because the header is where most of
them arrive; the channel table (channels.pyx) uses the same rule.
"""

import orjson

from .pid cimport Pid, to_pid
from .errors import RelayHeaderError, RelaySettingsError
from .units import parse_duration

RELAY_HEADER = "X-WS-Relay"
# The fields both the header and ws.control take, and those only the header does.
FIELDS = frozenset({"target_pid", "message_topic", "heartbeat_interval", "metadata"})
GRANT_FIELDS = ("channels", "user")
HEADER_FIELDS = FIELDS | frozenset(GRANT_FIELDS)
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/=-")
MAX_NAME = 255
# WSRELAY_MAX_CHANNELS_PER_CONNECTION, set by the Python layer from its settings.
cdef Py_ssize_t _max_channels = 128
DEFAULT_TOPIC = "ws.message"
MIN_HEARTBEAT = 0.01


cdef class RelaySpec:
    """A relay's settings: where the connection's messages go and how."""

    def __init__(self, target_pid, str message_topic=DEFAULT_TOPIC, double heartbeat_interval=0.0,
                 metadata=None, channels=None, user=None):
        self.target_pid = to_pid(target_pid)
        self.message_topic = message_topic
        self.heartbeat_interval = heartbeat_interval
        self.metadata = {} if metadata is None else metadata
        self.channels = None if channels is None else _channels(channels, "RelaySpec", ValueError)
        self.user = None if user is None else _user(user, "RelaySpec", ValueError)

    def __repr__(self):
        return (f"RelaySpec(target_pid={self.target_pid!s}, message_topic={self.message_topic!r}, "
                f"heartbeat_interval={self.heartbeat_interval}, metadata={self.metadata!r}, "
                f"channels={self.channels!r}, user={self.user!r})")


def set_max_channels_per_connection(Py_ssize_t limit):
    """The bound on one connection's channels (at least 1)."""
    global _max_channels
    if limit < 1:
        raise ValueError(f"max channels per connection must be at least 1, got {limit}")
    _max_channels = limit


cpdef Py_ssize_t max_channels_per_connection():
    return _max_channels


cdef inline bint _name_char(Py_UCS4 ch) noexcept:
    """One of NAME_CHARS, tested without a set lookup per character (every
    publish checks its channel's name)."""
    return (u'a' <= ch <= u'z' or u'A' <= ch <= u'Z' or u'0' <= ch <= u'9' or ch == u'_' or ch == u'.'
            or ch == u':' or ch == u'@' or ch == u'/' or ch == u'=' or ch == u'-')


cpdef str check_channel_name(object name):
    """``name`` when it is a channel name; ValueError naming what is wrong
    (the first character outside the allowed set, and its position)."""
    cdef Py_ssize_t i
    cdef Py_UCS4 ch
    if type(name) is not str:
        raise ValueError(f"a channel name must be a str, got {type(name).__name__}")
    if not 1 <= len(<str>name) <= MAX_NAME:
        raise ValueError(f"a channel name has 1 to {MAX_NAME} characters, got {len(<str>name)}")
    for i, ch in enumerate(<str>name):
        if not _name_char(ch):
            raise ValueError(f"channel name {name!r}: character {(<str>name)[i]!r} at position {i} is not allowed "
                             "(letters, digits and _ . : @ / = -)")
    return <str>name


cdef dict _channels(object value, str where, object error):
    """{name: info or None}, in the order given."""
    cdef dict granted = {}
    if isinstance(value, list):
        entries = [(name, None) for name in value]
    elif isinstance(value, dict):
        entries = []
        for name, options in value.items():
            if not isinstance(options, dict) or set(options) - {"info"}:
                raise error(f"{where} channels[{name!r}] must be an object with an optional \"info\", got {options!r}")
            info = options.get("info")
            if info is not None and not isinstance(info, dict):
                raise error(f"{where} channels[{name!r}] info must be an object, got {type(info).__name__}")
            entries.append((name, info))
    else:
        raise error(f"{where} channels must be a list of names or an object, got {type(value).__name__}")
    for name, info in entries:
        try:
            granted[check_channel_name(name)] = info
        except ValueError as exc:
            raise error(f"{where} channels: {exc}") from None
    if len(granted) > _max_channels:
        raise error(f"{where} channels: {len(granted)} channels, over the limit of {_max_channels} "
                    "(WSRELAY_MAX_CHANNELS_PER_CONNECTION)")
    return granted


cdef str _user(object value, str where, object error):
    if type(value) is not str:
        raise error(f"{where} user must be a string, got {type(value).__name__}")
    return <str>value


cdef object _fields(object value, str where, object error, frozenset known):
    if not isinstance(value, dict):
        raise error(f"{where} must be a JSON object (a dict), got {type(value).__name__}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise error(f"{where} has unknown field(s) {unknown}; known: {sorted(known)}")
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
    _fields(value, RELAY_HEADER, RelayHeaderError, HEADER_FIELDS)
    if "target_pid" not in value:
        raise RelayHeaderError(f"{RELAY_HEADER} needs target_pid")
    cdef RelaySpec spec = RelaySpec.__new__(RelaySpec)
    spec.target_pid = _target(value["target_pid"], RELAY_HEADER, RelayHeaderError)
    spec.message_topic = _topic(value.get("message_topic", DEFAULT_TOPIC), RELAY_HEADER, RelayHeaderError)
    spec.heartbeat_interval = _heartbeat(value.get("heartbeat_interval"), RELAY_HEADER, RelayHeaderError)
    spec.metadata = _metadata(value.get("metadata"), RELAY_HEADER, RelayHeaderError)
    if value.get("channels") is not None:
        spec.channels = _channels(value["channels"], RELAY_HEADER, RelayHeaderError)
    if value.get("user") is not None:
        spec.user = _user(value["user"], RELAY_HEADER, RelayHeaderError)
    return spec


cdef dict parse_control(object payload):
    """The changes a ``ws.control`` payload asks for, by field (only those it
    names; ``target_pid`` only when not None); RelaySettingsError (a
    ValueError) names what is wrong."""
    for field in GRANT_FIELDS:
        if isinstance(payload, dict) and field in payload:
            raise RelaySettingsError(f"ws.control cannot change {field}: the handler grants it; "
                                     "use channels.subscribe / channels.unsubscribe")
    _fields(payload, "ws.control", RelaySettingsError, FIELDS)
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
