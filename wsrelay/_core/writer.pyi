from typing import Any

from .runtime import Process
from .stats import Counters

class Writer:
    """The flush scheduler of one gateway service."""

    limit: int
    def __init__(self, loop: Any, counters: Counters, limit: int) -> None: ...

class Output(Process):
    """A process that writes to a client socket (a relay connection)."""
