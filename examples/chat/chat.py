"""Chat rooms on channels: a room is the channel ``room:<name>``.

The handler grants each browser tab its room's channel; what a tab says is
relayed to this node's ``chat`` process, which publishes it to the room.
Nothing here holds a room: a channel has the same subscribers seen from
every worker (docs/guide.md, "Channels"), so with ``WSRELAY_WORKERS`` each
worker runs its own ``chat`` process and a publication from any of them
reaches the room's tabs on all of them. Who is in a room is the channel's
presence (app.yaml's ``room_channels``; docs/guide.md, "Presence"), known
on every worker too.
"""

from __future__ import annotations

import json
import pathlib
import re

from wsrelay import channels, process

PAGE = (pathlib.Path(__file__).parent / "index.html").read_bytes()
ROOM = re.compile(r"[A-Za-z0-9_]{1,64}")
# Longer messages are cut: a tab cannot make every other tab receive megabytes.
MAX_TEXT = 2000


def page(req, res):
    res.header("Content-Type", "text/html; charset=utf-8")
    res.write(PAGE)


def endpoint(req, res):
    """GET /ws/chat?room=lobby&user=ada: subscribed to ``room:lobby``, relayed
    to this node's chat process (started by the first tab)."""
    room = req.query("room") or "lobby"
    user = (req.query("user") or "anonymous")[:32]
    if not ROOM.fullmatch(room):
        res.status(400)
        res.write("room names are 1 to 64 letters, digits and _")
        return
    pid = process.registry.lookup("chat")
    if pid is None:
        pid = process.spawn("app.ws:chat", "app:processes")
        process.register("chat", pid)
    res.relay(pid, channels=[room_channel(room)], user=user, metadata={"user": user, "room": room})


def room_channel(room: str) -> str:
    return f"room:{room}"


async def chat():
    """Publishes each tab's arrival, messages and departure to its room,
    and tells each arriving tab who is in the room.

    The tabs of this node are relayed here; no process keeps a room's
    members: the room's presence does, on every worker, and its join and
    leave events keep each tab's online list current after the first."""
    async for msg in process.inbox():
        data = msg.payload
        if msg.topic not in ("ws.join", "ws.message", "ws.leave"):
            continue
        meta = data["metadata"]
        room = room_channel(meta["room"])
        if msg.topic == "ws.join":
            # Subscribed before ws.join: the newcomer sees its own arrival.
            # The node its connection came through shows where the kernel put it.
            channels.publish(room, {"kind": "join", "user": meta["user"], "room": meta["room"],
                                    "node": data["client_pid"].node})
            # The newcomer's first online list, its own entry in it; sent to it
            # alone, without the channel's envelope. A join or leave event may
            # reach it before this list (which may also be older than a leave):
            # the page merges the two (index.html, its "message" listener).
            who = await channels.presence(room)
            process.send(data["client_pid"], "ws.send", {"type": "text", "data": json.dumps(who)})
        elif msg.topic == "ws.message" and data["type"] == "text":
            channels.publish(room, {"kind": "message", "user": meta["user"], "text": data["data"][:MAX_TEXT]})
        elif msg.topic == "ws.leave":
            # The connection has left its channels: the others hear of it.
            channels.publish(room, {"kind": "leave", "user": meta["user"]})
