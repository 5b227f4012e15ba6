"""The process API on its own, without a gateway (docs/guide.md, "Processes").

    .venv/bin/python examples/guide/processes.py

Each section prints what it shows; tests/test_guide_examples.py checks the
output line by line.
"""

from __future__ import annotations

import asyncio

import uvloop

import wsrelay
from wsrelay import EXIT, LINK_DOWN, CallError, MailboxFull, process

# -- process functions ----------------------------------------------------------------


@wsrelay.register("guide:counter")
async def counter(total=0):
    """Adds what it is sent; answers "get" with the total."""
    async for msg in process.inbox():
        if msg.topic == "add":
            total += msg.payload
        elif msg.topic == "get":
            process.send(msg.sender, "total", total)
        elif msg.topic == "stop":
            return  # a normal exit


@wsrelay.register("guide:job")
async def job(fail):
    if fail:
        raise RuntimeError("job failed")  # an abnormal exit, reason "error"


@wsrelay.register("guide:supervisor")
async def supervisor(report_to):
    """Links to its workers and traps exits: a crashed worker becomes a
    LINK_DOWN event instead of taking the supervisor down with it."""
    process.trap_exits(True)
    inbox = process.inbox()
    for fail in (False, True):
        process.spawn_linked("guide:job", None, fail)
    # The worker that returned normally only breaks the link; the crash is reported.
    event = await inbox.receive(timeout=10)
    process.send(report_to, "supervised", (event.topic, event.payload["reason"], str(event.payload["error"])))


@wsrelay.register("guide:linked")
async def linked(partner, report_to):
    """Links to ``partner`` without trapping exits: dies when it crashes."""
    process.link(partner)
    process.send(report_to, "linked")
    await asyncio.Event().wait()  # waits for ever: only the link ends it


@wsrelay.register("guide:kv")
async def kv():
    """A store that answers calls: "put" (key, value) and "get" key."""
    store = {}
    async for msg in process.inbox():
        if msg.topic == "put":
            key, value = msg.payload
            store[key] = value
            msg.reply("ok")
        elif msg.topic == "get":
            msg.reply(store.get(msg.payload))
        elif msg.topic == "crash":
            raise RuntimeError("kv failed")
        # Any other topic gets no reply: its caller times out.


@wsrelay.register("guide:idle")
async def idle(gate):
    await gate.wait()
    async for msg in process.inbox():
        if msg.topic == "stop":
            return


# -- the sections of the guide ----------------------------------------------------------


async def spawn_and_send():
    inbox = process.inbox()  # outside any process: the node's system process
    pid = process.spawn("guide:counter", None, 10)  # host None: the default host
    process.send(pid, "add", 5)
    process.send(str(pid), "add", 1)  # a PID or its text form
    process.send(pid, "get")
    reply = await inbox.receive(timeout=5)
    print("reply:", reply.topic, reply.payload, reply.sender == pid)
    process.send(pid, "stop")


async def names():
    inbox = process.inbox()
    pid = process.spawn("guide:counter")
    process.register("counter", pid)
    process.send("counter", "add", 2)  # send by name
    process.send("counter", "get")
    print("by name:", (await inbox.receive(timeout=5)).payload)
    print("lookup:", process.registry.lookup("counter") == pid)
    process.monitor(pid)
    process.send("counter", "stop")
    await inbox.receive(timeout=5)  # EXIT: the name is free again
    print("after exit:", process.registry.lookup("counter"), process.send("counter", "get"))


async def monitors():
    inbox = process.inbox()
    ok = process.spawn_monitored("guide:job", None, False)
    bad = process.spawn_monitored("guide:job", None, True)
    for _ in range(2):
        event = await inbox.receive(timeout=5)
        assert event.topic == EXIT
        who = "ok" if event.payload["pid"] == ok else "bad"
        print("EXIT:", who, event.payload["reason"], repr(event.payload["error"]))
    process.monitor(bad)  # already gone: EXIT at once, reason "noproc"
    event = await inbox.receive(timeout=5)
    print("EXIT:", event.payload["reason"])
    print("send to an exited PID:", process.send(bad, "hello"))


async def links():
    inbox = process.inbox()
    process.spawn("guide:supervisor", None, process.self())
    reply = await inbox.receive(timeout=10)
    topic, reason, error = reply.payload
    print("supervisor:", topic == LINK_DOWN, reason, error)

    # Without trap_exits, a link propagates the crash.
    gate = asyncio.Event()
    partner = process.spawn("guide:idle", None, gate)
    other = process.spawn_monitored("guide:linked", None, partner, process.self())
    await inbox.receive(timeout=5)  # "linked"
    process.terminate(partner, "crashed")  # any reason but "normal" is abnormal
    event = await inbox.receive(timeout=5)
    print("linked:", event.topic == EXIT, event.payload["pid"] == other, event.payload["reason"])


async def calls():
    pid = process.spawn("guide:kv")
    print("put:", await process.call(pid, "put", ("colour", "blue")))
    print("get:", await process.call(pid, "get", "colour"))
    try:
        await process.call(pid, "ignored", timeout=0.1)
    except TimeoutError:
        print("no reply within 0.1 s")
    try:
        await process.call(pid, "crash")
    except CallError as exc:  # the callee ended before replying
        print("CallError:", exc.reason, repr(exc.error))
    try:
        await process.call(pid, "get", "colour")
    except CallError as exc:
        print("CallError:", exc.reason)  # it was already gone


async def mailbox_full():
    gate = asyncio.Event()
    pid = process.spawn("guide:idle", None, gate)  # reads nothing until the gate opens
    sent = 0
    try:
        while True:
            process.send(pid, "work", sent)
            sent += 1
    except MailboxFull as exc:
        # Nothing was queued: the sender decides (retry later, shed, tell the client).
        print("mailbox full after", sent, "messages; capacity", exc.capacity)
    process.terminate(pid, "done")


async def main():
    await spawn_and_send()
    await names()
    await monitors()
    await links()
    await calls()
    await mailbox_full()


if __name__ == "__main__":
    uvloop.run(main())
