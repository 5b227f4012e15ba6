"""Every tuning knob, read from the environment and validated in one place.

The names are part of the contract; docs/configuration.md lists each
with its default and what raising it costs.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Callable, Iterable, Mapping, Optional

from ._core.units import parse_duration, parse_size
from .errors import SettingsError


@dataclasses.dataclass(frozen=True)
class Settings:
    addr: Optional[str] = None
    max_message_size: int = 1 << 20
    mailbox_capacity: int = 1024
    write_buffer_limit: int = 1 << 20
    ping_interval: float = 30.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    # Seconds an async def endpoint may take before the request is answered 504.
    handler_timeout: float = 5.0
    max_connections: int = 0
    drain_timeout: float = 10.0
    # picows' smallest read buffer; it grows for larger frames.
    read_buffer_size: int = 2048
    # SO_RCVBUF of each client socket (0: the kernel's autotuning), which
    # bounds how far picows' read buffer grows for a client that floods.
    socket_receive_buffer: int = 64 << 10
    log_level: str = "INFO"
    close_timeout: float = 5.0
    # A connection paused on a full target for this long with no progress is
    # closed with 1013 (0: never).
    stall_timeout: float = 60.0
    node_name: Optional[str] = None
    # Allocations between young-generation collections; 0 keeps Python's.
    gc_threshold: int = 50_000
    # permessage-deflate offered by clients is accepted (RFC 7692).
    compression: bool = False
    # Messages shorter than this go out uncompressed on a compressed connection.
    compression_min_size: int = 128
    # Channels one connection may be subscribed to at once.
    max_channels_per_connection: int = 128
    # Bytes of envelopes one channel's history keeps at most.
    history_max_bytes: int = 1 << 20
    # Publications one recovery may give; a client further behind reloads.
    recovery_max: int = 300
    # -- the server API (docs/api.md) --
    # The key of the server API; None: the API is off.
    api_key: Optional[str] = dataclasses.field(default=None, repr=False)
    # The API on a listener of its own (host:port) rather than on every service.
    api_addr: Optional[str] = None
    api_max_body: int = 1 << 20
    # -- cluster (docs: wsrelay/cluster) --
    # Worker processes under a supervisor; 0: a single process.
    workers: int = 0
    cluster_url: Optional[tuple[str, ...]] = None
    cluster_token: Optional[str] = dataclasses.field(default=None, repr=False)
    cluster_creds: Optional[str] = None
    cluster_down_after: float = 5.0
    nats_server: str = "nats-server"
    # JetStream's directory for the private broker (None: a temporary one).
    cluster_data: Optional[str] = None


def _bounded(value: int, low: int, high: int) -> int:
    # The upper bounds keep values the core stores in C integers or allocates
    # per connection from passing validation and failing later (an overflow at
    # start, an allocation failure on every connection).
    if value < low:
        raise ValueError(f"must be at least {low}")
    if value > high:
        raise ValueError(f"must be at most {high}")
    return value


def _size(low: int, high: int) -> Callable[[str], int]:
    """A number of bytes, ``low`` to ``high`` (parse_size's units)."""

    def parse(text: str) -> int:
        _not_negative(text)
        return _bounded(parse_size(text), low, high)

    return parse


def _count(low: int, high: int, things: str) -> Callable[[str], int]:
    """A number of ``things`` (messages, connections...), ``low`` to
    ``high``. The size syntax is accepted (``64K`` is 65536), but a refusal
    speaks of a count, not of bytes."""

    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError:
            raise ValueError(f"must be a whole number of {things}, from {low} to {high}") from None
        return _bounded(value, low, high)

    return parse


_GiB = 1 << 30


def _zero_or_size(low: int, high: int) -> Callable[[str], int]:
    within = _size(low, high)

    def parse(text: str) -> int:
        _not_negative(text)
        return 0 if parse_size(text) == 0 else within(text)

    return parse


def _not_negative(text: str) -> None:
    # parse_duration and parse_size refuse "-5s" as a bad form ("use a
    # number with a unit"); the problem is the sign.
    if text.strip().startswith("-"):
        raise ValueError("must not be negative")


def _seconds(text: str) -> float:
    _not_negative(text)
    return parse_duration(text)


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _addr(text: str) -> str:
    from .app import parse_addr

    parse_addr(text)
    return text


def _addr_port(text: str) -> int:
    from .app import parse_addr

    return parse_addr(text)[1]


def _level(text: str) -> str:
    name = text.strip().upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return name


def _node(text: str) -> str:
    from ._core.pid import Pid

    try:
        Pid("check", 0, text)
    except ValueError:
        raise ValueError("must be a node name, without '{', '}', '|', '@' or white space") from None
    return text


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError("must be 'on' or 'off'")
    return value == "on"


_MAX_WORKERS = 1024


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        count = parse_size(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"must be a positive integer (how many worker processes, at most {_MAX_WORKERS}) "
                         f"or 'auto' (one per core)")
    return _bounded(count, 1, _MAX_WORKERS)


_CLUSTER_SCHEMES = ("nats", "tls", "ws", "wss")


def _cluster_urls(text: str) -> tuple[str, ...]:
    import urllib.parse

    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    if not urls:
        raise ValueError("expected comma-separated URLs like nats://host:4222")
    for url in urls:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError:
            raise ValueError("a URL has a bad port") from None
        if parts.scheme not in _CLUSTER_SCHEMES or not parts.hostname:
            raise ValueError(f"each URL must look like nats://host:4222 ({', '.join(_CLUSTER_SCHEMES)} schemes)")
    return urls


def _token(text: str) -> str:
    if any(ch.isspace() for ch in text):
        raise ValueError("must not contain white space")
    return text


def _readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("is not a readable file")
    return text


def _directory(text: str) -> str:
    if any(ord(ch) < 32 for ch in text):
        raise ValueError("must be a directory path, without control characters")
    if os.path.exists(text) and not os.path.isdir(text):
        raise ValueError("exists and is not a directory")
    return text


def _command(text: str) -> str:
    if any(ord(ch) < 32 for ch in text):
        raise ValueError("must be a command name or a path, without control characters")
    return text


def _shown(variable: str, raw: str) -> str:
    """``raw`` as an error message may show it: never a token, nor the
    credentials a URL may carry."""
    if variable in ("WSRELAY_CLUSTER_TOKEN", "WSRELAY_API_KEY"):
        return "(hidden)"
    if variable == "WSRELAY_CLUSTER_URL":
        import re

        return re.sub(r"//[^/@,]*@", "//", raw)
    return raw

_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "WSRELAY_ADDR": ("addr", _addr),
    "WSRELAY_MAX_MESSAGE_SIZE": ("max_message_size", _size(1, _GiB)),
    "WSRELAY_MAILBOX_CAPACITY": ("mailbox_capacity", _count(1, 1 << 24, "messages")),
    "WSRELAY_WRITE_BUFFER_LIMIT": ("write_buffer_limit", _size(1, _GiB)),
    "WSRELAY_PING_INTERVAL": ("ping_interval", _seconds),
    "WSRELAY_PING_TIMEOUT": ("ping_timeout", _seconds),
    "WSRELAY_HANDSHAKE_TIMEOUT": ("handshake_timeout", _positive_seconds),
    "WSRELAY_HANDLER_TIMEOUT": ("handler_timeout", _positive_seconds),
    "WSRELAY_MAX_CONNECTIONS": ("max_connections", _count(0, 1 << 31, "connections")),
    "WSRELAY_DRAIN_TIMEOUT": ("drain_timeout", _seconds),
    "WSRELAY_READ_BUFFER_SIZE": ("read_buffer_size", _size(2048, 64 << 20)),
    "WSRELAY_SOCKET_RECEIVE_BUFFER": ("socket_receive_buffer", _zero_or_size(4096, 64 << 20)),
    "WSRELAY_LOG_LEVEL": ("log_level", _level),
    "WSRELAY_CLOSE_TIMEOUT": ("close_timeout", _positive_seconds),
    "WSRELAY_STALL_TIMEOUT": ("stall_timeout", _seconds),
    "WSRELAY_NODE": ("node_name", _node),
    "WSRELAY_GC_THRESHOLD": ("gc_threshold", _count(0, 1 << 30, "allocations")),
    "WSRELAY_COMPRESSION": ("compression", _on_off),
    "WSRELAY_COMPRESSION_MIN_SIZE": ("compression_min_size", _size(0, _GiB)),
    "WSRELAY_MAX_CHANNELS_PER_CONNECTION": ("max_channels_per_connection", _count(1, 1 << 20, "channels")),
    "WSRELAY_HISTORY_MAX_BYTES": ("history_max_bytes", _size(1, _GiB)),
    "WSRELAY_RECOVERY_MAX": ("recovery_max", _count(0, 1 << 20, "publications")),
    "WSRELAY_API_KEY": ("api_key", _token),
    "WSRELAY_API_ADDR": ("api_addr", _addr),
    "WSRELAY_API_MAX_BODY": ("api_max_body", _size(1, _GiB)),
    "WSRELAY_WORKERS": ("workers", _workers),
    "WSRELAY_CLUSTER_URL": ("cluster_url", _cluster_urls),
    "WSRELAY_CLUSTER_TOKEN": ("cluster_token", _token),
    "WSRELAY_CLUSTER_CREDS": ("cluster_creds", _readable_file),
    "WSRELAY_CLUSTER_DOWN_AFTER": ("cluster_down_after", _positive_seconds),
    "WSRELAY_NATS_SERVER": ("nats_server", _command),
    "WSRELAY_CLUSTER_DATA": ("cluster_data", _directory),
}

