"""``python -m bench.syscall_floor``: what one server API publish costs the
kernel on this machine, whatever the server does in user space.

An API publish to a channel with one subscriber, from one synchronous
client over keep-alive (``python -m bench publish --api``), makes the server
wake from ``epoll_wait``, ``read`` the request, ``write`` the frame to the
subscriber and ``write`` the answer: with one request in flight, every call
pays those four system calls and the two wake-ups of the readers on the
other end (on loopback, the sender's ``write`` runs the receiver's side of
TCP too). This measures, in one run and alternated:

- ``floor``: a uvloop server doing nothing but that: per request read from
  the publisher's connection, a fixed 82-byte frame written to the
  subscriber's connection and a fixed answer to the publisher, with no
  parsing and no allocation beyond uvloop's own;
- ``wsrelay``: ``wsrelay serve`` of the bench app with the server API on
  (WSRELAY_API_KEY), one WebSocket subscriber of ``room:bench`` (granted at
  its upgrade), ``wsrelay.client.Client.publish`` to it.

Both are driven by the same loop (a request, then its answer, ``--calls``
times after ``--warmup``), with the subscriber read by a process of its
own; the figure is the server process's CPU (user and system, from
``/proc/PID/stat``) per call. The ratio wsrelay ÷ floor says how much of an
API call is ours; the floor's system time says what no server can go under
here with one call in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pathlib
import secrets
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable

from .procfs import CLK_TCK, stat_fields

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP = ROOT / "bench" / "servers" / "wsrelay_app" / "app.yaml"
FRAME = b"\x81\x50" + b"x" * 80
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n"
          b'{"result":{"offset":null}}')
DATA = "x" * 64


# -- the floor server (a process of its own: python -m bench.syscall_floor --serve) --------


def serve_floor() -> None:
    import uvloop

    async def main() -> None:
        subscriber: list[asyncio.Transport] = []  # uvloop's TCPTransport

        class Floor(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.first = True

            def data_received(self, data: bytes) -> None:
                if self.first:
                    self.first = False
                    if data == b"SUB":
                        subscriber.append(self.transport)
                        return
                subscriber[0].write(FRAME)
                self.transport.write(ANSWER)

        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", 0)
        sys.stdout.write(f"{server.sockets[0].getsockname()[1]}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    uvloop.run(main())


# -- the subscriber and the publisher ------------------------------------------------------


def read_forever(sock: socket.socket) -> None:
    """The subscriber's process: read until the server closes."""
    while sock.recv(1 << 16):
        continue


def reader_process(connect: Callable[[], socket.socket]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            read_forever(connect())
        finally:
            os._exit(0)
    return pid


def ws_subscriber(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/channel_sub HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the subscriber's upgrade was refused: the server closed")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"the subscriber's upgrade was refused: {head.splitlines()[0]!r}")
    return sock


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``."""
    fields = stat_fields(pid)
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def measure(pid: int, call: Callable[[], None], calls: int, warmup: int) -> tuple[float, float, float]:
    """(calls/s, server user CPU, system CPU, µs per call) over ``calls`` after ``warmup``."""
    for _ in range(warmup):
        call()
    (user0, sys0), t0 = cpu(pid), time.perf_counter()
    for _ in range(calls):
        call()
    t1, (user1, sys1) = time.perf_counter(), cpu(pid)
    return calls / (t1 - t0), (user1 - user0) / calls * 1e6, (sys1 - sys0) / calls * 1e6


def run_floor(calls: int, warmup: int) -> tuple[float, float, float]:
    server = subprocess.Popen([sys.executable, "-m", "bench.syscall_floor", "--serve"], cwd=ROOT,
                              stdout=subprocess.PIPE)
    reader = 0
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())

        def subscribe() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"SUB")
            return sock

        reader = reader_process(subscribe)
        time.sleep(0.2)  # the subscriber's first bytes reach the server before the publisher's
        pub = socket.create_connection(("127.0.0.1", port))
        pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2\r\n\r\n{}")

        def call() -> None:
            pub.sendall(request)
            got = 0
            while got < len(ANSWER):
                got += len(pub.recv(1 << 16))

        return measure(server.pid, call, calls, warmup)
    finally:
        if reader:
            os.kill(reader, 9)
            os.waitpid(reader, 0)
        server.kill()
        server.wait()


def run_wsrelay(calls: int, warmup: int) -> tuple[float, float, float]:
    from wsrelay.client import Client

    port = free_port()
    key = secrets.token_hex(16)
    env = dict(os.environ, WSRELAY_API_KEY=key, WSRELAY_LOG_LEVEL="warning")
    server = subprocess.Popen([str(pathlib.Path(sys.executable).parent / "wsrelay"), "serve", str(APP),
                               "--addr", f"127.0.0.1:{port}"], cwd=ROOT, env=env)
    reader = 0
    try:
        wait_for_port(port, server)
        reader = reader_process(lambda: ws_subscriber(port))
        client = Client(f"http://127.0.0.1:{port}", key)
        deadline = time.monotonic() + 10
        while client.channels("room:bench")["channels"].get("room:bench", {}).get("subscribers", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the subscriber never joined room:bench")
            time.sleep(0.05)
        result = measure(server.pid, lambda: client.publish("room:bench", DATA), calls, warmup)
        client.close()
        return result
    finally:
        if reader:
            os.kill(reader, 9)
            os.waitpid(reader, 0)
        server.terminate()
        server.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"wsrelay serve ended with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("wsrelay serve did not listen within 30 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.syscall_floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=30000, help="calls per measurement (default 30,000)")
    p.add_argument("--warmup", type=int, default=2000, help="calls before each (default 2,000)")
    p.add_argument("--repeat", type=int, default=3, help="measurements of each, alternated (default 3)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve_floor()
        return 0
    rows: dict[str, list[float]] = {"floor": [], "wsrelay": []}
    for i in range(args.repeat):
        for name, run in (("floor", run_floor), ("wsrelay", run_wsrelay)):
            rate, user, system = run(args.calls, args.warmup)
            rows[name].append(user + system)
            print(f"run {i + 1} {name:8} {rate:9,.0f} calls/s  {user + system:5.1f} µs server CPU per call "
                  f"(user {user:4.1f}, system {system:4.1f})", flush=True)
    floor = statistics.median(rows["floor"])
    ours = statistics.median(rows["wsrelay"])
    print(f"medians: floor {floor:.1f} µs, wsrelay {ours:.1f} µs per call: wsrelay ÷ floor {ours / floor:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
