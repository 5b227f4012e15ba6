"""The cross-node hop through the process API: two nodes (this process and a
child), each a wsrelay node with its core joined to a private nats-server,
and ``process.send`` between processes of the two.

    python -m bench.cluster_hop [--quick] [--size 256] [--messages 200000] [--round-trips 2000]

bench/cluster_transport.py measures the transport alone (hooks standing in
for the core); this is the same hop with the core in it: the sending
process's ``process.send`` to a PID of the other node, the receiving node's
delivery into a process's mailbox, its ``inbox.receive``.

- round trip: a process of node A sends to an echo process of node B and
  awaits the answer, one at a time: p50 and p99;
- call: the same round trip as ``process.call`` to a process of B that
  answers with ``msg.reply`` (its waiter, the monitor of the callee and the
  reply address cross too): p50 and p99, taking turns with the hand-made
  round trip in blocks of BLOCK (both from the same run, the best by the
  round trip's p50);
- one way: a process of A sends ``--messages`` messages of ``--size`` bytes to
  a sink process of B as fast as it can, with a window (the sink acknowledges
  every 5,000; the sender stops while 50,000 are unacknowledged): messages per
  second, and the CPU time of each node and of the broker per message.

Best of ``--repeat`` runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable

import psutil

from .processes import ECHO, REPLIER, in_process, percentiles, register

ACK_EVERY = 5_000
WINDOW = 50_000
# Round trips, then as many calls, in turn: both see the same moments of a
# shared machine.
BLOCK = 100


def _register() -> None:
    """The process functions of both nodes: bench.processes' (the echo
    among them) and the sink of the one-way stream, which acknowledges."""
    import wsrelay
    from wsrelay import process

    register()

    @wsrelay.register("hop:sink")
    async def sink() -> None:
        inbox = process.inbox()
        count = 0
        cpu0 = time.process_time()
        while True:
            for msg in await inbox.receive_many():
                if msg.topic == "data":
                    count += 1
                    if count % ACK_EVERY == 0:
                        process.send(msg.sender, "ack", count)
                elif msg.topic == "start":
                    count, cpu0 = 0, time.process_time()
                    process.send(msg.sender, "started")
                elif msg.topic == "report":
                    process.send(msg.sender, "report", [count, time.process_time() - cpu0])


async def _join(node: str, url: str, token: str) -> Any:
    import wsrelay
    from wsrelay.cluster.transport import Transport

    transport = Transport(node, url, token=token)
    await transport.start()
    wsrelay.join_cluster(transport)
    wsrelay.node().bind_thread()
    return transport


async def _child(url: str) -> None:
    from wsrelay import process

    transport = await _join(os.environ["WSRELAY_NODE"], url, os.environ["WSRELAY_CLUSTER_TOKEN"])
    print(json.dumps({"echo": str(process.spawn(ECHO)), "sink": str(process.spawn("hop:sink")),
                      "replier": str(process.spawn(REPLIER))}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    await transport.stop()


async def _timed_each(ask: Callable[[int], Awaitable[Any]], first: int, count: int) -> list[float]:
    times = []
    for i in range(first, first + count):
        start = time.perf_counter()
        await ask(i)
        times.append(time.perf_counter() - start)
    return times


async def _hops_and_calls(echo: Any, replier: Any, count: int) -> dict[str, float]:
    """``count`` hand-made round trips and ``count`` calls, in turn by BLOCK;
    p50 and p99 of each, in µs."""
    from wsrelay import process

    inbox = process.inbox()

    async def hop(i: int) -> None:
        process.send(echo, "ping", i)
        await inbox.receive()

    async def call(i: int) -> None:
        await process.call(replier, "ping", i)

    hops: list[float] = []
    calls: list[float] = []
    for first in range(0, count, BLOCK):
        n = min(BLOCK, count - first)
        hops += await _timed_each(hop, first, n)
        calls += await _timed_each(call, first, n)
    (rtt_p50, rtt_p99), (call_p50, call_p99) = percentiles(hops), percentiles(calls)
    return {"rtt_p50_us": rtt_p50 * 1e6, "rtt_p99_us": rtt_p99 * 1e6,
            "call_p50_us": call_p50 * 1e6, "call_p99_us": call_p99 * 1e6}


async def _one_way(sink: Any, messages: int, size: int, broker: psutil.Process) -> dict[str, float]:
    from wsrelay import process

    inbox = process.inbox()
    payload = os.urandom(size)
    process.send(sink, "start")
    await inbox.receive()
    acked = 0
    broker0 = sum(broker.cpu_times()[:2])
    cpu0 = time.process_time()
    start = time.perf_counter()
    sent = 0
    while sent < messages:
        while sent - acked >= WINDOW:
            msg = await inbox.receive()
            if msg.topic == "ack":
                acked = msg.payload
        for _ in range(min(1000, messages - sent)):
            process.send(sink, "data", payload)
            sent += 1
        await asyncio.sleep(0)
        while (msg := inbox.receive_nowait()) is not None:
            if msg.topic == "ack":
                acked = msg.payload
    process.send(sink, "report")
    while (msg := await inbox.receive()).topic != "report":
        pass
    count, child_cpu = msg.payload
    elapsed = time.perf_counter() - start
    assert count == messages, (count, messages)
    return {"msgs_per_s": messages / elapsed, "cpu_us_sender": (time.process_time() - cpu0) / messages * 1e6,
            "cpu_us_receiver": child_cpu / messages * 1e6,
            "cpu_us_broker": (sum(broker.cpu_times()[:2]) - broker0) / messages * 1e6}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from wsrelay import Pid
    from wsrelay.cluster.broker import Broker

    with Broker() as broker:
        env = {**os.environ, "WSRELAY_NODE": "hop-b", "WSRELAY_CLUSTER_TOKEN": broker.token}
        child = subprocess.Popen([sys.executable, "-m", "bench.cluster_hop", "--child", broker.url], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            transport = await _join("hop-a", broker.url, broker.token)
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            pids = json.loads(line) if args.text_pids else {
                # Pid objects, as an application holds them (msg.sender, a spawn's result).
                name: Pid.parse(text) for name, text in json.loads(line).items()}
            while not transport.is_up("hop-b"):
                await asyncio.sleep(0.01)
            best: dict[str, Any] = {}
            for _ in range(args.repeat):
                trips = await in_process(lambda: _hops_and_calls(pids["echo"], pids["replier"], args.round_trips))
                one = await in_process(lambda: _one_way(pids["sink"], args.messages, args.size,
                                                        psutil.Process(broker.pid)))
                if not best or trips["rtt_p50_us"] < best["rtt_p50_us"]:
                    best.update(trips)
                if one["msgs_per_s"] > best.get("msgs_per_s", 0):
                    best.update(one)
            await transport.stop()
            return best
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_hop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--round-trips", type=int)
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--text-pids", action="store_true", help="send to PIDs in their text form")
    args = parser.parse_args(argv)
    import uvloop

    # Before anything makes the node: its name comes from the settings.
    os.environ.setdefault("WSRELAY_NODE", "hop-a")
    _register()
    if args.child:
        uvloop.run(_child(args.child))
        return 0
    args.messages = args.messages or (20_000 if args.quick else 200_000)
    args.round_trips = args.round_trips or (300 if args.quick else 2000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    result = uvloop.run(_main(args))
    print(f"round trip through processes: p50 {result['rtt_p50_us']:.0f} us, p99 {result['rtt_p99_us']:.0f} us")
    print(f"call (process.call + msg.reply): p50 {result['call_p50_us']:.0f} us, p99 {result['call_p99_us']:.0f} us"
          f" ({result['call_p50_us'] / result['rtt_p50_us']:.2f}× the round trip's p50)")
    print(f"one way at {args.size} B: {result['msgs_per_s']:,.0f} messages/s; CPU per message: sender "
          f"{result['cpu_us_sender']:.2f} us, receiver {result['cpu_us_receiver']:.2f} us, "
          f"broker {result['cpu_us_broker']:.2f} us")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
