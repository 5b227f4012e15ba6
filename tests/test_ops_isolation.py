"""Processes are isolated (docs/guide.md section 9): a process that raises, one that blocks the loop for a while and
one that floods sends into MailboxFull cannot take the gateway down; other
clients keep being served while it happens and afterwards."""

from __future__ import annotations

import asyncio
import time

import websockets

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running
from wsrelay import process


def _app(observer):
    app = relay_app(relay_handler("relay:echo", observer), path="/echo")
    router = app.routers["test:ws"]
    router.endpoint("GET", "/raise", relay_handler("relay:raiser", observer))
    router.endpoint("GET", "/block", relay_handler("relay:echo", observer, 0.2))
    return app


async def _round_trip(ws, text):
    await ws.send(text)
    assert await asyncio.wait_for(ws.recv(), 10) == text


async def test_a_process_that_raises_closes_only_its_own_connection():
    crashed_before = wsrelay.node().counters.processes_crashed
    async with running(_app(process.self())) as gw:
        async with websockets.connect(gw.url("/ws/echo")) as bystander:
            await expect("ws.join")
            for i in range(5):
                async with websockets.connect(gw.url("/ws/raise")) as victim:
                    await expect("ws.join")
                    await victim.send("fail now")
                    try:
                        await asyncio.wait_for(victim.recv(), 10)
                    except websockets.ConnectionClosed:
                        pass
                    assert victim.close_code == 1011  # the target failed
                await _round_trip(bystander, f"still served {i}")
        await expect("ws.leave")
    assert wsrelay.node().counters.processes_crashed == crashed_before + 5


async def test_a_process_that_blocks_the_loop_delays_but_does_not_stop_others():
    async with running(_app(process.self())) as gw:
        async with websockets.connect(gw.url("/ws/echo")) as bystander, \
                websockets.connect(gw.url("/ws/block")) as blocker:
            await expect("ws.join")
            await expect("ws.join")
            t0 = time.monotonic()
            for i in range(5):  # five messages: about 1 s of blocked loop in all
                await blocker.send(f"block {i}")
            latencies = []
            for i in range(10):
                t = time.monotonic()
                await _round_trip(bystander, f"bystander {i}")
                latencies.append(time.monotonic() - t)
            for i in range(5):
                assert await asyncio.wait_for(blocker.recv(), 30) == f"block {i}"
            blocked_for = time.monotonic() - t0
            # Every bystander message was answered. (Its latency is not
            # bounded: a process with a backlog runs it without yielding, so
            # the five blocking calls may run back to back.)
            assert blocked_for >= 0.9
            print(f"\nblocked loop: {blocked_for:.2f} s, bystander round trips up to {max(latencies):.2f} s")
            await _round_trip(bystander, "after")
        await expect("ws.leave")
        await expect("ws.leave")


async def test_a_process_flooding_a_full_mailbox_does_not_disturb_others():
    inbox = process.inbox()
    full_before = wsrelay.node().counters.mailbox_full
    async with running(_app(process.self())) as gw:
        async with websockets.connect(gw.url("/ws/echo")) as bystander:
            await expect("ws.join")
            victim = process.spawn("test:sleeper")
            flooders = [process.spawn_monitored("test:mailbox_flooder", None, process.self(), victim)
                        for _ in range(3)]
            await _round_trip(bystander, "during")
            counts, exits = [], []
            while len(counts) < 3 or len(exits) < 3:
                msg = await inbox.receive(timeout=30)
                if msg.topic == "full":
                    counts.append(msg.payload)
                else:
                    assert msg.topic == wsrelay.EXIT, msg.topic
                    exits.append(msg.payload)
            capacity = wsrelay.node().mailbox_capacity
            # The first fills the mailbox; the others are refused at once.
            assert sorted(counts) == [0, 0, capacity]
            assert sorted(str(e["pid"]) for e in exits) == sorted(str(p) for p in flooders)
            assert all(e["reason"] == "error" and isinstance(e["error"], wsrelay.MailboxFull) for e in exits)
            assert wsrelay.node().counters.mailbox_full == full_before + 3
            for i in range(5):
                await _round_trip(bystander, f"after {i}")
            process.terminate(victim)
        await expect("ws.leave")
