"""Presence (docs/guide.md, "Presence"): every /ws/lounge connection is in
the channel lounge:main, whose namespace has presence and join/leave events,
so each member hears who comes and goes; ``/who`` asks who is there, on
every node."""

from __future__ import annotations

import json

from wsrelay import channels, process


def endpoint(req, res):
    """GET /ws/lounge?user=ada&mood=sunny: in the lounge, with an info of its own."""
    pid = process.registry.lookup("lounge")
    if pid is None:
        pid = process.spawn("app.ws:lounge", "app:processes")
        process.register("lounge", pid)
    user = req.query("user", "anonymous")[:32]
    info = {"mood": req.query("mood", "fine")[:32]}
    res.relay(pid, channels={"lounge:main": {"info": info}}, user=user)


async def lounge():
    async for msg in process.inbox():
        data = msg.payload
        if msg.topic == "ws.message" and data["data"] == "/who":
            # Every node's subscribers, as this node knows them.
            stats = await channels.presence_stats("lounge:main")
            who = await channels.presence("lounge:main")
            users = sorted({entry["user"] for entry in who["presence"]})
            answer = {"online": users, "connections": stats["clients"]}
            process.send(data["client_pid"], "ws.send", {"type": "text", "data": json.dumps(answer)})
