from typing import Any, Optional

from picows import WSListener

from .relayspec import RelaySpec
from .runtime import Node
from .writer import Output, Writer

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
TARGET_STALLED: str

# The states of a connection's life, in order (its state_name is one).
STATES: tuple[str, ...]

def _legal_moves() -> dict[str, set[str]]: ...
def _enter_for_test(conn: Connection, to: str) -> str: ...
def set_channel_hooks(grant: Any, leave: Any) -> None:
    """Called once by channels.pyx: the functions that subscribe a connection
    to its handler's grant as it opens, and take it out of its channels as it ends."""

class RelayService:
    """What the connections of one gateway service share: limits, the
    Writer, the set of them, and the sweep (pings, stuck targets)."""

    node: Node
    host: str
    writer: Writer
    max_message_size: int
    compression: bool
    write_buffer_limit: int
    close_timeout: float
    stall_timeout: float
    ping_interval: float
    ping_timeout: float
    connections: set[Connection]
    def __init__(self, node: Node, host: str, loop: Any, *, max_message_size: int, write_buffer_limit: int,
                 close_timeout: float, stall_timeout: float = 0.0, ping_interval: float = 0.0,
                 ping_timeout: float = 0.0, compression: bool = False,
                 compression_min_size: int = 128) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait_empty(self) -> Any: ...
    def shutdown(self) -> None: ...
    def abort_all(self) -> None: ...

class Backpressure: ...

class Connection(Output):
    """A client connection as a process (its life: relay.pyx)."""

    # One of STATES.
    state_name: str
    @staticmethod
    def prepare(service: RelayService, spec: RelaySpec,
                recover: Optional[dict[str, tuple[str, int]]] = None) -> Connection: ...

class RelayListener(WSListener):
    connection: Connection
    def __init__(self, conn: Connection) -> None: ...
