"""A user's notifications: each socket is subscribed to the channel
``user:<id>``, which the Django site publishes to (docs/guide.md,
"Publishing from your application").

The handler is where a real site checks who is connecting, for instance by
a token the Django site signed; this example takes ``?user=`` on trust.
"""

from __future__ import annotations

import json
import re

from wsrelay import process

USER = re.compile(r"[A-Za-z0-9_-]{1,64}")


def endpoint(req, res):
    """GET /ws/notifications?user=42: subscribed to user:42."""
    user = req.query("user", "")
    if not USER.fullmatch(user):
        res.status(400).write("user is 1 to 64 of A-Z, a-z, 0-9, _ and -\n")
        return
    pid = process.registry.lookup("notifications")
    if pid is None:
        pid = process.spawn("app.ws:notifications", "app:processes")
        process.register("notifications", pid)
    res.relay(pid, channels=[f"user:{user}"], user=user)


async def notifications():
    """The target of this node's sockets. Publications reach the clients
    without it; it tells each client its connection's PID, which the server
    API's subscribe, unsubscribe and disconnect take, and ignores what
    clients send."""
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            process.send(client, "ws.send", {"type": "text", "data": json.dumps({"connected": str(client)})})
