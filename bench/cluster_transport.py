"""The cluster transport's hop between two processes over a private
nats-server, next to the same hop inside one process through asyncio.Queue.

    python -m bench.cluster_transport [--quick] [--size 256] [--messages 200000]

- round trip: node A sends a message to a PID of node B, B's hooks send it
  back; one at a time; p50 and p99 of the round-trip time. Its peer, in the
  same run: the same round trip with bare nats-py clients (publish, a
  subscription's callback publishes back), the floor under the transport.
- one way: A sends ``--messages`` messages of ``--size`` bytes to B as fast as
  it can, with a window (B acknowledges every 5,000; A stops sending while
  50,000 are unacknowledged, as relay credit would); messages per second
  from the first send to B's count of the last, and the CPU time of each
  process divided by the messages (both processes measure their own; the
  broker's from /proc).

Each process is a real node: a Transport on the bus, hooks standing in for
the core. The machine is shared: figures are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

import nats
import psutil
import uvloop

from wsrelay._core.pid import Pid
from wsrelay.cluster.broker import Broker
from wsrelay.cluster.transport import Transport

RAW_PING = "bench.raw.ping"
RAW_PONG = "bench.raw.pong"
ACK_EVERY = 5_000
WINDOW = 50_000


def _pid(t: Transport, n: int) -> Pid:
    return Pid("bench:p", (t.incarnation << 32) | n, t.node)


class _Echo:
    """Node B's hooks: echo pings, count data, acknowledge, report."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.me = _pid(transport, 1)
        self.count = 0
        self.cpu0 = 0.0
        self.up = asyncio.Event()

    def on_send(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Pid) -> None:
        if topic == "data":
            self.count += 1
            if self.count % ACK_EVERY == 0:
                self.t.send(sender, "ack", self.count, self.me)
        elif topic == "ping":
            self.t.send(sender, "pong", payload, self.me)
        elif topic == "start":
            self.count = 0
            self.cpu0 = time.process_time()
            self.t.send(sender, "started", None, self.me)
        elif topic == "report":
            self.t.send(sender, "report", [self.count, time.process_time() - self.cpu0], self.me)

    def on_signal(self, *args: Any) -> None:
        pass

    def on_frames(self, *args: Any) -> None:
        pass

    def on_node_up(self, node: str, incarnation: int) -> None:
        self.up.set()

    def on_node_down(self, *args: Any) -> None:
        pass


class _Driver(_Echo):
    """Node A's hooks: what B answers, by topic."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self.acked = 0
        self.waiter: Optional[asyncio.Future[Any]] = None
        self.ack_event = asyncio.Event()
        self.peer_incarnation = 0

    def on_send(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Pid) -> None:
        if topic == "ack":
            self.acked = payload
            self.ack_event.set()
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(payload)

    def on_node_up(self, node: str, incarnation: int) -> None:
        self.peer_incarnation = incarnation
        self.up.set()

    async def ask(self, dest: Pid, topic: str, payload: Any) -> Any:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.t.send(dest, topic, payload, self.me)
        return await self.waiter


async def _child(node: str, url: str) -> None:
    t = Transport(node, url, token=os.environ["WSRELAY_CLUSTER_TOKEN"])
    hooks = _Echo(t)
    t.attach(hooks)
    await t.start()
    raw = await nats.connect(url, token=os.environ["WSRELAY_CLUSTER_TOKEN"])

    async def echo(msg: Any) -> None:
        await raw.publish(RAW_PONG, msg.data)

    await raw.subscribe(RAW_PING, cb=echo)
    await raw.flush()
    print("ready", flush=True)
    # Until the parent closes our stdin.
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    await raw.close()
    await t.stop()


def _percentiles(times: list[float]) -> tuple[float, float]:
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


async def _round_trips(hooks: _Driver, dest: Pid, count: int) -> tuple[float, float]:
    times = []
    for i in range(count):
        start = time.perf_counter()
        await hooks.ask(dest, "ping", i)
        times.append(time.perf_counter() - start)
    return _percentiles(times)


async def _raw_round_trips(url: str, token: str, count: int, size: int) -> tuple[float, float]:
    """The peer: the same round trip with nats-py alone."""
    nc = await nats.connect(url, token=token)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    async def pong(msg: Any) -> None:
        waiter.set_result(None)

    await nc.subscribe(RAW_PONG, cb=pong)
    await nc.flush()
    payload = os.urandom(size)
    times = []
    for _ in range(count):
        waiter = loop.create_future()
        start = time.perf_counter()
        await nc.publish(RAW_PING, payload)
        await waiter
        times.append(time.perf_counter() - start)
    await nc.close()
    return _percentiles(times)


async def _one_way(hooks: _Driver, dest: Pid, messages: int, size: int,
                   broker: psutil.Process) -> tuple[float, float, float, float]:
    t = hooks.t
    payload = os.urandom(size)
    await hooks.ask(dest, "start", None)
    hooks.acked = 0
    broker_cpu0 = sum(broker.cpu_times()[:2])
    cpu0 = time.process_time()
    start = time.perf_counter()
    sent = 0
    me = hooks.me
    send = t.send
    while sent < messages:
        while sent - hooks.acked >= WINDOW:
            hooks.ack_event.clear()
            await hooks.ack_event.wait()
        for _ in range(min(1000, messages - sent)):
            send(dest, "data", payload, me)
            sent += 1
        await asyncio.sleep(0)
    count, child_cpu = await hooks.ask(dest, "report", None)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    broker_cpu = sum(broker.cpu_times()[:2]) - broker_cpu0
    assert count == messages, (count, messages)
    return messages / elapsed, cpu / messages, child_cpu / messages, broker_cpu / messages


async def _local_hop(messages: int, size: int) -> tuple[float, float]:
    """The same one-way hop inside one process: asyncio.Queue between tasks."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=WINDOW)
    payload = os.urandom(size)

    async def consume() -> None:
        for _ in range(messages):
            await queue.get()

    cpu0 = time.process_time()
    start = time.perf_counter()
    consumer = asyncio.ensure_future(consume())
    for _ in range(messages):
        await queue.put(payload)
    await consumer
    elapsed = time.perf_counter() - start
    return messages / elapsed, (time.process_time() - cpu0) / messages


