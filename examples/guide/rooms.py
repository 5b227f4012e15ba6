"""Channels (docs/guide.md, "Channels"): every /ws/rooms connection is
subscribed by its handler to its room's channel and its user's, and relayed
to one rooms process, which publishes what clients say to their room, and
subscribes them to more channels (``/join NAME``) or takes them out
(``/leave NAME``)."""

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
            meta, text, client = data["metadata"], data["data"], data["client_pid"]
            command, _, name = text.partition(" ")
            try:
                if command == "/join":
                    await channels.subscribe(client, name)
                elif command == "/leave":
                    channels.unsubscribe(client, name)
                else:
                    channels.publish(f"room:{meta['room']}", {"user": meta["user"], "text": text})
            except ValueError as exc:  # not a channel name, or one channel too many
                process.send(client, "ws.send", {"type": "text", "data": str(exc)})
            except ProcessLookupError:
                continue  # the client closed while it was being subscribed: nobody to tell
