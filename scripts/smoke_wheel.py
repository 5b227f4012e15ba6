#!/usr/bin/env python3
"""Smoke test of an *installed* wsrelay (a wheel), end to end.

    python scripts/smoke_wheel.py [APP_YAML] [--timeout SECONDS]

Run it with the interpreter of a venv that has the wheel installed, from a
directory outside the source tree (``make wheel``, ``scripts/build_wheels_all.sh``
and cibuildwheel's test step all do). It uses the standard library only.

1. imports every compiled module of ``wsrelay._core`` and checks that it is an
   extension module installed in site-packages, not a file of a source tree;
2. starts ``wsrelay serve APP_YAML --addr 127.0.0.1:<free port>`` (default
   APP_YAML: ``examples/chat/app.yaml`` of the source tree, or of the current
   directory) and waits for ``/health``; checks ``/metrics`` and
   ``/wsrelay.js`` (the browser client, package data of the wheel);
3. connects two WebSocket clients (a minimal RFC 6455 client on a raw socket)
   to the chat room, sends a message from one and checks that the room's
   channel publishes it to both; closes both with a close handshake;
4. sends SIGTERM and checks that the gateway exits with status 0.

Exit status 0 when all of this holds; otherwise 1 with the step that failed and
the gateway's log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import importlib
import importlib.machinery
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Optional

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class SmokeError(Exception):
    pass


def step(text: str) -> None:
    print(f"smoke: {text}", flush=True)


# -- 1. the installed package -----------------------------------------------------------


def check_installed() -> None:
    site_dirs = {pathlib.Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}

    def installed(path: str) -> bool:
        p = pathlib.Path(path).resolve()
        return any(d == p or d in p.parents for d in site_dirs)

    import wsrelay

    if not installed(wsrelay.__file__):
        raise SmokeError(f"wsrelay was imported from {wsrelay.__file__}, not from site-packages "
                         f"({', '.join(map(str, sorted(site_dirs)))}): run this outside the source tree")
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    # Every compiled module of the core ships with its stub: a stub without
    # its module (or a module left uncompiled) means a broken wheel.
    core_modules = sorted(p.stem for p in pathlib.Path(wsrelay.__file__).parent.joinpath("_core").glob("*.pyi"))
    if len(core_modules) < 7:
        raise SmokeError(f"the wheel's wsrelay/_core has stubs for only {core_modules}")
    for name in core_modules:
        module = importlib.import_module(f"wsrelay._core.{name}")
        path = getattr(module, "__file__", "") or ""
        if not path.endswith(suffixes):
            raise SmokeError(f"wsrelay._core.{name} is not a compiled extension module: {path}")
        if not installed(path):
            raise SmokeError(f"wsrelay._core.{name} comes from {path}, not from site-packages")
    # A touch of the core's API through the public package.
    pid = wsrelay.Pid.parse("{app:smoke|0x0000a}")
    if str(pid) != "{app:smoke|0x0000a}":
        raise SmokeError(f"Pid round trip gave {pid!s}")
    step(f"imported wsrelay {getattr(wsrelay, '__version__', '')} from {pathlib.Path(wsrelay.__file__).parent} "
         f"with {len(core_modules)} compiled core modules")


# -- 2. the gateway ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_command(app_yaml: pathlib.Path, addr: str) -> list:
    """The installed console script when there is one (it is part of the wheel),
    else ``python -m wsrelay``."""
    script = pathlib.Path(sys.executable).parent / "wsrelay"
    if script.exists():
        return [str(script), "serve", str(app_yaml), "--addr", addr]
    return [sys.executable, "-m", "wsrelay", "serve", str(app_yaml), "--addr", addr]


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.getheader("Content-Type", ""), res.read()
    finally:
        conn.close()


def wait_healthy(proc: subprocess.Popen, port: int, deadline: float) -> dict:
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SmokeError(f"the gateway exited with status {proc.returncode} before /health answered")
        try:
            status, _, body = http_get(port, "/health", timeout=2)
            if status == 200:
                return json.loads(body)
            last = f"status {status}: {body[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise SmokeError(f"/health did not answer 200 in time (last: {last})")


# -- 3. a minimal WebSocket client --------------------------------------------------------


class WSClient:
    """RFC 6455 client on a blocking socket: text frames, close handshake."""

    def __init__(self, port: int, path: str, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "\r\n"
        ).encode())
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise SmokeError(f"upgrade of {path} refused: {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise SmokeError(f"bad Sec-WebSocket-Accept: {headers.get('sec-websocket-accept')!r}")
        if "x-ws-relay" in headers:
            raise SmokeError("the X-WS-Relay header reached the client")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SmokeError("the server closed the TCP connection")
        self.buf += chunk

    def send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv_frame(self) -> tuple:
        b0, b1 = self._read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exact(8))
        if b1 & 0x80:
            raise SmokeError("the server sent a masked frame")
        return bool(b0 & 0x80), b0 & 0x0F, self._read_exact(n)

    def recv_message(self) -> tuple:
        """(opcode, payload) of the next data or close message; answers pings."""
        parts: list = []
        opcode: Optional[int] = None
        while True:
            fin, op, payload = self.recv_frame()
            if op == 0x9:  # ping
                self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                return op, payload
            if op != 0:
                opcode = op
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def recv_json(self) -> dict:
        opcode, payload = self.recv_message()
        if opcode != 0x1:
            raise SmokeError(f"expected a text message, got opcode {opcode} {payload[:100]!r}")
        return json.loads(payload)

    def close(self, code: int = 1000) -> int:
        """Close handshake; returns the code of the server's close frame."""
        self.send_frame(0x8, struct.pack("!H", code) + b"bye")
        try:
            while True:
                opcode, payload = self.recv_message()
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        finally:
            self.sock.close()


