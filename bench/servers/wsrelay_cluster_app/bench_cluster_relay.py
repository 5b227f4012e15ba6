"""Handlers and process functions of the cluster broadcast's app (app.yaml).

One room for the whole cluster, under a global name. A handler cannot wait,
so it takes the room from this node's view of the global names
(``process.whereis_global``); while the name is not known here yet, it
relays to this node's candidate, a room process that claims the name
(``await process.register_global``). The first claim wins; a candidate that
lost passes what reached it (joins and publications) on to the winner, so
no subscriber is left in a room nobody publishes to.
"""

from __future__ import annotations

import orjson

from wsrelay import Group, process

ROOM = "room:load"
# This node's candidate for the global room, under a node-local name.
CANDIDATE = "room:load:candidate"


def echo_endpoint(req, res):
    """One echo process per connection, spawned by the handler."""
    pid = process.spawn("load:echo", "load:processes")
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(pid)}).decode())


async def echo():
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "ws.message":
            data = msg.payload
            process.send(data["client_pid"], "ws.send", {"type": data["type"], "data": data["data"]})
        elif topic == "ws.leave":
            return


def _room_pid():
    pid = process.whereis_global(ROOM)
    if pid is None:
        pid = process.registry.lookup(CANDIDATE)
        if pid is None:
            pid = process.spawn("load:room", "load:processes")
            process.register(CANDIDATE, pid)
    return pid


def sub_endpoint(req, res):
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(_room_pid()), "metadata": {"role": "sub"}}).decode())


def pub_endpoint(req, res):
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(_room_pid()), "message_topic": "pub"}).decode())


async def room():
    """Claim the global name; the winner holds the group (members on any
    node; group.send ships the frame once per node), a loser forwards."""
    if not await process.register_global(ROOM):
        winner = process.whereis_global(ROOM)
        async for msg in process.inbox():
            if msg.topic in ("pub", "ws.join"):
                process.send(winner, msg.topic, msg.payload)
        return
    group = Group()
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "pub":
            data = msg.payload
            group.send({"type": data["type"], "data": data["data"]})
        elif topic == "ws.join":
            if msg.payload["metadata"].get("role") == "sub":
                group.add(msg.payload["client_pid"])
