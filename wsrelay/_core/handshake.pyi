import asyncio
from typing import Any, Awaitable, Callable, Optional, Union

# An async route: given the request head and the client's transport, the
# answer to write (bytes), a picows protocol factory to hand the socket to,
# or None (nothing more to do: the client has gone).
# A protocol factory is given the transport of the socket it is for.
ProtocolFactory = Callable[[asyncio.Transport], asyncio.BufferedProtocol]
Route = Callable[[bytes, asyncio.Transport], Awaitable[Union[bytes, ProtocolFactory, None]]]

def http_answer(status: int, content_type: str, body: bytes) -> bytes: ...

class Handshakes:
    """The handshakes of one service: their bounds, and their counts."""

    max_head: int
    timeout: float
    pending: int
    receive_buffer: int
    failures: dict[str, int]
    def __init__(self, loop: Any, make_protocol: ProtocolFactory, *,
                 timeout: float, max_head: int = 16384, receive_buffer: int = 0,
                 routes: Optional[dict[bytes, Route]] = None,
                 prefixes: Optional[dict[bytes, ProtocolFactory]] = None) -> None: ...
    def protocol(self) -> asyncio.BufferedProtocol: ...
    def failed(self, reason: str) -> None: ...

class HandshakeGuard(asyncio.BufferedProtocol): ...
