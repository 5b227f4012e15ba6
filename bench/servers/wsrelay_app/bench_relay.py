"""Handlers and process functions of the benchmarked wsrelay app (app.yaml).

Written the way an application would write them: nothing here is tuned for
the benchmark.
"""

from __future__ import annotations

import orjson

from wsrelay import Group, process

ROOM = "room:load"


def echo_endpoint(req, res):
    """One echo process per connection, spawned by the handler."""
    pid = process.spawn("load:echo", "load:processes")
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(pid)}).decode())


async def echo():
    """Send every client message back to the client; end when it leaves."""
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "ws.message":
            data = msg.payload
            process.send(data["client_pid"], "ws.send", {"type": data["type"], "data": data["data"]})
        elif topic == "ws.leave":
            return


def _room_pid():
    pid = process.registry.lookup(ROOM)
    if pid is None:
        pid = process.spawn("load:room", "load:processes")
        process.register(ROOM, pid)
    return pid


def sub_endpoint(req, res):
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(_room_pid()), "metadata": {"role": "sub"}}).decode())


def pub_endpoint(req, res):
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(_room_pid()), "message_topic": "pub"}).decode())


async def room():
    """Subscribers join the group; each publisher message goes to all of
    them with one group.send (the frame encoded once). Members leave the
    group by themselves when their connection ends."""
    group = Group()
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "pub":
            data = msg.payload
            group.send({"type": data["type"], "data": data["data"]})
        elif topic == "ws.join":
            if msg.payload["metadata"].get("role") == "sub":
                group.add(msg.payload["client_pid"])
