"""Helpers for the operations tests (tests/test_ops_*.py): a raw WebSocket
client that can send any frame (invalid ones included), plain HTTP GETs for
/health and /metrics, the Prometheus text parser, and ``wsrelay serve`` run
as a real subprocess (signals, exit codes, the server's own RSS)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from prometheus_client.parser import text_string_to_metric_families

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    _apply_mask = None

REPO = Path(__file__).resolve().parent.parent

# Opcodes (RFC 6455 §5.2).
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- frames ------------------------------------------------------------------------------


def mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    if _apply_mask is not None:
        return _apply_mask(payload, key)
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
                 masked: bool = True, key: Optional[bytes] = None) -> bytes:
    """One frame as a client sends it (masked unless ``masked`` is False)."""
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 1 << 16:
        head = bytes([first, bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = key if key is not None else os.urandom(4)
    return head + key + mask(payload, key)


def close_payload(code: Optional[int], reason: bytes = b"") -> bytes:
    return b"" if code is None else code.to_bytes(2, "big") + reason


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "payload")

    def __init__(self, fin: bool, rsv: int, opcode: int, payload: bytes) -> None:
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    @property
    def close_code(self) -> Optional[int]:
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        return self.payload[2:]

    def __repr__(self) -> str:
        return f"Frame(op={self.opcode:#x}, fin={self.fin}, rsv={self.rsv}, {len(self.payload)} bytes)"


class HandshakeRefused(Exception):
    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"upgrade refused with {status}: {head[:200]!r}")
        self.status = status
        self.head = head


def upgrade_request(host: str, port: int, path: str, extra: Iterable[str] = ()) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWS:
    """A WebSocket client with no opinions: it sends exactly the frames it is
    told to, answers nothing by itself and reads frames one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock: socket.socket) -> None:
        self.reader = reader
        self.writer = writer
        self.sock = sock

    @classmethod
    async def connect(cls, host: str, port: int, path: str, *, rcvbuf: Optional[int] = None,
                      limit: int = 1 << 16, extra_headers: Iterable[str] = ()) -> RawWS:
        """Connect and upgrade; HandshakeRefused when the answer is not 101.
        ``rcvbuf`` shrinks SO_RCVBUF before connecting (the TCP window)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await loop.sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        except BaseException:
            sock.close()
            raise
        writer.write(upgrade_request(host, port, path, extra_headers))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            raise
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            writer.close()
            raise HandshakeRefused(status, head)
        return cls(reader, writer, sock)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
                   masked: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin, rsv, masked))

    async def drain(self) -> None:
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        self.send_frame(TEXT, text.encode())
        await self.writer.drain()

    async def send_close(self, code: Optional[int] = 1000, reason: bytes = b"") -> None:
        self.send_frame(CLOSE, close_payload(code, reason))
        await self.writer.drain()

    async def recv_frame(self) -> Optional[Frame]:
        """The next frame, or None at EOF / reset."""
        try:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            key = await self.reader.readexactly(4) if b1 & 0x80 else None
            payload = await self.reader.readexactly(n) if n else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if key is not None:
            payload = mask(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0xF, payload)

    async def recv_data(self) -> Frame:
        """The next text or binary frame, skipping pings and pongs; AssertionError
        on a close or EOF."""
        while True:
            frame = await self.recv_frame()
            assert frame is not None, "connection ended"
            assert frame.opcode != CLOSE, f"closed with {frame.close_code} {frame.close_reason!r}"
            if frame.opcode in (TEXT, BINARY):
                return frame

    async def recv_until_close(self) -> tuple[list[Frame], Optional[Frame]]:
        """Every frame up to and including the close frame (None: EOF came first)."""
        frames: list[Frame] = []
        while True:
            frame = await self.recv_frame()
            if frame is None:
                return frames, None
            if frame.opcode == CLOSE:
                return frames, frame
            frames.append(frame)

    async def at_eof(self) -> bool:
        """Read until EOF, ignoring data; True when the server closed the socket."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


