"""Helpers for tests that run a real gateway on an ephemeral port."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, AsyncIterator, Callable, Optional

from wsrelay import App, Gateway, process
from wsrelay.settings import Settings
from wsrelay.settings import settings as current_settings


def relay_handler(process_id: str, *args: Any, **fields: Any) -> Callable[[Any, Any], None]:
    """A handler that spawns ``process_id(*args)`` and relays to it; extra
    ``fields`` go into X-WS-Relay (metadata, message_topic, heartbeat_interval)."""

    def handler(req: Any, res: Any) -> None:
        pid = process.spawn(process_id, None, *args)
        res.header("X-WS-Relay", json.dumps({"target_pid": str(pid), **fields}))

    return handler


def relay_app(handler: Callable[[Any, Any], None], origins: Optional[str] = None,
              path: str = "/chat") -> App:
    """An app with one service on an ephemeral port and one relay route /ws<path>."""
    app = App("test")
    app.service("gateway", "127.0.0.1:0")
    options = {} if origins is None else {"wsrelay.allowed.origins": origins}
    router = app.router("ws", "gateway", "/ws", post_middleware=["websocket_relay"], post_options=options)
    router.endpoint("GET", path, handler)
    return app


@contextlib.asynccontextmanager
async def running(app: App, **overrides: Any) -> AsyncIterator[Gateway]:
    """The gateway of ``app``, started with the current settings changed by
    ``overrides`` (Settings field names), and drained on exit."""
    settings: Settings = dataclasses.replace(current_settings(), **overrides)
    gateway = Gateway(app, settings)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.shutdown(drain_timeout=5)
