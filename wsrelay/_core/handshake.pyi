import asyncio
from typing import Any, Awaitable, Callable, Optional, Union

from multidict import CIMultiDict

# An async route: given the request head and the client's transport, the
# answer to write (bytes), a picows protocol factory to hand the socket to,
# or None (nothing more to do: the client has gone).
# A protocol factory is given the transport of the socket it is for.
ProtocolFactory = Callable[[asyncio.Transport], asyncio.BufferedProtocol]
class Decided:
    """An async route's upgrade, decided: the socket goes to the picows
    protocol ``new_protocol(self)`` makes, with the request head reduced to
    what picows reads; this object is its listener factory, answering
    ``answer`` (a listener, or a response with its listener)."""

    answer: Any
    new_protocol: Callable[[Decided], asyncio.BufferedProtocol]
    def __init__(self, answer: Any, new_protocol: Callable[[Decided], asyncio.BufferedProtocol]) -> None: ...
    def __call__(self, upgrade_request: Any) -> Any: ...

Route = Callable[[bytes, asyncio.Transport], Awaitable[Union[bytes, ProtocolFactory, Decided, None]]]

def parse_head(head: bytes) -> tuple[str, str, CIMultiDict[str]]: ...
def parse_request(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]: ...
def header_of(fields: list[tuple[str, str]], name: str, default: Optional[str] = None) -> Optional[str]: ...
def headers_of(fields: list[tuple[str, str]], name: str) -> list[str]: ...
def set_header(fields: list[tuple[str, str]], name: str, value: str) -> None: ...
def http_answer(status: int, content_type: str, body: bytes) -> bytes: ...

class HandlerDeadline:
    """One handler's deadline (HandlerDeadlines.start)."""

    expired: bool
    def finish(self) -> None: ...

class HandlerDeadlines:
    """The deadlines of the handlers of one loop with the same timeout: one
    loop timer for all; past its deadline a handler's task is cancelled."""

    timeout: float
    def __init__(self, loop: Any, timeout: float) -> None: ...
    def start(self, task: Optional[asyncio.Task[Any]] = None) -> HandlerDeadline: ...

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
