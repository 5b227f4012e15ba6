"""Channels: named fan-out any process can publish to (docs/guide.md, "Channels").

The compiled core (``_core/channels.pyx``) holds this node's channel table
and does the fan-out; this module names its functions, and makes
``subscribe`` awaitable, as it will wait for other nodes and for history
once they exist. Calls made outside any process act as the node's system
process. Namespaces (per-channel options from the configuration file) are
looked up with ``namespace_of``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from ._core.channels import Subscription, active, publish, subscribers, unsubscribe
from ._core.channels import subscribe as _subscribe
from ._core.pid import Pid
from ._core.relayspec import check_channel_name

__all__ = [
    "Subscription",
    "active",
    "check_channel_name",
    "namespace_of",
    "publish",
    "subscribe",
    "subscribers",
    "unsubscribe",
]


async def subscribe(conn_pid: Union[Pid, str], name: str, info: Optional[dict[str, Any]] = None) -> Subscription:
    """Subscribe the connection ``conn_pid`` (on this node) to channel
    ``name``; its client then receives the channel's publications."""
    return _subscribe(conn_pid, name, info)


def namespace_of(name: str) -> Optional[dict[str, Any]]:
    """The options of the first ``channel.namespace`` of the loaded app
    whose pattern matches ``name`` (None: no match, the defaults)."""
    from .app import current_namespaces

    check_channel_name(name)
    for namespace in current_namespaces():
        if namespace.matches(name):
            return namespace.options()
    return None