# -- HTTP and metrics ------------------------------------------------------------------------


async def http_get(host: str, port: int, path: str, headers: Iterable[str] = ()) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of ``GET path`` on a fresh connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", *headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        parsed: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        if "content-length" in parsed:
            body = await reader.readexactly(int(parsed["content-length"]))
        else:
            body = await reader.read()
        return status, parsed, body
    finally:
        writer.close()


class Metrics:
    """One scrape of /metrics, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The value of sample ``name`` with exactly ``labels``; 0 when absent
        (a labelled counter has no sample until it is first counted)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.samples)


async def scrape(host: str, port: int) -> Metrics:
    status, headers, body = await http_get(host, port, "/metrics")
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain"), headers
    return Metrics(body.decode())


def host_port(url: str) -> tuple[str, int]:
    m = re.match(r"^\w+://([^:/]+):(\d+)", url)
    assert m, url
    return m.group(1), int(m.group(2))


# -- wsrelay serve as a subprocess -----------------------------------------------------------


APP_YAML = """\
version: "1.0"
namespace: ops
entries:
  - name: gateway
    kind: http.service
    addr: "{addr}"
  - name: ws_router
    kind: http.router
    meta: {{server: gateway}}
    prefix: /ws
    post_middleware: [websocket_relay]
    post_options: {{wsrelay.allowed.origins: "*"}}
  - name: echo_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /echo
    func: tests.ops_procs:echo_endpoint
  - name: check_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /check
    func: tests.ops_procs:check_endpoint
"""


def write_app(folder: Path, addr: str = "127.0.0.1:0") -> Path:
    """The operations test app (echo and sequence-check routes) as a YAML file."""
    path = folder / "app.yaml"
    path.write_text(textwrap.dedent(APP_YAML.format(addr=addr)))
    return path


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment for a ``wsrelay serve`` subprocess: no inherited
    WSRELAY_* variable, the repository importable, ``overrides`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_") and not k.startswith("OPS_")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def serve_command(app_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "wsrelay", "serve", str(app_file), *args]


def rss_bytes(pid: int) -> int:
    return _status_field(pid, "VmRSS")


def hwm_bytes(pid: int) -> int:
    """Peak RSS of ``pid`` since it started (the kernel's high-water mark)."""
    return _status_field(pid, "VmHWM")


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread (a
    measurement, not synchronisation), so a blocked event loop cannot hide a peak."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = rss_bytes(self.pid)
            except (OSError, LookupError):
                return
            self.samples += 1
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class Served:
    """A running ``wsrelay serve`` subprocess; its output is collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._pump = asyncio.ensure_future(self._read())
        self.url = ""
        self.host = ""
        self.port = 0

    @classmethod
    async def start(cls, app_file: Path, env: dict[str, str], *args: str, timeout: float = 30.0) -> Served:
        proc = await asyncio.create_subprocess_exec(
            *serve_command(app_file, *args), env=env, cwd=str(REPO),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        served = cls(proc)
        try:
            line = await served.wait_line(lambda s: s.startswith("wsrelay: serving ") or "Traceback" in s,
                                          timeout)
            assert line.startswith("wsrelay: serving "), served.output()
            served.url = line.split()[2].rstrip(",")
            served.host, served.port = host_port(served.url)
        except BaseException:
            await served.kill()
            raise
        return served

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def wait_line(self, match: Callable[[str], bool], timeout: float, start: int = 0) -> str:
        """The first output line (from index ``start``) for which ``match`` is true."""
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for line in self.lines[seen:]:
                if match(line):
                    return line
            seen = len(self.lines)
            if self._pump.done():
                raise AssertionError(f"the server ended without the expected line:\n{self.output()}")
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no expected line within {timeout} s:\n{self.output()}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._pump, 5)
        return rc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pump, 5)

    async def __aenter__(self) -> Served:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.kill()


def read_report(path: Path) -> list[list[str]]:
    """Lines written by ops_procs' targets to OPS_REPORT_FILE, split on spaces."""
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines() if line]
