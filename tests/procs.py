"""Every process function and HTTP handler the tests use, in one module.

Two kinds of process, told apart by the prefix of the registered name:
``test:*`` are plain processes (they talk to other processes), ``relay:*``
are relay targets (they get a connection's ws.* topics, docs/guide.md
section 3 "Topics the target receives"). The handlers at the end are the
endpoints of the YAML apps of tests/apps.py, which subprocess gateways
(``wsrelay serve``) import as ``tests.procs:NAME``; importing this module
registers every process function.

A target that runs in a subprocess reports what it saw by appending lines
to the file named by the environment variable REPORT_ENV (when set;
tests/apps.read_report reads them back).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from typing import Any
from urllib.parse import parse_qs

import wsrelay
from wsrelay import Group, channels, process

REPORT_ENV = "TESTS_REPORT_FILE"


def _report(*words: object) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(" ".join(str(w) for w in words) + "\n")


def relay_to(res: Any, pid: Any, **fields: Any) -> None:
    """Answer an upgrade request by relaying the connection to ``pid``;
    ``fields`` go into X-WS-Relay too (docs/guide.md section 3, "The
    X-WS-Relay header")."""
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid), **fields}))


def _say(client: Any, message: dict[str, Any]) -> None:
    """A JSON text message to the client ``client``."""
    process.send(client, "ws.send", {"type": "text", "data": json.dumps(message)})


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: PIDs and exceptions as text, bytes as
    ``{"bytes": HEX}``."""
    if isinstance(value, wsrelay.Pid):
        return str(value)
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, BaseException):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# -- plain processes (test:*) --------------------------------------------------------------------


@wsrelay.register("test:echo")
async def echo() -> None:
    """Send every message back to its sender as 'echo'; return on 'stop',
    raise on 'crash'."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        if msg.topic == "crash":
            raise RuntimeError("test:echo crashes on purpose")
        process.send(msg.sender, "echo", msg.payload)


@wsrelay.register("test:returns")
async def returns(*args) -> None:
    return None


@wsrelay.register("test:crash")
async def crash(message: str = "boom") -> None:
    raise RuntimeError(message)


@wsrelay.register("test:crash_on")
async def crash_on() -> None:
    """Wait for a 'crash' message, then raise."""
    async for msg in process.inbox():
        if msg.topic == "crash":
            raise RuntimeError(msg.payload or "asked to crash")
        if msg.topic == "stop":
            return


@wsrelay.register("test:forward")
async def forward(observer, trap: bool = False, link_to=None) -> None:
    """Tell ``observer`` about everything received, system events included."""
    if trap:
        process.trap_exits(True)
    if link_to is not None:
        process.link(link_to)
    process.send(observer, "ready", process.self())
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        if msg.topic == "unlink":
            process.unlink(msg.payload)
            process.send(observer, "unlinked", msg.payload)
            continue
        process.send(observer, "seen", (msg.topic, msg.payload, msg.sender))


@wsrelay.register("test:burst")
async def burst(dest, count: int) -> None:
    for i in range(count):
        process.send(dest, "n", i)


@wsrelay.register("test:sleeper")
async def sleeper() -> None:
    await asyncio.Event().wait()


@wsrelay.register("test:args")
async def args(observer, *rest) -> None:
    process.send(observer, "args", rest)


@wsrelay.register("test:who")
async def who(observer) -> None:
    process.send(observer, "self", process.self())


@wsrelay.register("test:stall")
async def stall(seconds: float) -> None:
    """Sleep before reading anything, then echo everything to its sender."""
    await asyncio.sleep(seconds)
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        process.send(msg.sender, "echo", msg.payload)


@wsrelay.register("test:link_sleeper")
async def link_sleeper(observer, target) -> None:
    """Link to ``target``, say ready, then wait to be killed."""
    process.link(target)
    process.send(observer, "ready", process.self())
    await asyncio.Event().wait()


@wsrelay.register("test:gated")
async def gated(observer, gate: asyncio.Event, watch=None) -> None:
    """Monitor ``watch``, say ready, wait for ``gate``, then report the topics
    of everything queued meanwhile in one message."""
    if watch is not None:
        process.monitor(watch)
    process.send(observer, "ready", process.self())
    await gate.wait()
    batch = await process.inbox().receive_many()
    process.send(observer, "batch", [m.topic for m in batch])


