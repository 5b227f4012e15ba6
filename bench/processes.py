"""Benchmark work inside wsrelay processes, shared by the in-process
benchmarks (bench.runtime, bench.cluster_transport, bench.cluster_hop): a
driver that runs a case inside a process as an application would, an echo,
a replier (the echo's counterpart for ``process.call``), a sink, and timed
round trips.

``register()`` makes the process functions spawnable. Registering makes the
node, which reads its settings then: bench.cluster_hop calls it once it has
set the node's name.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from typing import Any, Awaitable, Callable

import wsrelay
from wsrelay import process

DRIVER = "bench:driver"
ECHO = "bench:echo"
REPLIER = "bench:replier"
SINK = "bench:sink"


async def _driver(work: Callable[[], Awaitable[Any]], done: asyncio.Future) -> None:
    """Run a case inside a wsrelay process, as an application would (the
    system process's inbox is bounded and sheds events nobody reads)."""
    try:
        result = await work()
    except BaseException as exc:
        done.set_exception(exc)
        raise
    done.set_result(result)


async def _echo() -> None:
    """Answer every message with its payload, until ``stop``."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        process.send(msg.sender, "pong", msg.payload)


async def _replier() -> None:
    """Answer every call with its payload (``msg.reply``), until ``stop``."""
    async for msg in process.inbox():
        if msg.topic == "stop":
            return
        msg.reply(msg.payload)


async def _sink(count: int, observer: Any) -> None:
    """Take ``count`` messages, as many at a time as are queued; then tell ``observer``."""
    inbox = process.inbox()
    left = count
    while left:
        left -= len(await inbox.receive_many())
    process.send(observer, "done")


@functools.cache
def register() -> None:
    """Register the driver, the echo, the replier and the sink (once)."""
    for name, fn in ((DRIVER, _driver), (ECHO, _echo), (REPLIER, _replier), (SINK, _sink)):
        wsrelay.register(name)(fn)


async def in_process(work: Callable[[], Awaitable[Any]]) -> Any:
    """What ``work()`` returns, run inside a wsrelay process."""
    done = asyncio.get_running_loop().create_future()
    process.spawn(DRIVER, None, work, done)
    return await done


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``times`` (sorted in place)."""
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


async def round_trips(echo: Any, count: int) -> tuple[float, float]:
    """``count`` messages to ``echo``, one at a time, each awaiting its
    answer: p50 and p99 of the round trip, in seconds."""
    inbox = process.inbox()
    times = []
    for i in range(count):
        start = time.perf_counter()
        process.send(echo, "ping", i)
        await inbox.receive()
        times.append(time.perf_counter() - start)
    return percentiles(times)
