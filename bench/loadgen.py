"""The load generator: WebSocket clients on picows + uvloop, spread over
several OS processes (workers) and many loopback source addresses.

The coordinator (``LoadGen``, in the ``python -m bench`` process) starts
``procs`` worker processes for one measurement, tells them what to do in
phases (connect, go, stop), prints one progress line per second to stderr
and collects their results. It runs no event loop itself; the workers do.

Every client socket is bound to a source address 127.0.0.x before it
connects (with IP_BIND_ADDRESS_NO_PORT, so the port is chosen at connect
time per destination): the connection count is not limited by the ~28k
ephemeral ports of one address.

Timing uses CLOCK_MONOTONIC (``time.monotonic_ns``), which all processes of
a host share, so a timestamp written into a payload by one worker can be
compared with the clock of another (broadcast latency), and the coordinator
can hand workers absolute instants for the measurement window.
"""

from __future__ import annotations

import array
import asyncio
import collections
import gc
import multiprocessing
import os
import resource
import socket
import struct
import sys
import time
import traceback
import zlib
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional

import picows
import uvloop

from . import procfs

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
now_ns = time.monotonic_ns

# Every data message starts with (send time in ns, sequence number): 16 bytes
# little-endian for binary, 40 ASCII digits for text. The rest is a fixed
# filler, so the whole expected message can be rebuilt and compared: JSON
# chat events (ASCII, so valid text too), which compress as such messages do.
BIN_HEADER = struct.Struct("<qq")
TEXT_HEADER_LEN = 40
MIN_SIZE = TEXT_HEADER_LEN
# Probe messages (seq < 0) check that every subscriber is in the room before
# the broadcast measurement starts.
PROBE = -1
SAMPLE_MASK = 63
VARIED_CORPUS = 256 << 10  # compare the whole content of one message in 64 (and the first ones)


def source_ips(count: int, first: int = 2) -> list[str]:
    """``count`` loopback source addresses 127.0.0.<first>..; the whole
    127/8 is local on Linux, no configuration needed."""
    if count < 1:
        return ["127.0.0.1"]
    ips = []
    for i in range(count):
        n = first + i
        ips.append(f"127.0.{n // 254}.{n % 254 + 1}" if n >= 254 else f"127.0.0.{n}")
    return ips


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_WORDS = ("the", "room", "meeting", "at", "ten", "see", "you", "there", "ok", "thanks", "lunch", "build",
          "deploy", "green", "review", "please", "merged", "tomorrow", "ship", "it")


def json_filler(size: int) -> bytes:
    """``size`` bytes of JSON chat events, the same on every run."""
    events = []
    n = 0
    total = 0
    while total < size:
        words = " ".join(_WORDS[(n * 7 + k * 3) % len(_WORDS)] for k in range(4 + n % 9))
        event = (f'{{"event":"message","room":"team-{n % 5}","user":"user-{(n * 37) % 1000}",'
                 f'"id":{100000 + n * 7919},"ts":{1700000000 + n * 61},"text":"{words}"}}')
        events.append(event)
        total += len(event) + 1
        n += 1
    return ("[" + ",".join(events) + "]").encode()[:size]


# permessage-deflate (RFC 7692) on the client side, offered only to servers
# run with compression on. The client compresses as a browser may: every
# message on its own (a full flush resets the window between messages, which
# any server accepts); it inflates with the server's context kept per
# connection, unless the server agreed not to keep it (server_no_context_takeover),
# when one inflater per worker does for every connection.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
_TAIL = b"\x00\x00\xff\xff"


class Deflate:
    """One connection's side of the agreement (``Deflate.agreed``)."""

    __slots__ = ("compressor", "inflater")
    _compressors: dict[int, Any] = {}
    _shared_inflater: Any = None

    def __init__(self, compressor: Any, inflater: Any) -> None:
        self.compressor = compressor
        self.inflater = inflater

    @classmethod
    def agreed(cls, transport: Any) -> Optional[Deflate]:
        """The codec for a connection, from the server's answer; None when
        it did not agree to permessage-deflate."""
        answer = transport.response.headers.get("Sec-WebSocket-Extensions")
        if not answer or not answer.lower().startswith("permessage-deflate"):
            return None
        params = {}
        for part in answer.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            params[name.lower()] = value.strip('"')
        bits = int(params.get("client_max_window_bits") or 15)
        compressor = cls._compressors.get(bits)
        if compressor is None:
            compressor = cls._compressors[bits] = zlib.compressobj(1, zlib.DEFLATED, -bits)
        if "server_no_context_takeover" in params:
            if cls._shared_inflater is None:
                cls._shared_inflater = zlib.decompressobj(-15)
            return cls(compressor, cls._shared_inflater)
        return cls(compressor, zlib.decompressobj(-15))

    def compress(self, data: Any) -> bytes:
        c = self.compressor
        return (c.compress(data) + c.flush(zlib.Z_FULL_FLUSH))[:-4]

    def inflate(self, data: Any) -> bytes:
        return self.inflater.decompress(bytes(data) + _TAIL)


