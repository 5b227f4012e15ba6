"""The process runtime alone, next to the same work done with asyncio.Queue
and Task in the same run: spawn rate, a message hop, one-to-one and
one-to-many streams.

    python -m bench.runtime [--quick]

Where a receiver can find several messages waiting (the two streams), each
case is measured twice, like against like:

- batched: ``inbox.receive_many()`` (wait for one message, then take every
  queued one) against ``await queue.get()`` followed by ``get_nowait()``
  until the queue is empty;
- one at a time: ``await inbox.receive()`` against ``await queue.get()``.

The call row compares ``process.call`` + ``msg.reply`` with the same request
and reply made by hand (``process.send`` + ``inbox.receive`` each way: the
hop), both from a process, in the same run: what a call's waiter, monitor
and timer cost on top of the two messages.

Spawn + exit, the hop and the call are one at a time by nature and have that
variant only: a hop has a single message in flight, so there is never a batch to
take, and the spawn case awaits each exit signal (asyncio: each task's done
callback) as it comes, on both sides.

Each figure is the best of several rounds (the least disturbed by the rest of
a shared machine); the two sides of a row take turns within every round, so
both see the same minutes of the machine. The ratio column is what to compare
across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from typing import Any, Awaitable, Callable

import uvloop

import wsrelay
from wsrelay import EXIT, process

from .processes import ECHO, REPLIER, SINK, in_process, register

BATCHED = "batched"
ONE = "one at a time"

# Messages a stream's sender queues per turn of the loop, on both sides. A
# receiving process takes at most 64 queued messages in a row before it yields
# to the other tasks (the runtime's fairness budget), so with a larger window
# a one-at-a-time receiver falls behind until its mailbox (1024) is full.
WINDOW = 64

register()


@wsrelay.register("bench:noop")
async def _noop() -> None:
    return None


@wsrelay.register("bench:sink_one")
async def _sink_one(count: int, observer: Any) -> None:
    inbox = process.inbox()
    for _ in range(count):
        await inbox.receive()
    process.send(observer, "done")


SINKS = {BATCHED: SINK, ONE: "bench:sink_one"}


# -- wsrelay ----------------------------------------------------------------------------


async def wsrelay_spawn(n: int) -> None:
    inbox = process.inbox()
    for _ in range(n):
        process.spawn_monitored("bench:noop")
    for _ in range(n):
        msg = await inbox.receive()
        assert msg.topic == EXIT


async def wsrelay_hop(n: int) -> None:
    echo = process.spawn(ECHO)
    inbox = process.inbox()
    for i in range(n):
        process.send(echo, "x", i)
        await inbox.receive()
    process.send(echo, "stop")


async def wsrelay_call(n: int) -> None:
    replier = process.spawn(REPLIER)
    for i in range(n):
        await process.call(replier, "x", i)
    process.send(replier, "stop")


async def wsrelay_stream(n: int, variant: str) -> None:
    sink = process.spawn(SINKS[variant], None, n, process.self())
    inbox = process.inbox()
    sent = 0
    while sent < n:
        for _ in range(min(WINDOW, n - sent)):
            process.send(sink, "x", sent)
            sent += 1
        await asyncio.sleep(0)
    await inbox.receive()


async def wsrelay_fanout(receivers: int, per: int, variant: str) -> None:
    me = process.self()
    sinks = [process.spawn(SINKS[variant], None, per, me) for _ in range(receivers)]
    inbox = process.inbox()
    for i in range(per):
        for sink in sinks:
            process.send(sink, "x", i)
        if i % 256 == 255:
            await asyncio.sleep(0)
    for _ in range(receivers):
        await inbox.receive()


# -- asyncio.Queue + Task -----------------------------------------------------------------


async def get_many(q: asyncio.Queue) -> list[Any]:
    """asyncio's counterpart of ``receive_many``: wait for one item, then
    take every queued one."""
    batch = [await q.get()]
    for _ in range(q.qsize()):
        batch.append(q.get_nowait())
    return batch


async def queue_sink(q: asyncio.Queue, count: int, variant: str) -> None:
    if variant == BATCHED:
        left = count
        while left:
            left -= len(await get_many(q))
    else:
        for _ in range(count):
            await q.get()


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


async def asyncio_stream(n: int, variant: str) -> None:
    q: asyncio.Queue = asyncio.Queue(maxsize=1024)
    done = asyncio.Event()

    async def sink() -> None:
        await queue_sink(q, n, variant)
        done.set()

    task = asyncio.ensure_future(sink())
    sent = 0
    while sent < n:
        for _ in range(min(WINDOW, n - sent)):
            q.put_nowait(sent)
            sent += 1
        await asyncio.sleep(0)
    await done.wait()
    await task


async def asyncio_fanout(receivers: int, per: int, variant: str) -> None:
    queues = [asyncio.Queue(maxsize=1024) for _ in range(receivers)]
    done: asyncio.Queue = asyncio.Queue()

    async def sink(q: asyncio.Queue) -> None:
        await queue_sink(q, per, variant)
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


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    receive: str
    unit: str
    count: int
    ours: Callable[[], Awaitable[None]]
    theirs: Callable[[], Awaitable[None]]
    baseline: str = "asyncio"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    receive: str
    unit: str
    ours: float
    theirs: float
    baseline: str = "asyncio"


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def cases(quick: bool) -> list[Case]:
    scale = 10 if quick else 1
    n_spawn, n_hop, n_stream = 50_000 // scale, 100_000 // scale, 500_000 // scale
    receivers, per = 1000, 100 // scale
    out = [
        Case("spawn + exit", ONE, "processes/s", n_spawn,
             lambda: wsrelay_spawn(n_spawn), lambda: asyncio_spawn(n_spawn)),
        Case("hop (send + receive, round trip / 2)", ONE, "hops/s", 2 * n_hop,
             lambda: wsrelay_hop(n_hop), lambda: asyncio_hop(n_hop)),
        Case("call (process.call + msg.reply; baseline: the same request and reply by hand)", ONE,
             "round trips/s", n_hop, lambda: wsrelay_call(n_hop),
             lambda: in_process(lambda: wsrelay_hop(n_hop)), "by hand"),
    ]
    for variant in (BATCHED, ONE):
        out.append(Case("stream (one sender, one receiver)", variant, "messages/s", n_stream,
                        lambda v=variant: wsrelay_stream(n_stream, v), lambda v=variant: asyncio_stream(n_stream, v)))
    for variant in (BATCHED, ONE):
        out.append(Case(f"one-to-many ({receivers} receivers)", variant, "messages/s", receivers * per,
                        lambda v=variant: wsrelay_fanout(receivers, per, v),
                        lambda v=variant: asyncio_fanout(receivers, per, v)))
    return out


async def run(quick: bool, rounds: int) -> list[Row]:
    rows = []
    for case in cases(quick):
        t_ours = t_theirs = float("inf")
        for _ in range(rounds):
            t_ours = min(t_ours, await timed(lambda work=case.ours: in_process(work)))
            t_theirs = min(t_theirs, await timed(case.theirs))
        row = Row(case.name, case.receive, case.unit, case.count / t_ours, case.count / t_theirs, case.baseline)
        rows.append(row)
        print(f"  {row.name}, {row.receive}: wsrelay {row.ours:,.0f} {row.unit}, "
              f"{row.baseline} {row.theirs:,.0f} {row.unit}", file=sys.stderr)
    return rows


def table(rows: list[Row], rounds: int) -> str:
    lines = [
        f"best of {rounds} rounds; the baseline is asyncio.Queue + Task unless the operation names another",
        "",
        "| operation | receive | unit | wsrelay | baseline | wsrelay / baseline "
        "| µs per op (wsrelay / baseline) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.receive} | {r.unit} | {r.ours:,.0f} | {r.theirs:,.0f} | {r.ours / r.theirs:.2f}× "
            f"| {1e6 / r.ours:.2f} / {1e6 / r.theirs:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, fewer rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 5
    rows = uvloop.run(run(args.quick, rounds))
    print(table(rows, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
