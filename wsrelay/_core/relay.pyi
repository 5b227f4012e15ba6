from typing import Any, Optional

from picows import WSListener

from .pid import Pid
from .runtime import Node, Process

CLIENT_CLOSED: str
CONNECTION_LOST: str
SERVER_CLOSED: str
TARGET_EXITED: str
TRANSFERRED: str
SHUTDOWN: str
TIMEOUT: str
PROTOCOL_ERROR: str
MESSAGE_TOO_BIG: str
SLOW_CONSUMER: str

class RelayOptions:
    node: Node
    host: str
    max_message_size: int
    write_buffer_limit: int
    close_timeout: float
    connections: set[Connection]
    def __init__(self, node: Node, host: str, max_message_size: int, write_buffer_limit: int,
                 close_timeout: float, loop: Any) -> None: ...
    def sweep_idle(self, now: float, ping_interval: float, ping_timeout: float) -> None: ...
    def wait_empty(self) -> Any: ...
    def shutdown(self) -> None: ...
    def abort_all(self) -> None: ...

class Connection(Process):
    @staticmethod
    def prepare(options: RelayOptions, target_pid: Pid, message_topic: str, metadata: Any,
                heartbeat_interval: float) -> Connection: ...

class RelayListener(WSListener):
    connection: Connection
    def __init__(self, conn: Connection) -> None: ...

def parse_heartbeat(value: Optional[Any]) -> float: ...
