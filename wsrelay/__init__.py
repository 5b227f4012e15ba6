"""wsrelay: a WebSocket relay engine where every connection is a process.

``import wsrelay`` loads nothing but this module: each public name is
imported when it is first used, and the first use loads the runtime (the
compiled core, its node made from the settings, the websocket_relay
middleware). A process that only talks to a gateway through
``wsrelay.client`` (a Django or Celery worker) so never loads the core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    # What each lazy name is, for type checkers and editors.
    from . import channels as channels
    from . import process as process
    from . import relay as relay
    from . import threads as threads
    from ._core.group import Group as Group
    from ._core.message import Message as Message
    from ._core.pid import Pid as Pid
    from ._core.remote import join_cluster as join_cluster
    from ._core.runtime import Inbox as Inbox
    from ._core.runtime import Node as Node
    from ._core.runtime import node as node
    from ._core.vocab import EXIT as EXIT
    from ._core.vocab import LINK_DOWN as LINK_DOWN
    from .app import App as App
    from .cli import run as run
    from .errors import CallError as CallError
    from .errors import ConfigError as ConfigError
    from .errors import MailboxFull as MailboxFull
    from .errors import NoTransport as NoTransport
    from .errors import RelayHeaderError as RelayHeaderError
    from .errors import RelaySettingsError as RelaySettingsError
    from .errors import SettingsError as SettingsError
    from .errors import WrongThread as WrongThread
    from .gateway import Gateway as Gateway
    from .http import Request as Request
    from .http import Response as Response

__version__ = "0.1.0"

# Each public name and the module it comes from (declared once: __all__ and
# the lazy lookup are derived from it). A module of its own is named "".
_EXPORTS: dict[str, str] = {
    "App": ".app",
    "Gateway": ".gateway",
    "Group": "._core.group",
    "Request": ".http",
    "Response": ".http",
    "EXIT": "._core.vocab",
    "LINK_DOWN": "._core.vocab",
    "CallError": ".errors",
    "ConfigError": ".errors",
    "Inbox": "._core.runtime",
    "MailboxFull": ".errors",
    "Message": "._core.message",
    "NoTransport": ".errors",
    "Node": "._core.runtime",
    "Pid": "._core.pid",
    "RelayHeaderError": ".errors",
    "RelaySettingsError": ".errors",
    "SettingsError": ".errors",
    "WrongThread": ".errors",
    "channels": "",  # named fan-out (docs/guide.md, "Channels")
    "join_cluster": "._core.remote",
    "node": "._core.runtime",
    "process": "",
    "relay": "",  # registers the websocket_relay middleware
    "run": ".cli",
    "threads": "",  # calls from other threads (docs/guide.md, "One thread")
}

_loaded = False


def load_runtime() -> None:
    """Load the runtime once: the core makes its node on first use, from
    this layer's settings, and the websocket_relay middleware is
    registered. The first public name used does it; so do the gateway and
    the command line, which may be imported on their own."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from ._core.runtime import set_node_factory

    set_node_factory(_make_node)
    importlib.import_module(".relay", __name__)


def _make_node() -> Node:
    from ._core.history import configure as configure_history
    from ._core.relayspec import set_max_channels_per_connection
    from ._core.runtime import Node
    from .settings import node_name, settings

    s = settings()
    set_max_channels_per_connection(s.max_channels_per_connection)
    configure_history(s.history_max_bytes, s.recovery_max)
    return Node(node_name(s), s.mailbox_capacity)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsrelay' has no attribute {name!r}")
    load_runtime()
    value = importlib.import_module(module or f".{name}", __name__)
    if module:
        value = getattr(value, name)
    globals()[name] = value
    return value


F = TypeVar("F", bound=Callable[..., Any])


def register(id: str) -> Callable[[F], F]:
    """Register an ``async def`` process function under ``id``
    (``"namespace:name"``), so ``process.spawn(id)`` can start it."""
    from ._core.runtime import node

    load_runtime()

    def decorate(fn: F) -> F:
        node().register_function(id, fn)
        return fn

    return decorate


__all__ = sorted([*_EXPORTS, "register"])
