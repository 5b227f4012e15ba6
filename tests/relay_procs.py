"""Process functions for the relay tests (test_relay_http.py, test_relay_ws.py)."""

from __future__ import annotations

import wsrelay
from wsrelay import process


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


@wsrelay.register("relay:try_send")
async def try_send(observer, dest, topic, payload) -> None:
    """``process.send(dest, topic, payload)`` from inside a process; tells
    ``observer`` whether it returned or raised."""
    try:
        result = process.send(dest, topic, payload)
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        process.send(observer, "tried", ("raised", type(exc).__name__, str(exc)))
    else:
        process.send(observer, "tried", ("sent", result))


@wsrelay.register("relay:link_crash")
async def link_crash(observer, client) -> None:
    """Link to ``client``, say so, and raise on ``crash``."""
    process.link(client)
    process.send(observer, "linked", process.self())
    async for msg in process.inbox():
        if msg.topic == "crash":
            raise RuntimeError("linked process failed on purpose")


@wsrelay.register("relay:gated")
async def gated(observer, gate, name: str = "target") -> None:
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
