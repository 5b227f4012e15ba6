"""Channels (docs/guide.md, "Channels"): every /ws/rooms connection is
subscribed by its handler to its room's channel and its user's, and relayed
to one rooms process, which publishes what clients say to their room."""

from __future__ import annotations

from wsrelay import channels, process


def endpoint(req, res):
    """GET /ws/rooms?room=lobby&user=ada: the handler grants the channels."""
    pid = process.registry.lookup("rooms")
    if pid is None:
        pid = process.spawn("app.ws:rooms", "app:processes")
        process.register("rooms", pid)
    user = req.query("user", "anonymous")[:32]
    room = req.query("room", "lobby")[:32]
    try:
        res.relay(pid, channels=[f"room:{room}", f"user:{user}"], user=user,
                  metadata={"user": user, "room": room})
    except ValueError as exc:  # a room or user that is not a channel name
        res.status(400).write(f"{exc}\n")


async def rooms():
    async for msg in process.inbox():
        data = msg.payload
        if msg.topic == "ws.join":
            # Already subscribed: the newcomer hears its own arrival.
            meta = data["metadata"]
            channels.publish(f"room:{meta['room']}", {"joined": meta["user"]})
        elif msg.topic == "ws.message" and data["type"] == "text":
            meta, text = data["metadata"], data["data"]
            if text.startswith("/leave "):
                try:
                    channels.unsubscribe(data["client_pid"], text.removeprefix("/leave "))
                except ValueError as exc:  # not a channel name
                    process.send(data["client_pid"], "ws.send", {"type": "text", "data": str(exc)})
            else:
                channels.publish(f"room:{meta['room']}", {"user": meta["user"], "text": text})
