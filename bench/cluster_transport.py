"""The cluster transport's hop between two processes over a private
nats-server, next to the same hop on one node: between two wsrelay processes
(``process.send``), and through asyncio.Queue.

    python -m bench.cluster_transport [--quick] [--size 256] [--messages 200000] [--json]

``python -m bench cluster hop`` runs this module (``--json``) and puts its
figures into the cluster results (results.json, results.md, a plot).

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
- on one node, in this process: the same round trip between two wsrelay
  processes (``process.send`` to an echo process, ``inbox.receive`` of its
  answer), and the same one-way stream of ``--size`` bytes from one process
  to another (64 sends per turn of the loop, the receiver taking what is
  queued with ``receive_many``); sender and receiver share one CPU time.
  asyncio.Queue between two tasks, for reference.

Each process is a real node: a Transport on the bus, hooks standing in for
the core. The machine is shared: figures are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

import nats
import psutil
import uvloop

from wsrelay import Pid, process
from wsrelay.cluster.broker import Broker
from wsrelay.cluster.transport import Transport

from .processes import ECHO, SINK, in_process, percentiles, register, round_trips

RAW_PING = "bench.raw.ping"
RAW_PONG = "bench.raw.pong"
ACK_EVERY = 5_000
WINDOW = 50_000

register()


def _pid(t: Transport, n: int) -> Pid:
    return Pid("bench:p", (t.incarnation << 32) | n, t.node)


class _Echo:
    """Node B's hooks: echo pings, count data, acknowledge, report."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.me = _pid(transport, 1)  # again by ``joined``, once the incarnation is known
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

    def joined(self) -> None:
        """The transport has started: its incarnation, part of every PID of
        this node, is known now (a PID of incarnation 0 is refused)."""
        self.me = _pid(self.t, 1)

    def on_signal(self, *args: Any) -> None:
        """No monitors or links cross this bench's nodes."""

    def on_frames(self, *args: Any) -> None:
        """No WebSocket frames cross this bench's nodes."""

    def on_node_up(self, node: str, incarnation: int) -> None:
        self.up.set()

    def on_node_down(self, *args: Any) -> None:
        """A peer lost mid-run shows as a round trip or a stream that never ends."""


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
    hooks.joined()
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


async def _round_trips(hooks: _Driver, dest: Pid, count: int) -> tuple[float, float]:
    times = []
    for i in range(count):
        start = time.perf_counter()
        await hooks.ask(dest, "ping", i)
        times.append(time.perf_counter() - start)
    return percentiles(times)


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
    return percentiles(times)


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


# -- the same on one node: two wsrelay processes ----------------------------------------

# Sends per turn of the loop in the one-node stream: a receiving process takes
# at most 64 queued messages before it yields (the runtime's fairness budget),
# so a larger burst would only fill its mailbox (bench/runtime.py: WINDOW).
LOCAL_BURST = 64


async def _wsrelay_round_trips(count: int) -> tuple[float, float]:
    async def work() -> tuple[float, float]:
        echo = process.spawn(ECHO)
        result = await round_trips(echo, count)
        process.send(echo, "stop")
        return result

    return await in_process(work)


async def _wsrelay_one_way(messages: int, size: int) -> tuple[float, float]:
    async def work() -> tuple[float, float]:
        payload = os.urandom(size)
        sink = process.spawn(SINK, None, messages, process.self())
        inbox = process.inbox()
        cpu0 = time.process_time()
        start = time.perf_counter()
        sent = 0
        send = process.send
        while sent < messages:
            for _ in range(min(LOCAL_BURST, messages - sent)):
                send(sink, "data", payload)
                sent += 1
            await asyncio.sleep(0)
        await inbox.receive()
        elapsed = time.perf_counter() - start
        return messages / elapsed, (time.process_time() - cpu0) / messages

    return await in_process(work)


