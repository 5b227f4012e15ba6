"""The app of the cluster tests (tests/test_cluster_core.py): nodes run it as
``wsrelay serve`` children joined to a test broker, and the tests drive each
node's process API through a control connection.

``/ws/control``: the connection's target is a control process that runs the
JSON commands it gets (``{"id": 1, "op": "monitor", "pid": "..."}``), answers
each (``{"reply": 1, "result": ...}`` or ``{"reply": 1, "error": ...}``) and
reports everything else it receives as an event (``{"event": topic,
"payload": ..., "sender": ...}``). It traps exits, so link failures arrive as
LINK_DOWN events. ``/ws/relay?to=PID`` relays to any PID, of any node.
``/ws/room`` relays to the process named ``room`` cluster-wide.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import wsrelay
from wsrelay import Group, process

APP_YAML = """\
version: "1.0"
namespace: cl
entries:
  - {name: gateway, kind: http.service, addr: "127.0.0.1:0"}
  - name: ws
    kind: http.router
    meta: {server: gateway}
    prefix: /ws
    post_middleware: [websocket_relay]
    post_options: {wsrelay.allowed.origins: "*"}
  - {name: control, kind: http.endpoint, meta: {router: ws}, path: /control, func: "tests.cluster_app:control_endpoint"}
  - {name: relay, kind: http.endpoint, meta: {router: ws}, path: /relay, func: "tests.cluster_app:relay_endpoint"}
  - {name: room, kind: http.endpoint, meta: {router: ws}, path: /room, func: "tests.cluster_app:room_endpoint"}
"""


def jsonable(value: Any) -> Any:
    if isinstance(value, wsrelay.Pid):
        return str(value)
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, BaseException):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def _say(client: Any, message: dict[str, Any]) -> None:
    process.send(client, "ws.send", {"type": "text", "data": json.dumps(message)})


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
    raise ValueError(f"unknown op {op!r}")


@wsrelay.register("cl:control")
async def control() -> None:
    process.trap_exits(True)
    client = None
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            _say(client, {"event": "ready", "self": str(process.self())})
        elif msg.topic == "ws.message":
            cmd = json.loads(msg.payload["data"])
            try:
                _say(client, {"reply": cmd["id"], "result": jsonable(await _run(cmd))})
            except Exception as exc:  # reported to the test, which asserts on it
                _say(client, {"reply": cmd["id"], "error": f"{type(exc).__name__}: {exc}"})
        elif msg.topic == "ws.leave":
            return
        else:
            _say(client, {"event": msg.topic, "payload": jsonable(msg.payload), "sender": str(msg.sender)})


@wsrelay.register("cl:echo")
async def echo() -> None:
    """Answers every message to its sender (topic ``echo``, same payload);
    returns on ``stop``, raises on ``crash``."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        if msg.topic == "crash":
            raise RuntimeError("cl:echo crashes on purpose")
        process.send(msg.sender, "echo", msg.payload)


@wsrelay.register("cl:replier")
async def replier(observer: Any = None) -> None:
    """Answers every call with [topic, payload, caller]; returns on
    ``stop``, raises on ``crash``; a ``hold`` call is not answered
    (``observer`` hears ``held``), a ``slow`` one after ``payload`` s."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        if msg.topic == "crash":
            raise RuntimeError("cl:replier crashes on purpose")
        if msg.topic == "hold":
            process.send(observer, "held", msg.payload)
            continue
        if msg.topic == "slow":
            await asyncio.sleep(msg.payload)
        msg.reply([msg.topic, msg.payload, str(msg.sender)])


@wsrelay.register("cl:sleeper")
async def sleeper() -> None:
    await asyncio.get_running_loop().create_future()


@wsrelay.register("cl:relay_echo")
async def relay_echo(stall: float = 0.0) -> None:
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


@wsrelay.register("cl:room")
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


def control_endpoint(req: Any, res: Any) -> None:
    pid = process.spawn("cl:control")
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))


def relay_endpoint(req: Any, res: Any) -> None:
    res.header("X-WS-Relay", json.dumps({"target_pid": req.query("to")}))


def room_endpoint(req: Any, res: Any) -> None:
    pid = process.whereis_global("room")
    if pid is None:
        res.status(404).write("no room")
        return
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))