def expect(client: WSClient, who: str, channel: str, **fields: object) -> dict:
    """The next publication: one on ``channel`` whose data has ``fields``
    (past the ``subscribed`` event that begins a subscription to a room with
    history, the room's presence events and the online list the demo sends
    each client as it joins)."""
    event = client.recv_json()
    while (event.get("channel") == channel and event.get("event") in ("subscribed", "join", "leave")) \
            or set(event) == {"presence"}:
        event = client.recv_json()
    data = event.get("data")
    if (event.get("channel"), event.get("event")) != (channel, "publication") or not isinstance(data, dict) \
            or any(data.get(key) != value for key, value in fields.items()):
        raise SmokeError(f"{who} expected a publication on {channel} with {fields}, got {event}")
    return data


def chat(port: int, timeout: float) -> None:
    room = "room:smoke"
    alice = WSClient(port, "/ws/chat?room=smoke&user=alice", timeout)
    expect(alice, "alice", room, kind="join", user="alice", room="smoke")
    bob = WSClient(port, "/ws/chat?room=smoke&user=bob", timeout)
    expect(bob, "bob", room, kind="join", user="bob", room="smoke")
    expect(alice, "alice", room, kind="join", user="bob", room="smoke")
    step("two clients joined the room")
    text = "hello from the wheel smoke test \u2713"
    alice.send_text(text)
    expect(alice, "alice", room, kind="message", user="alice", text=text)
    expect(bob, "bob", room, kind="message", user="alice", text=text)
    step("a message was published to the room's channel and reached both clients")
    code = bob.close()
    if code != 1000:
        raise SmokeError(f"bob's close handshake answered code {code}")
    expect(alice, "alice", room, kind="leave", user="bob")
    code = alice.close()
    if code != 1000:
        raise SmokeError(f"alice's close handshake answered code {code}")
    step("both clients closed with code 1000")


# -- the whole run ------------------------------------------------------------------------


def default_app() -> pathlib.Path:
    here = pathlib.Path(__file__).resolve().parent
    for base in (here.parent, pathlib.Path.cwd()):
        candidate = base / "examples" / "chat" / "app.yaml"
        if candidate.exists():
            return candidate
    raise SmokeError("no examples/chat/app.yaml found: pass the app file as an argument")


def run(app_yaml: pathlib.Path, timeout: float) -> None:
    check_installed()
    port = free_port()
    addr = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("WSRELAY_")}
    with tempfile.TemporaryFile(mode="w+") as log, tempfile.TemporaryDirectory() as cwd:
        cmd = gateway_command(app_yaml, addr)
        step(f"starting {' '.join(cmd)}")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            health = wait_healthy(proc, port, time.monotonic() + timeout)
            if health.get("status") != "ok":
                raise SmokeError(f"/health: {health}")
            step(f"/health: {health}")
            status, ctype, body = http_get(port, "/metrics")
            if status != 200 or not body:
                raise SmokeError(f"/metrics answered {status} {body[:200]!r}")
            step(f"/metrics: {len(body)} bytes of {ctype.split(';')[0]}")
            status, ctype, body = http_get(port, "/wsrelay.js")
            if status != 200 or not ctype.startswith("text/javascript") or b"var WsRelay" not in body:
                raise SmokeError(f"/wsrelay.js answered {status} {ctype!r} {body[:200]!r}")
            step(f"/wsrelay.js: {len(body)} bytes of {ctype.split(';')[0]}")
            chat(port, timeout)
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise SmokeError(f"the gateway did not exit within {timeout} s of SIGTERM") from None
            if rc != 0:
                raise SmokeError(f"the gateway exited with status {rc} after SIGTERM (expected 0)")
            step("SIGTERM: the gateway drained and exited with status 0")
        except BaseException:
            log.seek(0)
            sys.stderr.write("---- gateway log ----\n" + log.read()[-20000:] + "---- end of gateway log ----\n")
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", nargs="?", help="application YAML (default: examples/chat/app.yaml)")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("SMOKE_TIMEOUT", "60")),
                        help="seconds allowed for start-up, each socket read and the exit (default 60, "
                             "or $SMOKE_TIMEOUT; raise it under emulation)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        app_yaml = pathlib.Path(args.app).resolve() if args.app else default_app()
        run(app_yaml, args.timeout)
    except (SmokeError, OSError, ImportError, ValueError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    step(f"OK in {time.monotonic() - started:.1f} s ({sys.implementation.name} "
         f"{'.'.join(map(str, sys.version_info[:3]))}, {sysconfig.get_platform()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
