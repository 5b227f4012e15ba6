"""Moving a connection between processes (docs/guide.md, "Transfer"): every
/ws/lobby connection starts in its own lobby process; the client names a
room, and the lobby hands the connection over to that room's process with
``ws.control``. Rooms broadcast with a Group."""

from __future__ import annotations

import json

from wsrelay import Group, process


def endpoint(req, res):
    """GET /ws/lobby?user=ada: a lobby process per connection."""
    pid = process.spawn("app.ws:lobby", "app:processes")
    res.header("X-WS-Relay", json.dumps({
        "target_pid": str(pid),
        "metadata": {"user": req.query("user", "anonymous")[:32]},
    }))


def send(client_pid, event):
    process.send(client_pid, "ws.send", {"type": "text", "data": json.dumps(event)})


def room_pid(room):
    """The process of ``room``, started on first use; its name is freed
    when it ends."""
    pid = process.registry.lookup(f"room:{room}")
    if pid is None:
        pid = process.spawn("app.ws:room", "app:processes", room)
        process.register(f"room:{room}", pid)
    return pid


async def lobby():
    async for msg in process.inbox():
        data = msg.payload
        if msg.topic == "ws.join":
            send(data["client_pid"], {"event": "lobby", "hint": "send the name of a room"})
        elif msg.topic == "ws.message" and data["type"] == "text":
            room = data["data"].strip()
            if not room.isidentifier():
                send(data["client_pid"], {"event": "error", "error": "room names are letters, digits and _"})
                continue
            # Hand the connection over: from now on the room receives its messages
            process.send(data["client_pid"], "ws.control", {
                "target_pid": str(room_pid(room)),
                "message_topic": "ws.message",
                "metadata": {**data["metadata"], "room": room},
            })
        elif msg.topic == "ws.leave":
            # reason "transferred" once the connection moved to a room, or
            # "client_closed", "connection_lost", ... if the client went away
            return


async def room(name):
    members = Group()
    inbox = process.inbox()
    async for msg in inbox:
        data = msg.payload
        if msg.topic == "ws.join":
            members.add(data["client_pid"])
            members.send({"type": "text", "data": json.dumps(
                {"event": "join", "room": name, "user": data["metadata"]["user"], "members": len(members)})})
        elif msg.topic == "ws.message" and data["type"] == "text":
            members.send({"type": "text", "data": json.dumps(
                {"event": "message", "room": name, "user": data["metadata"]["user"], "text": data["data"]})})
        elif msg.topic == "announce":
            # From any process, or from the HTTP API (with_aiohttp.py)
            members.send({"type": "text", "data": json.dumps({"event": "announce", "room": name, "text": msg.payload})})
        elif msg.topic == "ws.leave":
            # A closed connection has left the group by itself already.
            members.discard(data["client_pid"])
            members.send({"type": "text", "data": json.dumps(
                {"event": "leave", "room": name, "user": data["metadata"]["user"], "members": len(members)})})
            if len(members) == 0 and len(inbox) == 0:
                # Nobody left, and no ws.join on its way: the room ends and
                # its name is freed; the next client starts a new one.
                return
