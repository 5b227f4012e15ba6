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


class ServerProcess:
    """A gateway in a child process (``wsrelay serve`` or a script calling
    ``wsrelay.run``), bound to an ephemeral port it reports on stdout."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None,
                 cwd: Optional[str] = None) -> None:
        import os
        import subprocess

        full_env = {**os.environ, "WSRELAY_ADDR": "127.0.0.1:0", **(env or {})}
        self.proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.url = ""

    def wait_ready(self, timeout: float = 30.0) -> str:
        """The service's http:// URL, read from the 'wsrelay: serving' line."""
        import selectors
        import time

        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("wsrelay: serving "):
                self.url = line.split()[2].rstrip(",")
                return self.url
        self.proc.kill()
        _, err = self.proc.communicate()
        raise AssertionError(f"server did not start (exit {self.proc.returncode}):\n{err}")

    def stop(self, sig: int = 15, timeout: float = 30.0) -> tuple[int, str, str]:
        """Signal the server, wait for it; (exit status, stdout, stderr)."""
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err
