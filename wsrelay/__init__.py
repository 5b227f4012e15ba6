"""wsrelay: a WebSocket relay engine where every connection is a process."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from . import channels as channels  # named fan-out (docs/guide.md, "Channels")
from . import process
from . import relay as relay  # registers the websocket_relay middleware
from . import threads as threads  # calls from other threads (docs/guide.md, "One thread")
from ._core.group import Group
from ._core.history import configure as configure_history
from ._core.message import Message
from ._core.pid import Pid
from ._core.relayspec import set_max_channels_per_connection
from ._core.remote import join_cluster
from ._core.runtime import Inbox, Node, node, set_node_factory
from ._core.vocab import EXIT, LINK_DOWN
from .app import App
from .cli import run
from .errors import (
    CallError,
    ConfigError,
    MailboxFull,
    NoTransport,
    RelayHeaderError,
    RelaySettingsError,
    SettingsError,
    WrongThread,
)
from .gateway import Gateway
from .http import Request, Response
from .settings import settings as _settings

__version__ = "0.1.0"


def _make_node() -> Node:
    from .settings import node_name

    s = _settings()
    set_max_channels_per_connection(s.max_channels_per_connection)
    configure_history(s.history_max_bytes, s.recovery_max)
    return Node(node_name(s), s.mailbox_capacity)


# The core makes its node on first use; its settings come from this layer.
set_node_factory(_make_node)

F = TypeVar("F", bound=Callable[..., Any])


def register(id: str) -> Callable[[F], F]:
    """Register an ``async def`` process function under ``id``
    (``"namespace:name"``), so ``process.spawn(id)`` can start it."""

    def decorate(fn: F) -> F:
        node().register_function(id, fn)
        return fn

    return decorate


__all__ = [
    "App",
    "Gateway",
    "Group",
    "Request",
    "Response",
    "EXIT",
    "LINK_DOWN",
    "CallError",
    "ConfigError",
    "Inbox",
    "MailboxFull",
    "Message",
    "NoTransport",
    "Node",
    "Pid",
    "RelayHeaderError",
    "RelaySettingsError",
    "SettingsError",
    "WrongThread",
    "channels",
    "join_cluster",
    "node",
    "process",
    "register",
    "run",
]
