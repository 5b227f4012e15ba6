from typing import Any, Optional

from .pid import Pid

class Message:
    topic: str
    payload: Any
    sender: Optional[Pid]
    def __init__(self, topic: str, payload: Any = None, sender: Optional[Pid] = None) -> None: ...
    def reply(self, value: Any) -> bool: ...
