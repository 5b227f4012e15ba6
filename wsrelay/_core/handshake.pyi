import asyncio
from typing import Any, Awaitable, Callable, Optional

class Handshakes:
    """The handshakes of one service: their bounds, and their counts."""

    max_head: int
    timeout: float
    pending: int
    receive_buffer: int
    failures: dict[str, int]
    def __init__(self, loop: Any, make_protocol: Callable[[asyncio.Transport], asyncio.BufferedProtocol], *,
                 timeout: float, max_head: int = 16384, receive_buffer: int = 0,
                 routes: Optional[dict[bytes, Callable[[str], Awaitable[tuple[int, str, bytes]]]]] = None) -> None: ...
    def protocol(self) -> asyncio.BufferedProtocol: ...
    def failed(self, reason: str) -> None: ...

class HandshakeGuard(asyncio.BufferedProtocol): ...
