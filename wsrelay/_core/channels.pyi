from typing import Any, Optional, Union

from .pid import Pid

PUBLICATION: str
UNSUBSCRIBED: str

class Channel:
    name: str

class Subscription:
    """What ``subscribe`` returns (no history yet: not recovered, no offset or epoch)."""

    channel: str
    recovered: bool
    offset: Optional[int]
    epoch: Optional[str]

def subscribe(pid: Union[Pid, str], name: str, info: Optional[dict[str, Any]] = None) -> Subscription: ...
def unsubscribe(pid: Union[Pid, str], name: str) -> bool: ...
def publish(name: str, data: Any) -> dict[str, Any]: ...
def active(pattern: Optional[str] = None) -> dict[str, dict[str, int]]: ...
def subscribers(name: str) -> list[Pid]: ...
