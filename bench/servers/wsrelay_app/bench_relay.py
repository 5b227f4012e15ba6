"""Handlers and process functions of the benchmarked wsrelay apps.

Written the way an application would write them: nothing here is tuned for
the benchmark. Both apps share the echo and the room's fan-out; they differ
in how a handler finds the room:

- app.yaml (one node): the room is this node's, under a local name;
- cluster.yaml (``python -m bench cluster broadcast``): one room for the whole
  cluster, under a global name. A handler cannot wait, so it takes the room
  from this node's view of the global names (``process.whereis_global``);
  while the name is not known here yet, it relays to this node's candidate,
  a room process that claims the name (``await process.register_global``).
  The first claim wins; a candidate that lost passes what reached it (joins
  and publications) on to the winner, so no subscriber is left in a room
  nobody publishes to.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from wsrelay import Group, channels, process

ROOM = "room:load"
# The channel of the publish scenario's subscribers.
CHANNEL = "room:bench"
# This node's candidate for the global room, under a node-local name.
CANDIDATE = "room:load:candidate"


def echo_endpoint(req, res):
    """One echo process per connection, spawned by the handler."""
    pid = process.spawn("load:echo", "load:processes")
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(pid)}).decode())


# The directory the waiting handlers' benchmark consults: who a token is.
DIRECTORY = "load:directory"


def _user_of(token):
    """The work both ways of finding a user do, the same."""
    return f"user-{token}"


def lookup_echo_endpoint(req, res):
    """echo_endpoint, after finding the request's user synchronously."""
    _relay_echo(res, _user_of(req.query("token", "anonymous")))


async def async_lookup_echo_endpoint(req, res):
    """lookup_echo_endpoint as an async def handler that waits for nothing:
    what being async costs, apart from the call."""
    _relay_echo(res, _user_of(req.query("token", "anonymous")))


async def call_echo_endpoint(req, res):
    """echo_endpoint, after asking the directory process who the user is."""
    _relay_echo(res, await process.call(_directory(), "lookup", req.query("token", "anonymous")))


def _relay_echo(res, user):
    pid = process.spawn("load:echo", "load:processes")
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(pid), "metadata": {"user": user}}).decode())


def _directory():
    return _named("load:directory", DIRECTORY)


def _named(function, name):
    """The process registered as ``name``, started (running ``function``) by
    the first handler that needs it."""
    pid = process.registry.lookup(name)
    if pid is None:
        pid = process.spawn(function, "load:processes")
        process.register(name, pid)
    return pid


async def directory():
    """Answer every lookup with the token's user."""
    async for msg in process.inbox():
        if msg.topic == "lookup":
            msg.reply(_user_of(msg.payload))


async def echo():
    """Send every client message back to the client; end when it leaves."""
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "ws.message":
            data = msg.payload
            process.send(data["client_pid"], "ws.send", {"type": data["type"], "data": data["data"]})
        elif topic == "ws.leave":
            return


def _local_room():
    """The room of this node."""
    return _named("load:room", ROOM)


def _global_room():
    """The cluster's room, or this node's candidate while its name is not known here."""
    pid = process.whereis_global(ROOM)
    if pid is None:
        pid = process.registry.lookup(CANDIDATE)
        if pid is None:
            pid = process.spawn("load:room", "load:processes")
            process.register(CANDIDATE, pid)
    return pid


def _subscribe(res, room):
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(room), "metadata": {"role": "sub"}}).decode())


def _publish(res, room):
    res.header("X-WS-Relay", orjson.dumps({"target_pid": str(room), "message_topic": "pub"}).decode())


def sub_endpoint(req, res):
    _subscribe(res, _local_room())


def pub_endpoint(req, res):
    _publish(res, _local_room())


def channel_sub_endpoint(req, res):
    """A subscriber of channel ``room:bench`` (the publish scenario), relayed
    to the room: in its group too, so that the same subscribers receive a
    channel publication or a group send, whichever the publisher makes."""
    res.relay(_local_room(), channels=[CHANNEL], metadata={"role": "sub"})


# The history scenario's channels: with history (app.yaml's namespace
# history_channels) and the same without.
HISTORY_CHANNELS = ("hist:", "plain:")


def history_sub_endpoint(req, res):
    """A subscriber of the channel of its query (``hist:*`` or ``plain:*``
    only), relayed to the room as an application's connection would be to
    its process, and not in its group: what it receives is the channel's."""
    name = req.query("ch", "")
    if not name.startswith(HISTORY_CHANNELS):
        res.status(403)
        return
    res.relay(_local_room(), channels=[name])


def history_pub_endpoint(req, res):
    """The history scenario's publisher, inside the server: a process of
    its own per connection, publishing round-robin over channels
    ``<prefix>0`` .. ``<prefix><n - 1>`` (``prefix`` starting with one of
    HISTORY_CHANNELS) as many publications as each client message asks."""
    prefix = req.query("prefix", "")
    if not prefix.startswith(HISTORY_CHANNELS):
        res.status(403)
        return
    order = {"prefix": prefix, "n": int(req.query("n", "1")), "run": req.query("run", "0"),
             "size": int(req.query("size", "64"))}
    res.relay(process.spawn("load:history_publisher", "load:processes"), metadata=order)


async def history_publisher():
    """Publish what the connection that joins (history_pub_endpoint) asks:
    each of its messages a count, published with ``channels.publish``,
    yielding to the loop every 64 so that the node goes on serving its
    sockets meanwhile, then answered with the seconds it took. The client
    paces its asks by what its subscribers have received. Each
    publication's data is "<run> <seq> <filler>", which they check."""
    names, run, tail, seq, client = [], "", "", 0, None
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "ws.join":
            order = msg.payload["metadata"]
            client = msg.payload["client_pid"]
            names = [f"{order['prefix']}{i}" for i in range(order["n"])]
            run, tail = order["run"], "x" * order["size"]
        elif topic == "ws.message":
            n, publish = len(names), channels.publish
            t0 = time.perf_counter()
            for _ in range(int(msg.payload["data"])):
                publish(names[seq % n], f"{run} {seq} {tail}")
                seq += 1
                if seq & 63 == 0:
                    await asyncio.sleep(0)
            process.send(client, "ws.send", {"type": "text", "data": f"{time.perf_counter() - t0:.6f}"})
        elif topic == "ws.leave":
            return


def global_sub_endpoint(req, res):
    _subscribe(res, _global_room())


def global_pub_endpoint(req, res):
    _publish(res, _global_room())


async def _fan_out(inbox):
    """Subscribers join the group; each publisher message goes to all of
    them with one group.send (the frame encoded once; members on other
    nodes get it once per node). Members leave the group by themselves
    when their connection ends."""
    group = Group()
    async for msg in inbox:
        topic = msg.topic
        if topic == "pub":
            data = msg.payload
            group.send({"type": data["type"], "data": data["data"]})
        elif topic == "ws.join":
            if msg.payload["metadata"].get("role") == "sub":
                group.add(msg.payload["client_pid"])


async def room():
    """The one node's room."""
    await _fan_out(process.inbox())


async def global_room():
    """Claim the global name; the winner holds the group, a loser forwards."""
    if not await process.register_global(ROOM):
        winner = process.whereis_global(ROOM)
        async for msg in process.inbox():
            if msg.topic in ("pub", "ws.join"):
                process.send(winner, msg.topic, msg.payload)
        return
    await _fan_out(process.inbox())
