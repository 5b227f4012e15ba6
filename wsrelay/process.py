"""The process API, mirroring the seed's ``process`` module.

Every call here is the compiled core's own function: this module only names
them. Calls made outside any process act as the node's system process.
"""

from __future__ import annotations

from typing import Any, Optional

from ._core.call import call
from ._core.group import broadcast
from ._core.pid import Pid
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
    "call",
    "inbox",
    "is_alive",
    "link",
    "monitor",
    "register",
    "register_global",
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
    "whereis_global",
]


async def register_global(name: str, pid: Any = None) -> bool:
    """Claim ``name`` for ``pid`` (the caller by default) across the cluster,
    atomically: True, or False when another live PID holds it. The name is
    released when its PID ends or its node is lost. On a single node it is a
    node-local name (``register``), so the same code runs either way."""
    from ._core.runtime import node

    target = self() if pid is None else (pid if isinstance(pid, Pid) else Pid.parse(pid))
    remote = node().remote
    if remote is None:
        holder = whereis(name)
        if holder is not None and holder != target:
            return False
        register(name, target)
        return True
    return await remote.register_global(name, target)


def whereis_global(name: str) -> Optional[Pid]:
    """The PID holding the cluster-wide ``name``, as this node sees it now
    (kept current by a watch); the node-local name on a single node."""
    from ._core.runtime import node

    remote = node().remote
    if remote is None:
        return whereis(name)
    return remote.whereis_global(name)


class _Registry:
    """Names for PIDs: ``process.registry.lookup(name)``."""

    # The PID registered as ``name``, or None: the core's whereis itself (a
    # function around it cost a Python frame per lookup).
    lookup = staticmethod(whereis)

    @staticmethod
    def names() -> dict:
        from ._core.runtime import node

        return node().registered()


registry = _Registry()
