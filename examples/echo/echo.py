"""Echo: one process per connection sends every client message back as it came
(same type, same data). The conformance test runs Autobahn against it."""

from __future__ import annotations

import json

from wsrelay import process


def endpoint(req, res):
    """Spawn an echo process for this connection and relay to it."""
    pid = process.spawn("echo.ws:echo", "echo:processes")
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))


async def echo() -> None:
    async for msg in process.inbox():
        if msg.topic == "ws.message":
            data = msg.payload
            process.send(data["client_pid"], "ws.send", {"type": data["type"], "data": data["data"]})
        elif msg.topic == "ws.leave":
            return
