"""The WebSocket side, served by wsrelay: one process per chat room, and the
endpoint that authenticates a connection and relays it to its room.

A room's process is the one place that knows who is in the room: the API
reaches it by its name (``room_name(room)``) to post to it and to ask who is
online.
"""

from __future__ import annotations

import json
import re

from sessions import sessions

from wsrelay import App, Pid, process

ROOM = re.compile(r"[a-z0-9-]{1,32}")


def room_name(room: str) -> str:
    """The registered name of a room's process."""
    return f"room:{room}"


async def connect(req, res):
    """GET /ws/chat?room=garden&token=...: the token's user, from the session
    store (awaited: an async def endpoint may, within WSRELAY_HANDLER_TIMEOUT),
    then a relay to the room's process, started with the room's first client.

    Browsers cannot set headers on a WebSocket request: the token comes in
    the query string."""
    user = await sessions.user(req.query("token", ""))
    if user is None:
        res.status(401).header("WWW-Authenticate", "Bearer")
        res.write("401 Unauthorized: unknown token\n")
        return  # no relay: this answer goes to the client as it is
    room = req.query("room", "")
    if not ROOM.fullmatch(room):
        res.status(400).write("400 Bad Request: a room is 1 to 32 of a-z, 0-9 and -\n")
        return
    # Nothing is awaited from here on: the lookup and the spawn happen in one
    # step of the loop, so two first clients cannot start a room twice.
    pid = process.whereis(room_name(room))
    if pid is None:
        pid = process.spawn("chat:room", None, room)
        process.register(room_name(room), pid)
    res.relay(pid, metadata={"user": user})


async def room(name: str):
    """A chat room: its members' connections, what they say to each other,
    and what the API posts; it answers the call "online". Rooms live as long
    as the service (their names are bounded by ROOM)."""
    members: dict[Pid, str] = {}

    def online() -> list[str]:
        return sorted(set(members.values()))

    def broadcast(event: dict) -> None:
        process.broadcast(list(members), {"type": "text", "data": json.dumps(event)})

    async for msg in process.inbox():
        data = msg.payload
        if msg.topic == "ws.join":
            members[data["client_pid"]] = data["metadata"]["user"]
            broadcast({"event": "join", "room": name, "user": data["metadata"]["user"], "online": online()})
        elif msg.topic == "ws.leave":
            user = members.pop(data["client_pid"], None)
            broadcast({"event": "leave", "room": name, "user": user, "online": online()})
        elif msg.topic == "ws.message":
            if data["type"] == "text":
                broadcast({"event": "message", "room": name, "from": data["metadata"]["user"], "text": data["data"]})
            else:
                process.send(data["client_pid"], "ws.send", {
                    "type": "text", "data": json.dumps({"event": "error", "error": "send text"})})
        elif msg.topic == "post":  # from the API's async def endpoint
            broadcast({"event": "message", "room": name, "from": data["from"], "text": data["text"]})
        elif msg.topic == "notice":  # from the API's def endpoint, through wsrelay.threads
            broadcast({"event": "notice", "room": name, "by": data["by"], "text": data["text"]})
        elif msg.topic == "online":  # a call: await process.call(room_name(room), "online")
            msg.reply(online())


def build_app(addr: str = "127.0.0.1:8080") -> App:
    """The wsrelay application: the gateway's service, its WebSocket route
    and the room process."""
    app = App("chat")
    app.service("gateway", addr)
    app.process_host("rooms")
    ws = app.router("ws", "gateway", prefix="/ws", post_middleware=["websocket_relay"])
    ws.endpoint("GET", "/chat", connect)
    app.process_function("chat:room", room)
    return app
