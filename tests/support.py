"""Helpers for tests that run a real gateway on an ephemeral port in the test's
own process: the app, the running gateway, the test's (system) inbox, and
/metrics as numbers. tests/harness.py runs one in a child process,
tests/wsclient.py is the raw client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any, AsyncIterator, Callable, Optional

from prometheus_client.parser import text_string_to_metric_families

from tests.wsclient import http_request
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


async def expect(topic: str, timeout: float = 30.0) -> Any:
    """The payload of the next message of the test's (system) inbox, which
    must have ``topic``."""
    msg = await process.inbox().receive(timeout=timeout)
    assert msg.topic == topic, f"expected {topic!r}, got {msg.topic!r}: {msg.payload!r}"
    return msg.payload


async def until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "the condition") -> None:
    """Wait until ``condition()`` is true, checking every 10 ms: for state
    inside the gateway that announces no event of its own (a connection
    pausing, a counter moving)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.01)


async def drain_inbox() -> None:
    """Drop what is left in the test's (system) inbox."""
    inbox = process.inbox()
    while inbox.receive_nowait() is not None:
        pass


class Metrics:
    """One scrape of /metrics, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The value of sample ``name`` with exactly ``labels``; 0 when absent
        (a labelled counter has no sample until it is first counted)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.samples)


async def scrape(target: Any) -> Metrics:
    """GET /metrics of a gateway (a tests.wsclient target), parsed."""
    res = await http_request(target, "/metrics")
    assert res.status == 200, (res.status, res.body)
    assert res.headers["Content-Type"].startswith("text/plain"), res.headers
    return Metrics(res.text)
