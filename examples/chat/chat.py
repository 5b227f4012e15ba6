"""Chat rooms: one process per room; every browser tab is a connection process
relayed to its room.

With several workers (``WSRELAY_WORKERS``) or machines, a room is one process
for the whole cluster, found by its cluster-wide name: tabs on any worker
join the same room.
"""

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
    # The room of the cluster, or one this worker started and that is still
    # claiming the name (a handler cannot wait for the claim).
    pid = process.whereis_global(name) or process.registry.lookup(name)
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
    if not await process.register_global(f"room:{name}"):
        # Another worker started this room first: send our clients there.
        return await hand_over(name)
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
            client = data["client_pid"]
            members[client] = data["metadata"]["user"]
            broadcast({"event": "join", "user": data["metadata"]["user"], "room": name,
                       "members": sorted(members.values()), "node": client.node})
        elif msg.topic == "ws.message" and data["type"] == "text":
            broadcast({"event": "message", "user": data["metadata"]["user"], "text": data["data"][:2000]})
        elif msg.topic == "ws.leave":
            user = members.pop(data["client_pid"], None)
            if user is not None:
                broadcast({"event": "leave", "user": user, "members": sorted(members.values())})


async def hand_over(name: str):
    """Transfer every client that joins this (losing) room to the room that
    holds the name, until none has come for a while."""
    process.unregister(f"room:{name}")
    winner = process.whereis_global(f"room:{name}")
    inbox = process.inbox()
    while True:
        try:
            msg = await inbox.receive(timeout=IDLE_SECONDS)
        except TimeoutError:
            return
        if msg.topic == "ws.join" and winner is not None:
            process.send(msg.payload["client_pid"], "ws.control", {"target_pid": str(winner)})
        elif msg.topic == "ws.leave" and msg.payload["reason"] == "transferred":
            continue