@wsrelay.register("test:trap_report")
async def trap_report(observer) -> None:
    first = process.trap_exits(True)
    second = process.trap_exits(False)
    process.send(observer, "trap", (first, second))


@wsrelay.register("test:log_order")
async def log_order(name: str, count: int, log: list, gate: asyncio.Event) -> None:
    """Wait for ``gate``, then take ``count`` queued messages, noting each in
    the shared ``log``."""
    await gate.wait()
    inbox = process.inbox()
    for _ in range(count):
        await inbox.receive()
        log.append(name)


@wsrelay.register("test:mailbox_flooder")
async def mailbox_flooder(observer, victim) -> None:
    """Send to ``victim`` (a process that never reads) until MailboxFull,
    tell ``observer`` how many went in, and let MailboxFull end this process."""
    sent = 0
    try:
        while True:
            process.send(victim, "junk", sent)
            sent += 1
    except wsrelay.MailboxFull:
        process.send(observer, "full", sent)
        raise


@wsrelay.register("test:waiting")
async def waiting(target) -> None:
    """Monitor ``target`` and return on the first message (its EXIT)."""
    process.monitor(target)
    await process.inbox().receive()


@wsrelay.register("test:try_send")
async def try_send(observer, dest, topic, payload) -> None:
    """``process.send(dest, topic, payload)`` from inside a process; tells
    ``observer`` whether it returned or raised."""
    try:
        result = process.send(dest, topic, payload)
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        process.send(observer, "tried", ("raised", type(exc).__name__, str(exc)))
    else:
        process.send(observer, "tried", ("sent", result))


@wsrelay.register("test:link_crash")
async def link_crash(observer, client) -> None:
    """Link to ``client``, say so, and raise on ``crash``."""
    process.link(client)
    process.send(observer, "linked", process.self())
    async for msg in process.inbox():
        if msg.topic == "crash":
            raise RuntimeError("linked process failed on purpose")


# -- callees and callers of process.call (test:*) -------------------------------------------------