async def _main(args: argparse.Namespace, broker: Broker) -> dict[str, Any]:
    child = subprocess.Popen([sys.executable, "-m", "bench.cluster_transport", "--child", "bench-b", broker.url],
                             env={**os.environ, "WSRELAY_CLUSTER_TOKEN": broker.token},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        t = Transport("bench-a", broker.url, token=broker.token)
        hooks = _Driver(t)
        t.attach(hooks)
        await t.start()
        hooks.joined()
        await asyncio.wait_for(hooks.up.wait(), 10)
        while not t.is_up("bench-b"):
            await asyncio.sleep(0.01)
        dest = Pid("bench:p", (hooks.peer_incarnation << 32) | 1, "bench-b")
        rtts: list[tuple[float, float]] = []
        raw_rtts: list[tuple[float, float]] = []
        rates: list[tuple[float, float, float, float]] = []
        server = psutil.Process(broker.pid)
        local: list[tuple[float, float]] = []
        local_rtts: list[tuple[float, float]] = []
        local_rates: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            rtts.append(await _round_trips(hooks, dest, args.round_trips))
            raw_rtts.append(await _raw_round_trips(broker.url, broker.token, args.round_trips, args.size))
            rates.append(await _one_way(hooks, dest, args.messages, args.size, server))
            local_rtts.append(await _wsrelay_round_trips(args.round_trips))
            local_rates.append(await _wsrelay_one_way(args.messages, args.size))
            local.append(await _local_hop(args.messages, args.size))
        p50, p99 = min(rtts)
        raw_p50, raw_p99 = min(raw_rtts)
        rate, cpu_a, cpu_b, cpu_server = max(rates)
        local_rate, local_cpu = max(local)
        wl_p50, wl_p99 = min(local_rtts)
        wl_rate, wl_cpu = max(local_rates)
        counters = t.counters
        result = {
            "size": args.size, "messages": args.messages, "round_trips": args.round_trips, "repeat": args.repeat,
            "cluster": {"rtt_p50_us": p50 * 1e6, "rtt_p99_us": p99 * 1e6, "msgs_per_s": rate,
                        "cpu_us_sender": cpu_a * 1e6, "cpu_us_receiver": cpu_b * 1e6,
                        "cpu_us_broker": cpu_server * 1e6, "cpu_us_total": (cpu_a + cpu_b + cpu_server) * 1e6,
                        "per_batch": counters.messages_out / max(1, counters.batches_out)},
            "nats": {"rtt_p50_us": raw_p50 * 1e6, "rtt_p99_us": raw_p99 * 1e6},
            "wsrelay_local": {"rtt_p50_us": wl_p50 * 1e6, "rtt_p99_us": wl_p99 * 1e6, "msgs_per_s": wl_rate,
                              "cpu_us_total": wl_cpu * 1e6},
            "asyncio_queue": {"msgs_per_s": local_rate, "cpu_us_total": local_cpu * 1e6},
        }
        await t.stop()
        return result
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)


def measure(size: int = 256, messages: int = 200_000, round_trips: int = 2000, repeat: int = 3) -> dict[str, Any]:
    """The figures of one run, as ``--json`` prints them."""
    args = argparse.Namespace(size=size, messages=messages, round_trips=round_trips, repeat=repeat)
    with Broker() as broker:
        return uvloop.run(_main(args, broker))


def text(r: dict[str, Any]) -> str:
    c, raw, wl, q = r["cluster"], r["nats"], r["wsrelay_local"], r["asyncio_queue"]
    return "\n".join([
        f"round trip, {r['round_trips']} one at a time: p50 {c['rtt_p50_us']:.0f} us, p99 {c['rtt_p99_us']:.0f} us"
        f"   (target: p50 <= 300 us)",
        f"  bare nats-py, same broker: p50 {raw['rtt_p50_us']:.0f} us, p99 {raw['rtt_p99_us']:.0f} us; "
        f"the transport's p50 is x{c['rtt_p50_us'] / raw['rtt_p50_us']:.2f} of it",
        f"  one node, two wsrelay processes: p50 {wl['rtt_p50_us']:.1f} us, p99 {wl['rtt_p99_us']:.1f} us",
        f"one way, {r['messages']} x {r['size']} B: {c['msgs_per_s']:,.0f} msg/s   (target: >= 200,000)",
        f"  CPU per message: sender {c['cpu_us_sender']:.2f} us, receiver {c['cpu_us_receiver']:.2f} us"
        f"   (target: <= 3 us each); nats-server {c['cpu_us_broker']:.2f} us",
        f"  batches: {c['per_batch']:.0f} messages per batch",
        f"  one node, two wsrelay processes: {wl['msgs_per_s']:,.0f} msg/s, {wl['cpu_us_total']:.2f} us CPU per "
        f"message (both sides); the cluster hop is x{wl['msgs_per_s'] / c['msgs_per_s']:.1f} slower and costs "
        f"x{c['cpu_us_total'] / wl['cpu_us_total']:.1f} the CPU (both sides and the broker)",
        f"  asyncio.Queue between two tasks: {q['msgs_per_s']:,.0f} msg/s, {q['cpu_us_total']:.2f} us CPU per message",
    ])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, one run")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--child", nargs=2, metavar=("NODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        uvloop.run(_child(*args.child))
        return 0
    if args.quick:
        args.messages, args.round_trips, args.repeat = 20_000, 300, 1
    result = measure(args.size, args.messages, args.round_trips, args.repeat)
    print(json.dumps(result) if args.json else text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
