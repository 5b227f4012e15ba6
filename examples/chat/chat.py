"""Chat rooms: one process per room; every browser tab is a connection process
relayed to its room."""

from __future__ import annotations

import json
import pathlib

from wsrelay import EXIT, process

PAGE = (pathlib.Path(__file__).parent / "index.html").read_bytes()
# An empty room waits this long for someone to join before it ends.
IDLE_SECONDS = 60.0


def page(req, res):
    res.header("Content-Type", "text/html; charset=utf-8")
    res.write(PAGE)


def endpoint(req, res):
    """Relay the connection to its room's process, starting the room if needed."""
    room = req.query("room") or "lobby"
    user = (req.query("user") or "anonymous")[:32]
    if not room.isidentifier():
        res.status(400)
        res.write("room names are letters, digits and _")
        return
    name = f"room:{room}"
    pid = process.registry.lookup(name)
    if pid is None:
        pid = process.spawn("app.ws:room", "app:processes", room)
        process.register(name, pid)
    res.header("X-WS-Relay", json.dumps({
        "target_pid": str(pid),
        "message_topic": "ws.message",
        "heartbeat_interval": "30s",
        "metadata": {"user": user, "room": room},
    }))


async def room(name: str):
    members: dict = {}
    inbox = process.inbox()

    def broadcast(event: dict) -> None:
        # One frame for the room, compressed once for the tabs that agreed to
        # permessage-deflate: not once per member.
        process.broadcast(list(members), {"type": "text", "data": json.dumps(event)})

    while True:
        try:
            msg = await inbox.receive(timeout=None if members else IDLE_SECONDS)
        except TimeoutError:
            return  # empty for a while: the room ends and its name is freed
        if msg.topic == EXIT:
            continue
        data = msg.payload
        if msg.topic == "ws.join":
            members[data["client_pid"]] = data["metadata"]["user"]
            broadcast({"event": "join", "user": data["metadata"]["user"], "room": name,
                       "members": sorted(members.values())})
        elif msg.topic == "ws.message" and data["type"] == "text":
            broadcast({"event": "message", "user": data["metadata"]["user"], "text": data["data"][:2000]})
        elif msg.topic == "ws.leave":
            user = members.pop(data["client_pid"], None)
            if user is not None:
                broadcast({"event": "leave", "user": user, "members": sorted(members.values())})