VARIABLES = tuple(_VARIABLES)
# Read by setup.py when the core is compiled, not by the gateway.
BUILD_VARIABLES = ("WSRELAY_DEBUG_BUILD", "WSRELAY_ANNOTATE", "WSRELAY_BUILD_JOBS", "WSRELAY_SKIP_EXTENSIONS")


def node_name(value: Settings) -> Optional[str]:
    """This node's name: WSRELAY_NODE, or in a cluster the host name made a
    node name ([A-Za-z0-9_-]); None on a single node without one."""
    if value.node_name or not (value.cluster_url or value.workers):
        return value.node_name
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "wsrelay"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """The hint that follows "unknown ... NAME" in a message: the closest of
    ``known`` (a typo), else the whole list. The environment's unknown
    variables and the configuration file's unknown fields both use it."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each WSRELAY_* variable wsrelay does not know (a typo
    would otherwise be silently ignored), naming the closest known one."""
    env = os.environ if environ is None else environ
    warnings = []
    for name in sorted(env):
        if name.startswith("WSRELAY_") and name not in _VARIABLES and name not in BUILD_VARIABLES:
            warnings.append(f"unknown environment variable {name} is ignored{did_you_mean(name, VARIABLES)}")
    return warnings


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: os.environ); SettingsError names
    the first variable with a bad value."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for variable, (field, parse) in _VARIABLES.items():
        raw = env.get(variable)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            raise SettingsError(variable, _shown(variable, raw), str(exc)) from None
    result = Settings(**values)  # type: ignore[arg-type]

    def written(variable: str, seconds: float) -> str:
        # A refusal quotes what the user wrote ("40s"), not the parsed 40.0.
        raw = env.get(variable, "").strip()
        return raw if raw else f"{seconds:g}s (the default)"

    if result.api_addr is not None and result.api_key is None:
        raise SettingsError("WSRELAY_API_ADDR", result.api_addr,
                            "needs WSRELAY_API_KEY: the server API is off without a key")
    if result.api_addr is not None and result.workers and _addr_port(result.api_addr) == 0:
        raise SettingsError("WSRELAY_API_ADDR", result.api_addr,
                            "needs a fixed port with WSRELAY_WORKERS: every worker binds it (SO_REUSEPORT)")
    if result.cluster_token is not None and result.cluster_creds is not None:
        raise SettingsError("WSRELAY_CLUSTER_CREDS", result.cluster_creds,
                            "cannot be combined with WSRELAY_CLUSTER_TOKEN: choose one")
    if result.ping_interval and result.ping_timeout > result.ping_interval:
        raise SettingsError(
            "WSRELAY_PING_TIMEOUT", written("WSRELAY_PING_TIMEOUT", result.ping_timeout),
            f"must not exceed WSRELAY_PING_INTERVAL={written('WSRELAY_PING_INTERVAL', result.ping_interval)}",
        )
    if result.ping_interval and not result.ping_timeout:
        raise SettingsError("WSRELAY_PING_TIMEOUT", written("WSRELAY_PING_TIMEOUT", result.ping_timeout),
                            "must be > 0 while WSRELAY_PING_INTERVAL is set")
    return result


_current: Settings | None = None


def settings() -> Settings:
    """The process-wide settings, loaded from the environment on first use."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use_settings(value: Settings) -> None:
    """Install ``value`` as the process-wide settings (the command line does
    this once at start, before anything reads them)."""
    global _current
    _current = value
