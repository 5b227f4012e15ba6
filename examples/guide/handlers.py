"""HTTP handlers of the guide's application (docs/guide.md, "Handlers").

A handler is a function ``handler(req, res)``, plain or ``async def``. It
answers an ordinary HTTP request, or, on a router with the
``websocket_relay`` middleware, sets ``X-WS-Relay`` to have the connection
upgraded and relayed to a process.
"""

from __future__ import annotations

import asyncio
import json

from wsrelay import process


def hello(req, res):
    """GET /hello?name=Ada: an ordinary HTTP response."""
    name = req.query("name", "world")
    res.header("Content-Type", "text/plain; charset=utf-8")
    res.write(f"hello, {name}\n")


def handler(req, res):
    """GET /ws/session: spawn a process for this connection and relay to it."""
    # Spawn the process that handles this connection
    pid = process.spawn("app.ws:handler", "app:processes")

    # Configure the relay
    res.header("X-WS-Relay", json.dumps({
        "target_pid": str(pid),
        "message_topic": "ws.message",
        "heartbeat_interval": "30s",
        "metadata": {
            "user_id": req.query("user_id"),
        },
    }))


def clock(req, res):
    """GET /ws/clock: the same process, with a heartbeat every half second."""
    pid = process.spawn("app.ws:handler", "app:processes")
    res.header("X-WS-Relay", json.dumps({
        "target_pid": str(pid),
        "heartbeat_interval": "500ms",
        "metadata": {"user_id": req.query("user_id")},
    }))


# In a real application: a session store, a JWT check, ...
TOKENS = {"s3cret": "ada"}


def private(req, res):
    """GET /ws/private?token=...: refuse unknown users with an ordinary 401.

    Browsers cannot set headers on a WebSocket request: pass a token in the
    query string (as here) or rely on a cookie (``req.header("Cookie")``).
    """
    user = TOKENS.get(req.query("token", ""))
    if user is None:
        res.status(401)
        res.write("401 Unauthorized: unknown token\n")
        return  # no X-WS-Relay: this response goes to the client as it is
    pid = process.spawn("app.ws:handler", "app:processes")
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid), "metadata": {"user_id": user}}))
    # Other headers set by the handler go out with the 101 response.
    res.header("X-User", user)


SESSIONS = {"t-grace": "grace"}


async def load_user(token):
    """Stands for an async session store (a database, Redis, another service)."""
    await asyncio.sleep(0.01)
    return SESSIONS.get(token)


async def account(req, res):
    """GET /ws/account?token=...: an async def handler may await, within
    WSRELAY_HANDLER_TIMEOUT, before it relays or refuses."""
    user = await load_user(req.query("token", ""))
    if user is None:
        res.status(401).write("401 Unauthorized: unknown session\n")
        return
    pid = process.spawn("app.ws:handler", "app:processes")
    res.relay(pid, metadata={"user_id": user})
