from typing import Any, Union

from .pid import Pid

RELAY_HEADER: str
FIELDS: frozenset[str]
DEFAULT_TOPIC: str

class RelaySpec:
    """A relay's settings: where the connection's messages go and how."""

    target_pid: Pid
    message_topic: str
    heartbeat_interval: float
    metadata: dict[str, Any]
    def __init__(self, target_pid: Union[Pid, str], message_topic: str = ..., heartbeat_interval: float = 0.0,
                 metadata: Any = None) -> None: ...

def parse_relay_header(raw: str) -> RelaySpec: ...
def parse_control_payload(payload: Any) -> dict[str, Any]: ...
