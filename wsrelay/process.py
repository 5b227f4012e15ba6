"""The process API, mirroring the seed's ``process`` module.

Every call here is the compiled core's own function: this module only names
them. Calls made outside any process act as the node's system process.
"""

from __future__ import annotations

from ._core.group import broadcast
from ._core.runtime import (
    inbox,
    is_alive,
    link,
    monitor,
    self,
    send,
    spawn,
    spawn_linked,
    spawn_monitored,
    terminate,
    trap_exits,
    unlink,
    unmonitor,
    unregister,
    whereis,
)
from ._core.runtime import register as register

__all__ = [
    "broadcast",
    "inbox",
    "is_alive",
    "link",
    "monitor",
    "register",
    "registry",
    "self",
    "send",
    "spawn",
    "spawn_linked",
    "spawn_monitored",
    "terminate",
    "trap_exits",
    "unlink",
    "unmonitor",
    "unregister",
    "whereis",
]


class _Registry:
    """Names for PIDs: ``process.registry.lookup(name)``."""

    @staticmethod
    def lookup(name: str):
        """The PID registered as ``name``, or None."""
        return whereis(name)

    @staticmethod
    def names() -> dict:
        from ._core.runtime import node

        return node().registered()


registry = _Registry()
