"""Broadcasting with a set of client PIDs (docs/guide.md, "Broadcasting"):
every /ws/chat connection is relayed to one shared chat process, which keeps
the set of its clients and sends each message to all of them."""

from __future__ import annotations

import json

from wsrelay import process


def endpoint(req, res):
    """GET /ws/chat?user=ada: relay to the chat process, starting it if needed."""
    pid = process.registry.lookup("chat")
    if pid is None:
        pid = process.spawn("app.ws:chat", "app:processes")
        process.register("chat", pid)
    res.header("X-WS-Relay", json.dumps({
        "target_pid": str(pid),
        "metadata": {"user": req.query("user", "anonymous")[:32]},
    }))


async def chat():
    clients = set()

    def broadcast(message):
        data = json.dumps(message)
        for pid in clients:
            process.send(pid, "ws.send", {"type": "text", "data": data})

    async for msg in process.inbox():
        data = msg.payload
        if msg.topic == "ws.join":
            # On join
            clients.add(data["client_pid"])
            broadcast({"event": "join", "user": data["metadata"]["user"], "online": len(clients)})
        elif msg.topic == "ws.leave":
            # On leave
            clients.discard(data["client_pid"])
            broadcast({"event": "leave", "user": data["metadata"]["user"], "online": len(clients)})
        elif msg.topic == "ws.message" and data["type"] == "text":
            broadcast({"event": "message", "user": data["metadata"]["user"], "text": data["data"]})
