from typing import Any, Optional, Union

from .pid import Pid
from .runtime import Process

class Call(Process):
    """A call in flight: its waiter, an alias of the caller in the PID table."""

class Deadlines:
    """The timeouts of one loop's calls, kept per tick, with one loop timer."""
    def __init__(self, loop: Any) -> None: ...
    def expire(self) -> None: ...

async def call(dest: Union[Pid, str], topic: str, payload: Any = None, timeout: Optional[float] = 5.0) -> Any: ...