def send_message(transport: Any, deflate: Optional[Deflate], msg_type: Any, data: Any) -> None:
    if deflate is None:
        transport.send(msg_type, data)
    else:
        transport.send(msg_type, deflate.compress(data), True, True)


def message_of(deflate: Optional[Deflate], frame: Any) -> Any:
    """A data frame's message: its payload, inflated if RSV1 marks it compressed."""
    if frame.rsv1:
        return deflate.inflate(frame.get_payload_as_memoryview())  # type: ignore[union-attr]
    return frame.get_payload_as_memoryview()


class Payload:
    """Builds and checks benchmark messages of one size and type."""

    def __init__(self, size: int, binary: bool, varied: bool = False) -> None:
        if size < MIN_SIZE:
            raise ValueError(f"message size must be at least {MIN_SIZE} bytes")
        self.size = size
        self.binary = binary
        self.buf = bytearray(json_filler(size))
        # For compressed runs, each message's filler is a different stretch of
        # a longer run of events (chosen by its seq), as a chat's messages
        # differ: a server that keeps its compression context across messages
        # finds the structure again, not the same message.
        self.corpus = json_filler(max(VARIED_CORPUS, 4 * size)) if varied else None

    def make(self, ts: int, seq: int) -> bytearray:
        """The message for (ts, seq), built in place (send it at once)."""
        if self.corpus is not None:
            head = BIN_HEADER.size if self.binary else TEXT_HEADER_LEN
            start = (seq * 2654435761) % (len(self.corpus) - self.size)
            self.buf[head:] = self.corpus[start:start + self.size - head]
        if self.binary:
            BIN_HEADER.pack_into(self.buf, 0, ts, seq)
        else:
            self.buf[0:TEXT_HEADER_LEN] = b"%020d%+020d" % (ts, seq)
        return self.buf

    def parse(self, mv: Any) -> tuple[int, int]:
        if self.binary:
            return BIN_HEADER.unpack_from(mv, 0)
        head = bytes(mv[:TEXT_HEADER_LEN])
        return int(head[:20]), int(head[20:])

    def expected(self, ts: int, seq: int) -> bytes:
        return bytes(self.make(ts, seq))


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


