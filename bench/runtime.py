"""The process runtime alone, next to the same work done with asyncio.Queue
and Task in the same run: spawn rate, a message hop, one-to-many sends.

    python -m bench.runtime [--quick]

Each figure is the best of several rounds (the least disturbed by the rest
of a shared machine); the ratio column is what to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Awaitable, Callable

import uvloop

import wsrelay
from wsrelay import EXIT, process


@wsrelay.register("bench:noop")
async def _noop() -> None:
    return None


@wsrelay.register("bench:echo")
async def _echo() -> None:
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        process.send(msg.sender, "r", msg.payload)


@wsrelay.register("bench:driver")
async def _driver(work: Callable[[], Awaitable[None]], done: asyncio.Future) -> None:
    """Run a wsrelay case inside a process, as an application would (the
    system process's inbox is bounded and sheds events nobody reads)."""
    try:
        await work()
    except BaseException as exc:
        done.set_exception(exc)
        raise
    done.set_result(None)


async def in_process(work: Callable[[], Awaitable[None]]) -> None:
    done = asyncio.get_running_loop().create_future()
    process.spawn("bench:driver", None, work, done)
    await done


@wsrelay.register("bench:sink")
async def _sink(count: int, observer) -> None:
    inbox = process.inbox()
    left = count
    while left:
        left -= len(await inbox.receive_many())
    process.send(observer, "done")


# -- wsrelay ----------------------------------------------------------------------------


async def wsrelay_spawn(n: int) -> None:
    inbox = process.inbox()
    for _ in range(n):
        process.spawn_monitored("bench:noop")
    for _ in range(n):
        msg = await inbox.receive()
        assert msg.topic == EXIT


async def wsrelay_hop(n: int) -> None:
    echo = process.spawn("bench:echo")
    inbox = process.inbox()
    for i in range(n):
        process.send(echo, "x", i)
        await inbox.receive()
    process.send(echo, "stop")


async def wsrelay_stream(n: int) -> None:
    sink = process.spawn("bench:sink", None, n, process.self())
    inbox = process.inbox()
    sent = 0
    while sent < n:
        # Stay under the mailbox bound: send a window, then let the sink drain.
        for _ in range(min(512, n - sent)):
            process.send(sink, "x", sent)
            sent += 1
        await asyncio.sleep(0)
    await inbox.receive()


async def wsrelay_fanout(receivers: int, per: int) -> None:
    me = process.self()
    sinks = [process.spawn("bench:sink", None, per, me) for _ in range(receivers)]
    inbox = process.inbox()
    for i in range(per):
        for sink in sinks:
            process.send(sink, "x", i)
        if i % 256 == 255:
            await asyncio.sleep(0)
    for _ in range(receivers):
        await inbox.receive()


# -- asyncio.Queue + Task -----------------------------------------------------------------


async def asyncio_spawn(n: int) -> None:
    async def noop() -> None:
        return None

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(noop()) for _ in range(n)]
    done = asyncio.Queue()
    for t in tasks:
        t.add_done_callback(done.put_nowait)
    for _ in range(n):
        await done.get()


async def asyncio_hop(n: int) -> None:
    inq: asyncio.Queue = asyncio.Queue()
    outq: asyncio.Queue = asyncio.Queue()

    async def echo() -> None:
        while True:
            item = await inq.get()
            if item is None:
                return
            outq.put_nowait(item)

    task = asyncio.ensure_future(echo())
    for i in range(n):
        inq.put_nowait(i)
        await outq.get()
    inq.put_nowait(None)
    await task


async def asyncio_stream(n: int) -> None:
    q: asyncio.Queue = asyncio.Queue(maxsize=1024)
    done = asyncio.Event()

    async def sink() -> None:
        for _ in range(n):
            await q.get()
        done.set()

    task = asyncio.ensure_future(sink())
    sent = 0
    while sent < n:
        for _ in range(min(512, n - sent)):
            q.put_nowait(sent)
            sent += 1
        await asyncio.sleep(0)
    await done.wait()
    await task


async def asyncio_fanout(receivers: int, per: int) -> None:
    queues = [asyncio.Queue(maxsize=1024) for _ in range(receivers)]
    done: asyncio.Queue = asyncio.Queue()

    async def sink(q: asyncio.Queue) -> None:
        for _ in range(per):
            await q.get()
        done.put_nowait(None)

    tasks = [asyncio.ensure_future(sink(q)) for q in queues]
    for i in range(per):
        for q in queues:
            q.put_nowait(i)
        if i % 256 == 255:
            await asyncio.sleep(0)
    for _ in range(receivers):
        await done.get()
    await asyncio.gather(*tasks)


# -- the table -------------------------------------------------------------------------------


async def best_of(rounds: int, fn: Callable[[], Awaitable[None]]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - start)
    return best


async def run(quick: bool) -> list[tuple[str, str, float, float]]:
    scale = 10 if quick else 1
    rounds = 3 if quick else 5
    n_spawn, n_hop, n_stream = 50_000 // scale, 100_000 // scale, 500_000 // scale
    receivers, per = 1000, 100 // (scale if quick else 1) or 10
    cases = [
        ("spawn + exit", "processes/s", n_spawn, lambda: wsrelay_spawn(n_spawn), lambda: asyncio_spawn(n_spawn)),
        ("hop (send + receive, round trip / 2)", "hops/s", 2 * n_hop,
         lambda: wsrelay_hop(n_hop), lambda: asyncio_hop(n_hop)),
        ("stream (one sender, one receiver)", "messages/s", n_stream,
         lambda: wsrelay_stream(n_stream), lambda: asyncio_stream(n_stream)),
        (f"one-to-many ({receivers} receivers)", "messages/s", receivers * per,
         lambda: wsrelay_fanout(receivers, per), lambda: asyncio_fanout(receivers, per)),
    ]
    rows = []
    for name, unit, count, ours, theirs in cases:
        t_ours = await best_of(rounds, lambda work=ours: in_process(work))
        t_theirs = await best_of(rounds, theirs)
        rows.append((name, unit, count / t_ours, count / t_theirs))
        print(f"  {name}: wsrelay {count / t_ours:,.0f} {unit}, asyncio {count / t_theirs:,.0f} {unit}",
              file=sys.stderr)
    return rows


def table(rows: list[tuple[str, str, float, float]]) -> str:
    lines = [
        "| operation | unit | wsrelay | asyncio.Queue + Task | wsrelay / asyncio | µs per op (wsrelay / asyncio) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, unit, ours, theirs in rows:
        lines.append(
            f"| {name} | {unit} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}× "
            f"| {1e6 / ours:.2f} / {1e6 / theirs:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, fewer rounds")
    args = parser.parse_args(argv)
    rows = uvloop.run(run(args.quick))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