async def _main(args: argparse.Namespace, broker: Broker) -> None:
    child = subprocess.Popen([sys.executable, "-m", "bench.cluster_transport", "--child", "bench-b", broker.url],
                             env={**os.environ, "WSRELAY_CLUSTER_TOKEN": broker.token},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        t = Transport("bench-a", broker.url, token=broker.token)
        hooks = _Driver(t)
        t.attach(hooks)
        await t.start()
        await asyncio.wait_for(hooks.up.wait(), 10)
        while not t.is_up("bench-b"):
            await asyncio.sleep(0.01)
        dest = Pid("bench:p", (hooks.peer_incarnation << 32) | 1, "bench-b")
        rtts: list[tuple[float, float]] = []
        raw_rtts: list[tuple[float, float]] = []
        rates: list[tuple[float, float, float, float]] = []
        server = psutil.Process(broker.pid)
        local: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            rtts.append(await _round_trips(hooks, dest, args.round_trips))
            raw_rtts.append(await _raw_round_trips(broker.url, broker.token, args.round_trips, args.size))
            rates.append(await _one_way(hooks, dest, args.messages, args.size, server))
            local.append(await _local_hop(args.messages, args.size))
        p50, p99 = min(rtts)
        raw_p50, raw_p99 = min(raw_rtts)
        rate, cpu_a, cpu_b, cpu_server = max(rates)
        local_rate, local_cpu = max(local)
        print(f"round trip, {args.round_trips} one at a time: p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us"
              f"   (target: p50 <= 300 us)")
        print(f"  bare nats-py, same broker: p50 {raw_p50 * 1e6:.0f} us, p99 {raw_p99 * 1e6:.0f} us; "
              f"the transport's p50 is x{p50 / raw_p50:.2f} of it")
        print(f"one way, {args.messages} x {args.size} B: {rate:,.0f} msg/s   (target: >= 200,000)")
        print(f"  CPU per message: sender {cpu_a * 1e6:.2f} us, receiver {cpu_b * 1e6:.2f} us"
              f"   (target: <= 3 us each); nats-server {cpu_server * 1e6:.2f} us")
        print(f"  batches: {t.counters.batches_out:,} out for {t.counters.messages_out:,} messages "
              f"({t.counters.messages_out / max(1, t.counters.batches_out):.0f} per batch)")
        print(f"same hop in one process (asyncio.Queue): {local_rate:,.0f} msg/s, {local_cpu * 1e6:.2f} us CPU "
              f"per message; the cluster hop is x{local_rate / rate:.1f} slower")
        await t.stop()
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, one run")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("NODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        uvloop.run(_child(*args.child))
        return 0
    if args.quick:
        args.messages, args.round_trips, args.repeat = 20_000, 300, 1
    with Broker() as broker:
        uvloop.run(_main(args, broker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
