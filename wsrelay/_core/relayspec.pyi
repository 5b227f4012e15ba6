from typing import Any, Optional, Union

from .pid import Pid

RELAY_HEADER: str
FIELDS: frozenset[str]
DEFAULT_TOPIC: str
GRANT_FIELDS: tuple[str, ...]
HEADER_FIELDS: frozenset[str]
NAME_CHARS: frozenset[str]
MAX_NAME: int

class RelaySpec:
    """A relay's settings: where the connection's messages go and how."""

    target_pid: Pid
    message_topic: str
    heartbeat_interval: float
    metadata: dict[str, Any]
    channels: Optional[dict[str, Optional[dict[str, Any]]]]
    user: Optional[str]
    def __init__(self, target_pid: Union[Pid, str], message_topic: str = ..., heartbeat_interval: float = 0.0,
                 metadata: Any = None, channels: Any = None, user: Optional[str] = None) -> None: ...

def parse_relay_header(raw: str) -> RelaySpec: ...
def parse_control_payload(payload: Any) -> dict[str, Any]: ...
def set_max_channels_per_connection(limit: int) -> None: ...
def max_channels_per_connection() -> int: ...
def check_channel_name(name: object) -> str: ...
