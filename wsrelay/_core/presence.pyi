from typing import Any

JOIN: str
LEAVE: str

class Presence:
    """The entries of one presence channel, this node's and the other nodes'."""

    name: str

def set_namespaces(namespaces: list[tuple[str, bool, bool, int]]) -> None: ...
def entries(name: str) -> dict[str, list[dict[str, Any]]]: ...
def stats(name: str) -> dict[str, int]: ...
def here() -> tuple[int, int, int]: ...