class Stats:
    """A worker's counters: sent to the coordinator each second and at the end."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.lat = array.array("q")  # latencies (ns) inside the measurement window
        self.window_msgs = 0
        self.window_bytes = 0

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] += n

    def snapshot(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "errors": dict(self.errors)}


class Worker:
    def __init__(self, index: int, cmds: Connection, events: Connection, shared: Any,
                 params: dict[str, Any]) -> None:
        self.index = index
        # Two one-way pipes: commands are read by the event loop (the fd goes
        # non-blocking), events are written with a blocking fd (a result with
        # a million latency samples is several MB).
        self.cmds = cmds
        self.events = events
        self.shared = shared
        self.p = params
        self.stats = Stats()
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.ips = params.get("source_ips") or ["127.0.0.1"]
        self.ip_next = index * 7919
        self.timeout = float(params.get("timeout", 10.0))
        self.t_measure = 1 << 62
        self.t_end = 1 << 62
        self.stopping = False

    # -- talking to the coordinator ----------------------------------------------------------

    def emit(self, kind: str, **data: Any) -> None:
        self.events.send((kind, self.index, data))

    def _on_cmd(self) -> None:
        try:
            while self.cmds.poll():
                self.inbox.put_nowait(self.cmds.recv())
        except (EOFError, OSError):
            self.inbox.put_nowait(("exit", {}))

    async def command(self, name: str) -> dict[str, Any]:
        cmd, data = await self.inbox.get()
        if cmd == "exit":
            raise SystemExit(0)
        if cmd != name:
            raise RuntimeError(f"worker {self.index}: expected command {name!r}, got {cmd!r}")
        return data

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.emit("progress", **self.stats.snapshot())

    def set_window(self, data: dict[str, Any]) -> None:
        self.t_measure = data["t_measure"]
        self.t_end = data["t_end"]

    def other_frame(self, transport: Any, kind: Any) -> None:
        """A frame that is not of the message type in use: a close ends the
        client (an error unless the run is stopping), pings and pongs pass,
        anything else is an error."""
        WSMsgType = picows.WSMsgType
        if kind is WSMsgType.CLOSE:
            if not self.stopping:
                self.stats.error("closed_by_server")
            transport.disconnect()
        elif kind is not WSMsgType.PONG and kind is not WSMsgType.PING:
            self.stats.error("wrong_frame_type")

    # -- connecting --------------------------------------------------------------------------

    def _socket_factory(self, parsed: Any) -> socket.socket:
        ip = self.ips[self.ip_next % len(self.ips)]
        self.ip_next += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            # Two SYN retries (~7 s) instead of six (~2 min): a connect to a
            # server whose accept queue overflows fails in bounded time.
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_SYNCNT", 7), 2)
            sock.bind((ip, 0))
        except OSError:
            sock.close()
            raise
        return sock

    async def connect(self, path: str, factory: Callable[[], Any], url: Optional[str] = None) -> Any:
        """(transport, listener) of a new connection (to ``url``, by default
        the server's); raises on failure."""
        # No asyncio.wait_for around it (one task and timer less per
        # connection): picows times the handshake out itself, and a loopback
        # TCP connect either completes or is refused at once.
        transport, listener = await picows.ws_connect(
            factory, (url or self.p["url"]) + path, socket_factory=self._socket_factory,
            websocket_handshake_timeout=self.timeout, max_frame_size=64 << 20,
            read_buffer_init_size=int(self.p.get("client_read_buffer", 16384)),
            use_aiofastnet=False,  # uvloop's transports, like the wsrelay gateway
            extra_headers={"Sec-WebSocket-Extensions": DEFLATE_OFFER} if self.p.get("compression") else None,
        )
        listener.deflate = Deflate.agreed(transport) if self.p.get("compression") else None
        return transport, listener

    async def connect_many(self, n: int, path: str, factory: Callable[[], Any], concurrency: int,
                           handshake_lat: Optional[array.array] = None,
                           targets: Optional[list[Any]] = None) -> list[Any]:
        """Open ``n`` connections, at most ``concurrency`` handshakes at a
        time. With ``targets`` (``[url, path, latencies, opened]`` each), the
        i-th connection goes to target ``i % len(targets)``, and its
        latency and connection are kept there as well."""
        opened: list[Any] = []
        sem = asyncio.Semaphore(max(1, concurrency))
        stats = self.stats

        async def one(i: int) -> None:
            url, to, lat, kept = (None, path, handshake_lat, None) if targets is None else targets[i % len(targets)]
            async with sem:
                t0 = now_ns()
                try:
                    transport, listener = await self.connect(to, factory, url)
                except asyncio.TimeoutError:
                    stats.error("connect_timeout")
                    return
                except Exception as exc:  # counted, reported by kind
                    stats.error(f"connect:{type(exc).__name__}")
                    return
                if lat is not None:
                    lat.append(now_ns() - t0)
                stats.counters["connected"] += 1
                opened.append((transport, listener))
                if kept is not None:
                    kept.append(transport)

        await asyncio.gather(*(one(i) for i in range(n)))
        return opened

    async def close_all(self, conns: list[Any], timeout: float = 3.0) -> None:
        """Close handshake on every connection, waiting at most ``timeout`` s."""
        WSCloseCode = picows.WSCloseCode
        for transport, _ in conns:
            if not transport.is_disconnected:
                transport.send_close(WSCloseCode.OK)
        waits = [t.wait_disconnected() for t, _ in conns if not t.is_disconnected]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), timeout)
            except asyncio.TimeoutError:
                self.stats.error("close_timeout")
        for transport, _ in conns:
            if not transport.is_disconnected:
                transport.disconnect(False)

    # -- scenarios ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.cmds.fileno(), self._on_cmd)
        progress = asyncio.ensure_future(self._progress())
        try:
            result = await getattr(self, "op_" + self.p["op"])()
            result.update(self.stats.snapshot())
            self.emit("result", **result)
        except SystemExit:
            print(f"load generator worker {self.index}: told to exit before finishing", file=sys.stderr)
        except BaseException as exc:
            self.emit("failed", error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc())
        finally:
            progress.cancel()

    def _latencies(self) -> bytes:
        return self.stats.lat.tobytes()

    async def op_check(self) -> dict[str, Any]:
        """Correctness of one server: exact echo of text and binary messages of
        several sizes on /echo, and (``broadcast``) fan-out to two subscribers."""
        WSMsgType = picows.WSMsgType
        problems: list[str] = []

        class Collect(picows.WSListener):
            def __init__(self) -> None:
                self.frames: asyncio.Queue[tuple[Any, bytes]] = asyncio.Queue()
                self.deflate: Optional[Deflate] = None

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self.frames.put_nowait((frame.msg_type, bytes(message_of(self.deflate, frame))))
                elif frame.msg_type == WSMsgType.CLOSE:
                    transport.disconnect()

        samples: list[tuple[Any, bytes]] = [
            (WSMsgType.TEXT, "héllo wörld ✓".encode()),
            (WSMsgType.TEXT, ("x" * 200).encode()),
            (WSMsgType.BINARY, bytes(range(256)) * 4),
            (WSMsgType.BINARY, os.urandom(125)),
            (WSMsgType.BINARY, os.urandom(126)),
            (WSMsgType.BINARY, os.urandom(65535)),
            (WSMsgType.BINARY, os.urandom(65536)),
            (WSMsgType.BINARY, os.urandom(200_000)),
        ]
        transport, client = await self.connect(self.p["paths"]["echo"], Collect)
        if self.p.get("compression") and client.deflate is None:
            problems.append("the server did not agree to permessage-deflate")
        for kind, data in samples:
            send_message(transport, client.deflate, kind, data)
            got_kind, got = await asyncio.wait_for(client.frames.get(), self.timeout)
            if got_kind != kind or got != data:
                problems.append(f"echo of {kind.name} {len(data)} B came back as {got_kind.name} {len(got)} B"
                                + ("" if got_kind != kind else " with different content"))
        await self.close_all([(transport, client)])
        if self.p.get("broadcast"):
            subs = [await self.connect(self.p["paths"]["sub"], Collect) for _ in range(2)]
            pub, pub_client = await self.connect(self.p["paths"]["pub"], Collect)
            # Subscriptions may complete just after the handshake: probe until both see one.
            deadline = time.monotonic() + self.timeout
            for _, sub in subs:
                while True:
                    send_message(pub, pub_client.deflate, WSMsgType.TEXT, b"probe")
                    try:
                        await asyncio.wait_for(sub.frames.get(), 0.2)
                        break
                    except asyncio.TimeoutError:
                        if time.monotonic() > deadline:
                            problems.append("a subscriber never received a published message")
                            break
            await asyncio.sleep(0.3)
            for _, sub in subs:
                while not sub.frames.empty():
                    sub.frames.get_nowait()
            messages = [(WSMsgType.TEXT, "fan ✓".encode()), (WSMsgType.BINARY, os.urandom(3000))]
            for kind, data in messages:
                send_message(pub, pub_client.deflate, kind, data)
            for _, sub in subs:
                for kind, data in messages:
                    try:
                        got_kind, got = await asyncio.wait_for(sub.frames.get(), self.timeout)
                    except asyncio.TimeoutError:
                        problems.append("broadcast: a subscriber missed a message")
                        break
                    if got_kind != kind or got != data:
                        problems.append(f"broadcast: {kind.name} {len(data)} B arrived as "
                                        f"{got_kind.name} {len(got)} B")
            await self.close_all(subs + [(pub, None)])
        return {"problems": problems}

    def data_client(self, payload: Payload, msg_type: Any) -> Any:
        """The base class of the listeners that receive benchmark messages:
        a frame of another type goes to ``other_frame``; a data frame's
        message, with the send time and sequence number it carries, to
        ``on_data``; a disconnect before the run stops is an error."""
        worker = self

        class DataClient(picows.WSListener):
            __slots__ = ("deflate",)

            def __init__(self) -> None:
                self.deflate: Optional[Deflate] = None

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                now = now_ns()
                kind = frame.msg_type
                if kind is not msg_type:
                    worker.other_frame(transport, kind)
                    return
                data = message_of(self.deflate, frame)
                ts, seq = payload.parse(data)
                self.on_data(frame, data, ts, seq, now)

            def on_data(self, frame: Any, data: Any, ts: int, seq: int, now: int) -> None:
                raise NotImplementedError

            def on_ws_disconnected(self, transport: Any) -> None:
                if not worker.stopping:
                    worker.stats.error("disconnected")

        return DataClient

    def count_in_window(self, now: int, ts: int, wire_bytes: int) -> None:
        """A message received at ``now``, sent at ``ts``: its latency and size
        count when it arrived inside the measurement window."""
        if self.t_measure <= now < self.t_end:
            stats = self.stats
            stats.lat.append(now - ts)
            stats.window_msgs += 1
            stats.window_bytes += wire_bytes

    async def until_window_end(self) -> None:
        """Sleep to the end of the window, then stop sending."""
        await asyncio.sleep(max(0.0, (self.t_end - now_ns()) / 1e9))
        self.stopping = True

    async def op_echo(self) -> dict[str, Any]:
        """``conns`` connections, each keeping ``inflight`` messages on the
        echo path, each reply answered with the next message."""
        p = self.p
        payload = Payload(p["size"], p["binary"], bool(p.get("compression")))
        client = self.echo_client(payload, picows.WSMsgType.BINARY if p["binary"] else picows.WSMsgType.TEXT)
        conns = await self.connect_many(p["conns"], p["paths"]["echo"], client, p["connect_concurrency"])
        self.emit("phase", phase="connected", n=len(conns))
        self.set_window(await self.command("go"))
        # Stagger the first sends a little so 10k connections do not start in one burst.
        for i, (_, echo) in enumerate(conns):
            for _ in range(p["inflight"]):
                echo.send_one()
            if i % 256 == 255:
                await asyncio.sleep(0)
        await self.until_window_end()
        # Wait for what is in flight; what never comes back is a timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(p.get("drain", 5.0))
        while loop.time() < deadline and any(c.outstanding > 0 for _, c in conns if not c.transport.is_disconnected):
            await asyncio.sleep(0.02)
        lost = sum(c.outstanding for _, c in conns)
        if lost:
            self.stats.error("reply_timeout", lost)
        await self.close_all(conns)
        return {"window_msgs": self.stats.window_msgs, "window_bytes": self.stats.window_bytes,
                "lat": self._latencies(), "conns": len(conns)}

    def echo_client(self, payload: Payload, msg_type: Any) -> Any:
        """The listener of one echo connection: checks order, size and (one
        message in 64) content of each reply, then sends the next message."""
        stats = self.stats
        counters = stats.counters
        worker = self
        size = payload.size

        class EchoClient(self.data_client(payload, msg_type)):  # type: ignore[misc]
            __slots__ = ("transport", "next_seq", "expect_seq", "outstanding")

            def __init__(self) -> None:
                super().__init__()
                self.transport = None
                self.next_seq = 0
                self.expect_seq = 0
                self.outstanding = 0

            def on_ws_connected(self, transport: Any) -> None:
                self.transport = transport

            def send_one(self) -> None:
                send_message(self.transport, self.deflate, msg_type, payload.make(now_ns(), self.next_seq))
                self.next_seq += 1
                self.outstanding += 1

            def on_data(self, frame: Any, data: Any, ts: int, seq: int, now: int) -> None:
                if seq != self.expect_seq:
                    stats.error("out_of_order")
                self.expect_seq = seq + 1
                if len(data) != size:
                    stats.error("wrong_size")
                elif (seq & SAMPLE_MASK) == 0:
                    counters["checked"] += 1
                    if bytes(data) != payload.expected(ts, seq):
                        stats.error("wrong_content")
                self.outstanding -= 1
                counters["msgs"] += 1
                worker.count_in_window(now, ts, frame.payload_size)
                if not worker.stopping:
                    self.send_one()

        return EchoClient

    async def op_broadcast(self) -> dict[str, Any]:
        """Subscribers of the one room and, in the worker told ``publisher``,
        the publisher, which keeps ``inflight`` messages not yet received by
        every subscriber of every worker (``Broadcast``)."""
        run = Broadcast(self)
        subs = await run.connect_subscribers()
        # Nothing is published before every worker's subscribers are
        # connected: a fan-out to thousands of subscribers would slow the
        # handshakes still in progress.
        await self.command("sync")
        pub_conn: list[Any] = []
        if self.p.get("publisher"):
            pub_conn = [await run.connect_publisher()]
            await run.probe_until_go()
            run.tick()
        else:
            self.set_window(await self.command("go"))
        await self.until_window_end()
        await run.drain(subs)
        await self.close_all(subs + pub_conn)
        return {"window_msgs": self.stats.window_msgs, "window_bytes": self.stats.window_bytes,
                "lat": self._latencies(), "conns": len(subs), "published": self.stats.counters["published"]}

    async def op_connections(self) -> dict[str, Any]:
        """Open ``conns`` idle connections as fast as the server accepts them,
        keep them open until told, then check a sample still echoes. With
        ``targets`` (``[[url, echo path], ...]``: servers side by side), the
        connections alternate among them, and the result says, for each,
        how many it took and their handshake latencies."""
        WSMsgType = picows.WSMsgType
        stats = self.stats
        p = self.p

        class Idle(picows.WSListener):
            def __init__(self) -> None:
                self.deflate: Optional[Deflate] = None
                self.reply: Optional[asyncio.Future[bytes]] = None
                self.closed_by_server = False

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type is WSMsgType.CLOSE:
                    self.closed_by_server = True
                    transport.disconnect()
                elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if self.reply is not None and not self.reply.done():
                        self.reply.set_result(bytes(message_of(self.deflate, frame)))

        self.set_window(await self.command("go"))
        await asyncio.sleep(max(0.0, (self.t_measure - now_ns()) / 1e9))
        t0 = now_ns()
        hs = array.array("q")
        targets = None if p.get("targets") is None else \
            [[url, path, array.array("q"), []] for url, path in p["targets"]]
        conns = await self.connect_many(p["conns"], p["paths"]["echo"], Idle, p["connect_concurrency"], hs, targets)
        t_done = now_ns()
        self.emit("phase", phase="connected", n=len(conns), t0=t0, t_done=t_done)
        await self.command("check")
        loop = asyncio.get_running_loop()
        sample = conns[:: max(1, len(conns) // 100)]
        bad = 0
        for transport, client in sample:
            if transport.is_disconnected:
                bad += 1
                continue
            client.reply = loop.create_future()
            data = b"still-here-%d" % id(client)
            send_message(transport, client.deflate, WSMsgType.BINARY, data)
            try:
                if await asyncio.wait_for(client.reply, self.timeout) != data:
                    bad += 1
            except asyncio.TimeoutError:
                bad += 1
        if bad:
            stats.error("sample_echo_failed", bad)
        dropped = sum(1 for t, _ in conns if t.is_disconnected)
        if dropped:
            stats.error("dropped_while_idle", dropped)
        self.emit("phase", phase="checked", sampled=len(sample))
        await self.command("close")
        await self.close_all(conns, timeout=10.0)
        result: dict[str, Any] = {"conns": len(conns), "lat": hs.tobytes(), "t0": t0, "t_done": t_done}
        if targets is not None:
            result["targets"] = [{"conns": len(kept), "lat": lat.tobytes()} for _, _, lat, kept in targets]
        return result

    async def op_churn(self) -> dict[str, Any]:
        """``cycles`` times: connect, one message, its echo, close; with
        ``concurrency`` loops at once. Phases: warm-up cycles, then the
        measured ones."""
        WSMsgType = picows.WSMsgType
        WSCloseCode = picows.WSCloseCode
        stats = self.stats
        counters = stats.counters
        p = self.p
        payload = Payload(p["size"], p["binary"], bool(p.get("compression")))
        msg_type = WSMsgType.BINARY if p["binary"] else WSMsgType.TEXT
        loop = asyncio.get_running_loop()
        lat = stats.lat
        path = p["paths"]["echo"]

        class Once(picows.WSListener):
            def __init__(self) -> None:
                self.deflate: Optional[Deflate] = None
                self.reply: asyncio.Future[bytes] = loop.create_future()

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind is WSMsgType.CLOSE:
                    transport.disconnect()
                elif kind is msg_type and not self.reply.done():
                    self.reply.set_result(bytes(message_of(self.deflate, frame)))

        remaining = [0]

        async def loop_cycles(measure: bool) -> None:
            seq = 0
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = now_ns()
                transport = None
                try:
                    transport, client = await self.connect(path, Once)
                    send_message(transport, client.deflate, msg_type, payload.make(t0, seq))
                    expected = payload.expected(t0, seq)
                    seq += 1
                    got = await asyncio.wait_for(client.reply, self.timeout)
                    if got != expected:
                        stats.error("wrong_content")
                    transport.send_close(WSCloseCode.OK)
                    await asyncio.wait_for(transport.wait_disconnected(), self.timeout)
                except asyncio.TimeoutError:
                    stats.error("timeout")
                    if transport is not None:
                        transport.disconnect(False)
                    continue
                except Exception as exc:
                    stats.error(f"{type(exc).__name__}")
                    if transport is not None:
                        transport.disconnect(False)
                    continue
                counters["cycles"] += 1
                if measure:
                    lat.append(now_ns() - t0)
                    stats.window_msgs += 1

        for phase in ("warmup", "measure"):
            data = await self.command(phase)
            remaining[0] = data["cycles"]
            t0 = now_ns()
            await asyncio.gather(*(loop_cycles(phase == "measure") for _ in range(p["concurrency"])))
            self.emit("phase", phase=phase + "_done", t0=t0, t_done=now_ns())
        return {"cycles": stats.window_msgs, "lat": self._latencies()}


class Broadcast:
    """One worker's part of a broadcast run. Subscribers count each message
    (probes, seq < 0, only mark them synced); when every subscriber of this
    worker has a message, the worker's highest such seq goes to shared memory
    (``done``), where the publisher reads how far every worker got: it keeps
    at most ``inflight`` messages beyond the slowest."""

    def __init__(self, worker: Worker) -> None:
        p = worker.p
        self.worker = worker
        self.payload = Payload(p["size"], p["binary"], bool(p.get("compression")))
        self.msg_type = picows.WSMsgType.BINARY if p["binary"] else picows.WSMsgType.TEXT
        self.done_arr = worker.shared["done"]  # per worker: highest seq all its subscribers received
        self.pub_last = worker.shared["pub_last"]  # [0]: last seq published
        self.n_subs = p["conns"]
        self.done = -1
        self.synced = 0
        self.publisher: Any = None

    async def connect_subscribers(self) -> list[Any]:
        worker = self.worker
        if self.n_subs == 0:
            self.done_arr[worker.index] = 1 << 62
        subs = await worker.connect_many(self.n_subs, worker.p["paths"]["sub"], self.subscriber_class(),
                                         worker.p["connect_concurrency"])
        if len(subs) < self.n_subs:
            self.n_subs = len(subs)
            if self.n_subs == 0:
                self.done_arr[worker.index] = 1 << 62
        worker.emit("phase", phase="connected", n=len(subs))
        if self.n_subs == 0:
            worker.emit("phase", phase="synced")
        return subs

    def subscriber_class(self) -> Any:
        run = self
        worker = self.worker
        stats = worker.stats
        counters = stats.counters
        payload = self.payload
        size = payload.size
        done_arr = self.done_arr
        pending: dict[int, int] = {}  # seq: subscribers of this worker that have it

        class SubClient(worker.data_client(payload, self.msg_type)):  # type: ignore[misc]
            __slots__ = ("expect_seq", "synced", "n")

            def __init__(self) -> None:
                super().__init__()
                self.expect_seq = 0
                self.synced = False
                self.n = 0

            def on_data(self, frame: Any, data: Any, ts: int, seq: int, now: int) -> None:
                if seq < 0:
                    if not self.synced:
                        self.synced = True
                        run.synced += 1
                        counters["synced"] += 1
                        if run.synced == run.n_subs:
                            worker.emit("phase", phase="synced")
                    return
                if seq != self.expect_seq:
                    if seq > self.expect_seq:
                        stats.error("missed", seq - self.expect_seq)
                    else:
                        stats.error("out_of_order")
                self.expect_seq = seq + 1
                if len(data) != size:
                    stats.error("wrong_size")
                elif (seq & SAMPLE_MASK) == 0 and (self.n & 15) == 0:
                    counters["checked"] += 1
                    if bytes(data) != payload.expected(ts, seq):
                        stats.error("wrong_content")
                self.n += 1
                counters["msgs"] += 1
                worker.count_in_window(now, ts, frame.payload_size)
                c = pending.get(seq, 0) + 1
                if c >= run.n_subs:
                    pending.pop(seq, None)
                    if seq > run.done:
                        run.done = seq
                        done_arr[worker.index] = seq
                        if run.publisher is not None:
                            run.publisher.pump()
                else:
                    pending[seq] = c

        return SubClient

    async def connect_publisher(self) -> Any:
        worker = self.worker
        conn = await worker.connect(worker.p["paths"]["pub"], self.publisher_class())
        self.publisher = conn[1]
        return conn

    def publisher_class(self) -> Any:
        run = self
        worker = self.worker
        counters = worker.stats.counters
        make = self.payload.make
        window = worker.p["inflight"]
        CLOSE = picows.WSMsgType.CLOSE

        class PubClient(picows.WSListener):
            def __init__(self) -> None:
                self.deflate: Optional[Deflate] = None
                self.transport: Any = None
                self.next_seq = 0

            def on_ws_connected(self, transport: Any) -> None:
                self.transport = transport

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type is CLOSE:
                    if not worker.stopping:
                        worker.stats.error("publisher_closed_by_server")
                    transport.disconnect()

            def probe(self) -> None:
                send_message(self.transport, self.deflate, run.msg_type, make(now_ns(), PROBE))

            def pump(self) -> None:
                """Publish while the slowest worker's subscribers are at most
                ``inflight`` messages behind."""
                if worker.stopping or self.transport.is_disconnected:
                    return
                lo = min(run.done_arr[:])
                msg_type, pub_last = run.msg_type, run.pub_last
                while self.next_seq - lo <= window:
                    send_message(self.transport, self.deflate, msg_type, make(now_ns(), self.next_seq))
                    pub_last[0] = self.next_seq
                    self.next_seq += 1
                    counters["published"] += 1

        return PubClient

    async def probe_until_go(self) -> None:
        """Probe (once a second: each probe is a fan-out to everyone) until
        the coordinator, having seen every subscriber of every worker synced,
        says ``go``."""
        worker = self.worker
        while True:
            self.publisher.probe()
            try:
                cmd, data = await asyncio.wait_for(worker.inbox.get(), 1.0)
            except asyncio.TimeoutError:
                continue
            if cmd == "go":
                worker.set_window(data)
                return
            if cmd == "exit":
                raise SystemExit(0)

    def tick(self) -> None:
        # Other workers' progress arrives through shared memory, not
        # events: look again every millisecond.
        self.publisher.pump()
        if not self.worker.stopping:
            asyncio.get_running_loop().call_later(0.001, self.tick)

    async def drain(self, subs: list[Any]) -> None:
        """After the window: wait (``drain`` seconds at most) until every
        subscriber has the last message published; what never came counts
        as ``not_delivered``."""
        worker = self.worker
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.05)
        last = self.pub_last[0]
        deadline = loop.time() + float(worker.p.get("drain", 5.0))
        while loop.time() < deadline and self.done < last and self.n_subs:
            await asyncio.sleep(0.02)
        if self.n_subs and last >= 0:
            missing = sum(max(0, last + 1 - c.expect_seq) for _, c in subs)
            if missing:
                worker.stats.error("not_delivered", missing)


def worker_main(index: int, cmds: Connection, events: Connection, shared: Any, params: dict[str, Any],
                worker: type[Worker] = Worker) -> None:
    _raise_nofile()
    gc.freeze()

    async def main() -> None:
        await worker(index, cmds, events, shared, params).run()

    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        return  # the coordinator's Ctrl-C reached its workers too: it reports what was measured
    finally:
        events.close()
        cmds.close()


# ---------------------------------------------------------------------------------------------
# Coordinator side
# ---------------------------------------------------------------------------------------------


class LoadGenError(RuntimeError):
    """A load generator worker failed, ended early, or a phase timed out."""


class LoadGen:
    """``procs`` worker processes running one operation, driven in phases.

    ``params`` is common to all workers; ``split`` names integer parameters
    (connection counts, cycles) divided among them. While waiting for a phase
    it prints one progress line per second to stderr, built by ``status``.
    ``worker`` is the class each worker process runs (a subclass adds
    operations of its own, as bench.publish's does).
    """

    def __init__(self, procs: int, params: dict[str, Any], label: str,
                 status: Optional[Callable[[dict[str, Any], float], str]] = None,
                 per_worker: Optional[Callable[[int, dict[str, Any]], dict[str, Any]]] = None,
                 worker: type[Worker] = Worker) -> None:
        self.procs = procs
        self.label = label
        self.status = status
        ctx = multiprocessing.get_context("spawn")
        self.shared = {"done": ctx.RawArray("q", [-1] * procs), "pub_last": ctx.RawArray("q", [-1])}
        self.conns: list[Connection] = []  # events from each worker
        self.cmd_conns: list[Connection] = []  # commands to each worker
        self.processes: list[Any] = []
        self.progress: dict[int, dict[str, Any]] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.phases: dict[tuple[str, int], dict[str, Any]] = {}
        self.started = time.monotonic()
        self.last_print = self.started
        self.last_totals: dict[str, int] = {}
        for i in range(procs):
            wp = dict(params)
            if per_worker is not None:
                wp.update(per_worker(i, wp))
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            evt_r, evt_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=worker_main, args=(i, cmd_r, evt_w, self.shared, wp, worker),
                               name=f"bench-loadgen-{i}", daemon=True)
            proc.start()
            cmd_r.close()
            evt_w.close()
            self.conns.append(evt_r)
            self.cmd_conns.append(cmd_w)
            self.processes.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def send_all(self, cmd: str, **data: Any) -> None:
        for c in self.cmd_conns:
            try:
                c.send((cmd, data))
            except OSError:
                continue  # that worker has ended: _pump reports it as died, with its exit code

    def send(self, index: int, cmd: str, **data: Any) -> None:
        self.cmd_conns[index].send((cmd, data))

    def totals(self) -> dict[str, Any]:
        counters: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        for snap in self.progress.values():
            counters.update(snap.get("counters", {}))
            errors.update(snap.get("errors", {}))
        return {"counters": counters, "errors": errors}

    def _pump(self, timeout: float) -> list[tuple[str, int, dict[str, Any]]]:
        """Read what the workers said within ``timeout`` s; keep progress and
        results; print a progress line when a second has passed."""
        events = []
        alive = [c for c in self.conns if not c.closed]
        for c in wait(alive, timeout):
            try:
                kind, index, data = c.recv()
            except (EOFError, OSError):
                c.close()
                index = self.conns.index(c)
                if index not in self.results:  # a worker ends after sending its result
                    events.append(("died", index, {}))
                continue
            if kind in ("progress", "result"):
                self.progress[index] = {"counters": data.get("counters", {}), "errors": data.get("errors", {})}
            if kind == "result":
                self.results[index] = data
                self.phases[("result", index)] = data
            if kind == "phase":
                self.phases[(data["phase"], index)] = data
            if kind == "failed":
                raise LoadGenError(f"load generator worker {index} failed: {data['error']}\n{data.get('tb', '')}")
            events.append((kind, index, data))
        now = time.monotonic()
        if now - self.last_print >= 1.0:
            self.print_status(now)
        return events

    def print_status(self, now: float) -> None:
        elapsed = now - self.started
        dt = now - self.last_print
        totals = self.totals()
        line = f"[{self.label}] {elapsed:6.1f}s"
        if self.status is not None:
            line += " " + self.status(totals, dt)
        errors = sum(totals["errors"].values())
        line += f" errors={errors}"
        if errors:
            line += " (" + ", ".join(f"{k}={v}" for k, v in sorted(totals["errors"].items())) + ")"
        print(line, file=sys.stderr, flush=True)
        self.last_print = now

    def wait_phase(self, phase: str, timeout: float, indices: Optional[list[int]] = None) -> dict[int, dict[str, Any]]:
        """Wait until every worker (or those in ``indices``) reports ``phase``."""
        want = set(range(self.procs) if indices is None else indices)
        deadline = time.monotonic() + timeout
        while True:
            got = {i: self.phases[(phase, i)] for i in want if (phase, i) in self.phases}
            if len(got) == len(want):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadGenError(f"timeout after {timeout:.0f}s waiting for phase {phase!r} "
                                   f"({len(got)}/{len(want)} workers there)")
            self._check_died(self._pump(min(left, 0.25)))

    def _check_died(self, events: list[tuple[str, int, dict[str, Any]]]) -> None:
        for kind, index, _ in events:
            if kind == "died":
                proc = self.processes[index]
                proc.join(1.0)
                raise LoadGenError(f"load generator worker {index} ended without a result "
                                   f"(exit code {proc.exitcode})")

    def wait_results(self, timeout: float) -> list[dict[str, Any]]:
        got = self.wait_phase("result", timeout)
        return [got[i] for i in sorted(got)]

    def wait_until(self, t_monotonic_ns: int, condition: Optional[Callable[[], bool]] = None) -> None:
        """Keep printing progress until the instant ``t_monotonic_ns`` (or until
        ``condition()`` is true)."""
        while True:
            left = (t_monotonic_ns - now_ns()) / 1e9
            if left <= 0 or (condition is not None and condition()):
                return
            self._check_died(self._pump(min(left, 0.25)))

    def cpu_seconds(self) -> float:
        """user+sys CPU time of the workers so far."""
        total = 0.0
        for pid in self.pids:
            try:
                total += procfs.cpu_seconds(pid)
            except OSError:
                continue  # a worker that has ended: _pump reports it as died
        return total

    def close(self, timeout: float = 10.0) -> None:
        self.send_all("exit")
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for c in self.conns + self.cmd_conns:
            c.close()

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def latencies(results: list[dict[str, Any]]) -> array.array:
    """All workers' latency samples (ns), merged and sorted."""
    lat = array.array("q")
    for r in results:
        lat.frombytes(r.get("lat", b""))
    return array.array("q", sorted(lat))


def percentile(sorted_values: Any, q: float) -> Optional[float]:
    if not len(sorted_values):
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return float(sorted_values[k])
