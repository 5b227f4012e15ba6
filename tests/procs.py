"""Process functions the tests spawn."""

from __future__ import annotations

import asyncio

import wsrelay
from wsrelay import process


@wsrelay.register("test:echo")
async def echo() -> None:
    """Send every message back to its sender as 'echo'; return on 'stop'."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
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


@wsrelay.register("test:ws_echo")
async def ws_echo(observer=None) -> None:
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


@wsrelay.register("test:log_order")
async def log_order(name: str, count: int, log: list, gate: asyncio.Event) -> None:
    """Wait for ``gate``, then take ``count`` queued messages, noting each in
    the shared ``log``."""
    await gate.wait()
    inbox = process.inbox()
    for _ in range(count):
        await inbox.receive()
        log.append(name)