@wsrelay.register("test:replier")
async def replier(observer: Any = None) -> None:
    """Answers every call with [topic, payload, caller]; returns on
    ``stop``, raises on ``crash``; a ``hold`` call is not answered
    (``observer`` hears ``held``), a ``slow`` one after ``payload`` s."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        if msg.topic == "crash":
            raise RuntimeError("test:replier crashes on purpose")
        if msg.topic == "hold":
            process.send(observer, "held", msg.payload)
            continue
        if msg.topic == "slow":
            await asyncio.sleep(msg.payload)
        msg.reply([msg.topic, msg.payload, str(msg.sender)])


@wsrelay.register("test:call_server")
async def call_server() -> None:
    """Replies to every call with (topic, payload); ``raise`` raises,
    ``return`` returns without replying, ``hold`` is never answered, and a
    ``twice`` call is answered two times."""
    async for msg in process.inbox():
        if msg.topic == "raise":
            raise RuntimeError("the server fails on purpose")
        if msg.topic == "return":
            return
        if msg.topic == "hold":
            if msg.payload is not None:
                process.send(msg.payload, "holding")  # the call is in: its waiter exists
            continue
        assert msg.reply((msg.topic, msg.payload)) is True
        if msg.topic == "twice":
            assert msg.reply("again") is False


@wsrelay.register("test:call_collect")
async def call_collect(count: int, order: str, observer) -> None:
    """Takes ``count`` calls, then answers them all in ``order`` (reversed
    or shuffled), each with its own payload; tells ``observer`` when done."""
    inbox = process.inbox()
    calls = [await inbox.receive() for _ in range(count)]
    if order == "reversed":
        calls.reverse()
    else:
        random.Random(7).shuffle(calls)
    for msg in calls:
        msg.reply(("answer", msg.payload, str(msg.sender)))
    process.send(observer, "answered", count)


@wsrelay.register("test:call_late")
async def call_late(delay: float, observer) -> None:
    """Answers its one call after ``delay`` s; tells ``observer`` what
    msg.reply returned."""
    msg = await process.inbox().receive()
    await asyncio.sleep(delay)
    process.send(observer, "replied", msg.reply("too late"))


@wsrelay.register("test:caller")
async def caller(dest, count: int, observer) -> None:
    """Makes ``count`` concurrent calls to ``dest`` from this one process
    (each on its own task) and sends ``observer`` what came back."""
    me = str(process.self())
    results = await asyncio.gather(*(process.call(dest, "q", (me, i)) for i in range(count)))
    process.send(observer, "results", results)


@wsrelay.register("test:busy_caller")
async def busy_caller(dest, observer, dest_tells=None) -> None:
    """Calls ``dest`` while other messages arrive in its inbox; then reports
    the reply and its inbox, in order."""
    process.send(observer, "ready", process.self())
    inbox = process.inbox()
    assert (await inbox.receive()).topic == "go"
    value = await process.call(dest, "hold", None if dest_tells is None else observer)
    rest = [(msg.topic, msg.payload) for msg in await inbox.receive_many()]
    process.send(observer, "done", (value, rest))


@wsrelay.register("test:answer_after")
async def answer_after(signal_to) -> None:
    """Takes a call, asks ``signal_to`` for a go (a chance to fill the
    caller's inbox meanwhile), then answers."""
    msg = await process.inbox().receive()
    process.send(signal_to, "called")
    while (await process.inbox().receive()).topic != "answer":
        pass
    msg.reply("slow answer")


@wsrelay.register("test:call_self")
async def call_self(observer) -> None:
    try:
        await process.call(process.self(), "t")
    except ValueError as exc:
        process.send(observer, "refused", str(exc))


# -- relay targets (relay:*) ------------------------------------------------------------------


@wsrelay.register("relay:recorder")
async def recorder(observer, name: str = "target", stay_on_transfer: bool = True) -> None:
    """A relay target that reports every message it gets to ``observer`` as
    topic ``name`` with payload ``(topic, payload, sender)``.

    It ends on ``ws.leave`` (unless the reason is ``transferred``), returns on
    ``exit`` and raises on ``crash``.
    """
    process.send(observer, "ready", (name, process.self()))
    async for msg in process.inbox():
        if msg.topic == "exit":
            return
        if msg.topic == "crash":
            raise RuntimeError("asked to crash")
        process.send(observer, name, (msg.topic, msg.payload, msg.sender))
        if msg.topic == "ws.leave" and not (stay_on_transfer and msg.payload["reason"] == "transferred"):
            return


@wsrelay.register("relay:collect")
async def collect(observer, count: int) -> None:
    """Collect the data of ``count`` client messages, send them to
    ``observer`` as one ``collected`` list, then wait for ws.leave."""
    seen = []
    async for msg in process.inbox():
        if msg.topic == "ws.message":
            seen.append(msg.payload["data"])
            if len(seen) == count:
                process.send(observer, "collected", seen)
        elif msg.topic == "ws.leave":
            process.send(observer, "left", msg.payload)
            return


@wsrelay.register("relay:linker")
async def linker(observer, trap: bool) -> None:
    """A relay target that links itself to its client on ws.join (trapping
    exits when ``trap``) and reports system events to ``observer``."""
    process.trap_exits(trap)
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            process.link(msg.payload["client_pid"])
            process.send(observer, "linked", process.self())
        elif msg.topic in (wsrelay.LINK_DOWN, wsrelay.EXIT):
            process.send(observer, "event", (msg.topic, msg.payload))
            return
        elif msg.topic == "ws.leave":
            process.send(observer, "leave", msg.payload)
        elif msg.topic == "exit":
            return


@wsrelay.register("relay:gated")
async def gated_target(observer, gate, name: str = "target") -> None:
    """A relay target that reads nothing until ``gate`` (an asyncio.Event)
    is set: a target that is stuck for as long as the test wants. Then it
    tells ``observer`` how many messages were waiting (topic ``backlog``) and
    collects what it reads as (topic, data or reason) pairs, which it sends
    to ``observer`` as topic ``name`` on ws.leave (it stays on a transfer)
    and on ``report``; it returns on ``exit``."""
    process.send(observer, "ready", (name, process.self()))
    await gate.wait()
    inbox = process.inbox()
    process.send(observer, "backlog", (name, len(inbox)))
    seen = []
    async for msg in inbox:
        if msg.topic == "exit":
            return
        if msg.topic == "report":
            process.send(observer, name, seen)
            seen = []
            continue
        payload = msg.payload
        seen.append((msg.topic, payload.get("data", payload.get("reason")) if isinstance(payload, dict) else payload))
        if msg.topic == "ws.leave":
            process.send(observer, name, seen)
            seen = []
            if payload["reason"] != "transferred":
                return


@wsrelay.register("relay:tagged_echo")
async def tagged_echo(observer=None) -> None:
    """A relay target: tells ``observer`` of ws.join/ws.leave, echoes each
    client message back as 'echo:<text>' (or the same bytes), ends on leave."""
    async for msg in process.inbox():
        if msg.topic in ("ws.join", "ws.leave", "ws.heartbeat") and observer is not None:
            process.send(observer, msg.topic, msg.payload)
        if msg.topic == "ws.message":
            data = msg.payload["data"]
            if msg.payload["type"] == "text":
                process.send(msg.payload["client_pid"], "ws.send", {"type": "text", "data": "echo:" + data})
            else:
                process.send(msg.payload["client_pid"], "ws.send", {"type": "binary", "data": data})
        elif msg.topic == "ws.leave":
            return


@wsrelay.register("relay:echo")
async def relay_echo(observer=None, block_seconds: float = 0.0) -> None:
    """A relay target: sends every client message back unchanged (same type).
    Tells ``observer`` of ws.join/ws.leave, writes ws.leave to REPORT_ENV's file
    and ends on ws.leave. With ``block_seconds``, blocks the whole event loop
    (time.sleep) that long before each echo."""
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "ws.message":
            payload = msg.payload
            if block_seconds:
                time.sleep(block_seconds)
            process.send(payload["client_pid"], "ws.send", {"type": payload["type"], "data": payload["data"]})
        elif topic in ("ws.join", "ws.leave"):
            if observer is not None:
                process.send(observer, topic, msg.payload)
            if topic == "ws.leave":
                p = msg.payload
                _report("ws.leave", p["reason"], p["code"], p["client_pid"])
                return


@wsrelay.register("relay:check")
async def check(stall: float = 2.0) -> None:
    """A relay target that stalls ``stall`` seconds before reading anything,
    then checks the binary messages carry consecutive sequence numbers (first
    8 bytes, big-endian). Says 'awake' to the client when it starts reading and
    answers the text message 'done' with a JSON summary."""
    await asyncio.sleep(stall)  # the stall under test: the mailbox fills up meanwhile
    client = None
    count = 0
    size = 0
    digest = hashlib.sha256()
    first_error = None
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            process.send(client, "ws.send", {"type": "text", "data": "awake"})
        elif msg.topic == "ws.message":
            payload = msg.payload
            if payload["type"] == "text":
                summary = {"count": count, "bytes": size, "sha256": digest.hexdigest(), "first_error": first_error}
                process.send(client, "ws.send", {"type": "text", "data": json.dumps(summary)})
                continue
            data = payload["data"]
            seq = int.from_bytes(data[:8], "big")
            if seq != count and first_error is None:
                first_error = [count, seq]
            count += 1
            size += len(data)
            digest.update(data)
        elif msg.topic == "ws.leave":
            return


@wsrelay.register("relay:forward")
async def relay_forward(observer) -> None:
    """A relay target that forwards to ``observer`` every message it gets,
    as (topic, payload); ends on ws.leave."""
    async for msg in process.inbox():
        process.send(observer, "seen", (msg.topic, msg.payload))
        if msg.topic == "ws.leave":
            return


@wsrelay.register("relay:flooder")
async def flooder(observer, chunk: int = 65536, limit: int = 256 << 20) -> None:
    """A relay target that sends its client ``chunk``-byte binary frames
    until a ws.send is refused because the connection is closing (or
    ``limit`` bytes went out). Tells ``observer`` 'stopped' with the bytes
    sent, then forwards ws.leave."""
    inbox = process.inbox()
    join = await inbox.receive()
    assert join.topic == "ws.join", join.topic
    client = join.payload["client_pid"]
    data = bytes(chunk)
    sent = 0
    refused = False
    process.send(observer, "flooding", client)
    while sent < limit:
        if not process.send(client, "ws.send", {"type": "binary", "data": data}):
            refused = True
            break
        sent += chunk
        await asyncio.sleep(0)  # let the loop write (and notice the client is not reading)
    process.send(observer, "stopped", (sent, refused))
    async for msg in inbox:
        if msg.topic == "ws.leave":
            process.send(observer, "ws.leave", msg.payload)
            return


@wsrelay.register("relay:sizer")
async def sizer() -> None:
    """A relay target that answers each client message with its type and
    length ("text 5"), so a test can send big messages without getting them
    back; ends on ws.leave."""
    async for msg in process.inbox():
        if msg.topic == "ws.message":
            payload = msg.payload
            process.send(payload["client_pid"], "ws.send",
                         {"type": "text", "data": f"{payload['type']} {len(payload['data'])}"})
        elif msg.topic == "ws.leave":
            return


@wsrelay.register("relay:stuck")
async def stuck() -> None:
    """A relay target that never reads its inbox (a dead-locked process)."""
    await asyncio.get_running_loop().create_future()


@wsrelay.register("relay:raiser")
async def raiser(observer) -> None:
    """A relay target that raises on the first client message."""
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            process.send(observer, "ws.join", msg.payload)
        elif msg.topic == "ws.message":
            raise RuntimeError("relay:raiser fails on purpose")


async def _run(cmd: dict[str, Any]) -> Any:
    op = cmd["op"]
    if op == "self":
        return str(process.self())
    if op == "spawn":
        return str(process.spawn(cmd["fn"], None, *cmd.get("args", [])))
    if op == "monitor":
        return process.monitor(cmd["pid"])
    if op == "unmonitor":
        return process.unmonitor(cmd["pid"])
    if op == "link":
        return process.link(cmd["pid"])
    if op == "unlink":
        return process.unlink(cmd["pid"])
    if op == "terminate":
        return process.terminate(cmd["pid"], cmd.get("reason", "terminated"))
    if op == "send":
        return process.send(cmd["pid"], cmd["topic"], cmd.get("payload"))
    if op == "send_set":
        return process.send(cmd["pid"], "t", {1, 2})  # a set: the cluster's codec cannot carry it
    if op == "send_many":
        return [process.send(cmd["pid"], cmd["topic"], n) for n in range(cmd["count"])]
    if op == "register_global":
        return await process.register_global(cmd["name"], cmd.get("pid"))
    if op == "whereis_global":
        pid = process.whereis_global(cmd["name"])
        return None if pid is None else str(pid)
    if op == "call":
        return await process.call(cmd["pid"], cmd["topic"], cmd.get("payload"), cmd.get("call_timeout", 5.0))
    if op == "call_many":
        return await asyncio.gather(*(process.call(cmd["pid"], cmd["topic"], n) for n in range(cmd["count"])))
    if op == "is_alive":
        return process.is_alive(cmd["pid"])
    if op == "publish":
        return channels.publish(cmd["channel"], cmd["data"])
    if op == "publish_many":
        return [channels.publish(cmd["channel"], {"from": cmd["tag"], "n": n}) for n in range(cmd["count"])]
    if op == "publish_numbered":
        return await channels.publish_numbered(cmd["channel"], cmd["data"])
    if op == "history":
        return await channels.history(cmd["channel"], cmd.get("since"), cmd.get("limit"))
    if op == "subscribe":
        return (await channels.subscribe(cmd["pid"], cmd["channel"], cmd.get("info"))).channel
    if op == "subscribe_position":
        sub = await channels.subscribe(cmd["pid"], cmd["channel"])
        return [sub.recovered, sub.offset, sub.epoch]
    if op == "unsubscribe":
        return channels.unsubscribe(cmd["pid"], cmd["channel"])
    if op == "disconnect":
        return await channels.disconnect(client=cmd.get("pid"), user=cmd.get("user"), code=cmd.get("code", 1000),
                                         reason=cmd.get("reason", ""))
    if op == "active":
        return channels.active(cmd.get("pattern"))
    if op == "presence":
        return await channels.presence(cmd["channel"])
    if op == "presence_stats":
        return await channels.presence_stats(cmd["channel"])
    raise ValueError(f"unknown op {op!r}")


@wsrelay.register("relay:control")
async def control() -> None:
    """The target of a cluster test's control connection (tests/cluster_support.Control):
    runs the JSON commands the client sends (``{"id": 1, "op": "monitor", "pid": "..."}``),
    answers each (``{"reply": 1, "result": ...}`` or ``{"reply": 1, "error": ...}``) and
    reports everything else it receives as an event (``{"event": topic, "payload": ...,
    "sender": ...}``). It traps exits, so link failures arrive as LINK_DOWN events."""
    process.trap_exits(True)
    client = None
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            _say(client, {"event": "ready", "self": str(process.self())})
        elif msg.topic == "ws.message":
            cmd = json.loads(msg.payload["data"])
            try:
                _say(client, {"reply": cmd["id"], "result": _jsonable(await _run(cmd))})
            except Exception as exc:  # reported to the test, which asserts on it
                _say(client, {"reply": cmd["id"], "error": f"{type(exc).__name__}: {exc}"})
        elif msg.topic == "ws.leave":
            return
        else:
            _say(client, {"event": msg.topic, "payload": _jsonable(msg.payload), "sender": str(msg.sender)})


@wsrelay.register("relay:joined_echo")
async def joined_echo(stall: float = 0.0) -> None:
    """A relay target on any node: reads nothing for ``stall`` seconds, then
    sends every client message back to its client; ends on ws.leave."""
    await asyncio.sleep(stall)
    async for msg in process.inbox():
        if msg.topic == "ws.message":
            data = msg.payload
            process.send(data["client_pid"], "ws.send", {"type": data["type"], "data": data["data"]})
        elif msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            _say(client, {"event": "joined", "target": str(process.self()), "client": str(client)})
        elif msg.topic == "ws.leave":
            return


@wsrelay.register("relay:room")
async def room() -> None:
    """A room whose members may be on any node: every client message goes
    to all of them with one Group.send; the text ``count`` is answered with
    the number of members."""
    members = Group()
    async for msg in process.inbox():
        data = msg.payload
        if msg.topic == "ws.join":
            members.add(data["client_pid"])
            _say(data["client_pid"], {"event": "joined", "room": str(process.self())})
        elif msg.topic == "ws.message":
            if data["data"] == "count":
                _say(data["client_pid"], {"event": "count", "members": len(members)})
            else:
                members.send({"type": "text", "data": data["data"]})
        elif msg.topic == "count":
            process.send(msg.sender, "count", len(members))


@wsrelay.register("relay:burst_room")
async def burst_room(observer) -> None:
    """Members join on ws.join. ``burst`` (count, rounds) sends ``count``
    messages per round to the group, yielding to the loop between rounds so
    later rounds meet the earlier rounds' slices still being written; a
    ws.message is echoed to its sender alone; ``membership`` reports the group."""
    group = Group()
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            assert group.add(client) is True
            assert group.add(client) is True  # already a member: no change
            process.send(observer, "joined", (client, len(group)))
        elif msg.topic == "ws.leave":
            process.send(observer, "left", (msg.payload["client_pid"], len(group)))
        elif msg.topic == "ws.message":
            process.send(msg.payload["client_pid"], "ws.send", {"type": "text", "data": "echo:" + msg.payload["data"]})
        elif msg.topic == "burst":
            count, rounds = msg.payload
            written = 0
            for r in range(rounds):
                for i in range(count):
                    written += group.send({"type": "text", "data": f"m{r * count + i}"})
                await asyncio.sleep(0)
            process.send(observer, "burst_done", written)
        elif msg.topic == "membership":
            process.send(observer, "membership", (len(group), sorted(map(str, group.pids())),
                                                  [pid in group for pid in msg.payload]))
        elif msg.topic == "discard":
            process.send(observer, "discarded", [group.discard(pid) for pid in msg.payload])
        elif msg.topic == "add":
            try:
                result: Any = group.add(msg.payload)
            except ValueError as exc:
                result = str(exc)
            process.send(observer, "added", result)
        elif msg.topic == "stop":
            return


@wsrelay.register("relay:say_room")
async def say_room(observer) -> None:
    """A Group of every client; ``say`` sends one payload to all of them."""
    group = Group()
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            group.add(msg.payload["client_pid"])
            process.send(observer, "joined", len(group))
        elif msg.topic == "say":
            process.send(observer, "said", group.send(msg.payload))
        elif msg.topic == "ws.leave":
            group.discard(msg.payload["client_pid"])


# -- handlers of the YAML apps (tests/apps.py) ---------------------------------------------------


def channels_endpoint(req, res) -> None:
    """Relays to one shared relay:channel_room (publishing to room:lobby)
    with the grant of the query: ``?ch=a&ch=b&user=u``."""
    pid = process.whereis("channel_room")
    if pid is None:
        pid = process.spawn("relay:channel_room", None, None, "room:lobby")
        process.register("channel_room", pid)
    res.relay(pid, channels=parse_qs(req.query_string).get("ch"), user=req.query("user"))


def member_endpoint(req, res) -> None:
    """A channel member of its own (relay:member), granted the channels
    and user of the query: ``?ch=a&ch=b&user=u``."""
    res.relay(process.spawn("relay:member"), channels=parse_qs(req.query_string).get("ch"), user=req.query("user"))


@wsrelay.register("relay:member")
async def member() -> None:
    """Tells its client its PID on ws.join (``{"me": pid}``); ends on ws.leave."""
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            _say(msg.payload["client_pid"], {"me": str(msg.payload["client_pid"])})
        elif msg.topic == "ws.leave":
            return


def echo_endpoint(req, res) -> None:
    pid = process.spawn("relay:echo")
    relay_to(res, pid)


async def async_echo_endpoint(req, res) -> None:
    """echo_endpoint, as an async def endpoint that lets others run first."""
    await asyncio.sleep(0)
    relay_to(res, process.spawn("relay:echo"))


async def slow_endpoint(req, res) -> None:
    """An async endpoint that spawns a process, then waits on something
    that never answers (cancelled at WSRELAY_HANDLER_TIMEOUT)."""
    process.spawn("test:sleeper")
    await asyncio.Event().wait()


def sizer_endpoint(req, res) -> None:
    pid = process.spawn("relay:sizer")
    relay_to(res, pid)


def stuck_endpoint(req, res) -> None:
    """Every client of /ws/stuck relays to one target that never reads."""
    pid = process.whereis("relay:stuck")
    if pid is None:
        pid = process.spawn("relay:stuck")
        process.register("relay:stuck", pid)
    relay_to(res, pid)


def check_endpoint(req, res) -> None:
    pid = process.spawn("relay:check", None, float(req.query("stall", "2")))
    relay_to(res, pid)


def control_endpoint(req: Any, res: Any) -> None:
    pid = process.spawn("relay:control")
    relay_to(res, pid)


def relay_endpoint(req: Any, res: Any) -> None:
    res.header("X-WS-Relay", json.dumps({"target_pid": req.query("to")}))


async def call_then_wait_endpoint(req: Any, res: Any) -> None:
    """An async endpoint that calls ``?to=PID`` (which may fail at once:
    a PID of a node nobody has heard of), then waits on a future of its
    own: answered with what the call gave and that the wait was undisturbed.
    The future is asyncio's pure-Python one, which, unlike the C one, raises
    when its task steps it before it is done."""
    try:
        outcome = repr(await process.call(req.query("to"), "hello", timeout=2.0))
    except wsrelay.CallError as exc:
        outcome = f"CallError {exc.reason}"
    loop = asyncio.get_running_loop()
    done = asyncio.futures._PyFuture(loop=loop)
    loop.call_later(0.05, done.set_result, "waited")
    res.status(200).write(f"{outcome}; {await done}")


def room_endpoint(req: Any, res: Any) -> None:
    pid = process.whereis_global("room")
    if pid is None:
        res.status(404).write("no room")
        return
    relay_to(res, pid)


@wsrelay.register("relay:channel_room")
async def channel_room(observer, channel) -> None:
    """A channels target (docs/guide.md, "Channels"). On ws.join it publishes
    ``{"joined": client}`` to ``channel`` (a connection its handler granted
    the channel hears it: it was subscribed before ws.join) and reports
    ("joined", client) to ``observer`` (None: to no one); ws.leave is
    reported as ("left", client); a ws.message is published to ``channel``
    as is."""
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            wsrelay.channels.publish(channel, {"joined": str(client)})
            if observer is not None:
                process.send(observer, "joined", client)
        elif msg.topic == "ws.leave":
            if observer is not None:
                process.send(observer, "left", msg.payload["client_pid"])
        elif msg.topic == "ws.message":
            wsrelay.channels.publish(channel, msg.payload["data"])
        elif msg.topic == "stop":
            return

