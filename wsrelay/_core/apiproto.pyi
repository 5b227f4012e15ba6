from typing import Any

class ApiCore:
    """The compiled half of one server API connection (wsrelay.api.ApiProtocol's
    base): the read buffer, the connection's timer, and the quick path of a
    whole request (a plain publish answered here)."""

    api: Any
    transport: Any
    parser: Any
    queue: Any
    busy: bool
    in_request: bool
    stopped: bool
    timer: Any
    timer_at: float
    deadline: float

    def __init__(self, api: Any, heads: dict[int, bytes]) -> None: ...
    def get_buffer(self, sizehint: int) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def feed(self, data: memoryview) -> None:
        """Parse ``data`` with httptools (the subclass's callbacks)."""
    def take_whole(self, name: str, body: bytes) -> None:
        """A whole keep-alive request parsed by the core, for the subclass to answer."""
    def _arm(self, seconds: float) -> None:
        """Bound the connection's time to ``seconds`` from now."""
    def _on_timer(self) -> None: ...
