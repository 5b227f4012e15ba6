"""Who is online (docs/guide.md, "Connections are processes"): one process
monitors every session's connection and tells all of them when someone comes
or goes. It never touches a socket: it only knows PIDs."""

from __future__ import annotations

import json

from wsrelay import EXIT, process

NAME = "presence"


def track(client_pid, user):
    """Called by a session on ws.join: start the presence process if needed."""
    pid = process.registry.lookup(NAME)
    if pid is None:
        pid = process.spawn("app.ws:presence", "app:processes")
        process.register(NAME, pid)
    process.send(pid, "track", (client_pid, user))


async def presence():
    online = {}  # connection PID -> user
    async for msg in process.inbox():
        if msg.topic == "track":
            client_pid, user = msg.payload
            # Monitor the WebSocket connection like any process: EXIT comes
            # when it closes (at once, reason "noproc", if it already has).
            process.monitor(client_pid)
            online[client_pid] = user
        elif msg.topic == EXIT:
            if online.pop(msg.payload["pid"], None) is None:
                continue
        else:
            continue
        # Send to WebSocket clients from a process that is not their target.
        users = sorted(online.values())
        for client_pid in online:
            process.send(client_pid, "ws.send", {
                "type": "text",
                "data": json.dumps({"event": "online", "users": users}),
            })
