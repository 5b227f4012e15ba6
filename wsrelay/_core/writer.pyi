from typing import Any, Optional

from .deflate import DeflateParams
from .runtime import Process
from .stats import Counters

class Writer:
    """The flush scheduler of one gateway service."""

    limit: int
    compression_min_size: int
    def __init__(self, loop: Any, counters: Counters, limit: int, compression_min_size: int = 128) -> None: ...

class Output(Process):
    """A process that writes to a client socket (a relay connection)."""

    deflate_params: Optional[DeflateParams]
