import asyncio
import logging
from typing import Any, Callable, Union

from picows import WSTransport

CHECKED_AGAINST: str

def server_protocol_factory(listener_factory: Callable[[Any], Any],
                            logger: Union[logging.Logger, logging.LoggerAdapter[Any]], handshake_timeout: float,
                            max_frame_size: int, read_buffer_size: int) -> Callable[[], asyncio.BufferedProtocol]: ...

class ServerProtocols:
    """Makes the server-side picows protocols of one service, each with its
    own listener factory."""

    def __init__(self, logger: Union[logging.Logger, logging.LoggerAdapter[Any]], handshake_timeout: float,
                 max_frame_size: int, read_buffer_size: int) -> None: ...
    def __call__(self, listener_factory: Callable[[Any], Any]) -> asyncio.BufferedProtocol: ...

def _release_upgrade(transport: WSTransport, write_buffer: int) -> None: ...
def _write_buffer_capacity(transport: WSTransport) -> int: ...
