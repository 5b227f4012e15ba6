"""docs/guide.md cannot rot: its code blocks are the files of examples/guide/,
and these tests run those files against real gateways over real sockets.

- Every ```python and ```yaml block of the guide must appear, verbatim, in a
  file of examples/guide/.
- examples/guide/app.yaml runs under `wsrelay serve` (a subprocess, on a port
  the kernel picks), and websocket clients exercise each example.
- processes.py, python_app.py and with_aiohttp.py run as the guide says to
  run them.

Nothing sleeps: every wait is for a line the server prints, a frame, or the
end of a process, with a generous upper bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Optional

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
EXAMPLES = ROOT / "examples" / "guide"
BIN = pathlib.Path(sys.prefix) / "bin"
# The machine has 2 shared cores: generous bounds, strict conditions.
TIMEOUT = 20.0
START_TIMEOUT = 60.0
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


# -- running an example ---------------------------------------------------------------------


class Program:
    """An example run as a subprocess from the repository's root, its stdout
    read line by line as it comes."""

    def __init__(self, *argv: str, env: Optional[dict[str, str]] = None) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_")}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace"))

    def wait_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stdout line matching ``pattern``, once printed."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for m in map(regex.search, self.lines) if m][:1]
            return bool(found) or self._eof

        with self._changed:
            self._changed.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"no line matching {pattern!r}; {self.output()}")
        return found[0]

    def output(self) -> str:
        return "stdout:\n" + "\n".join(self.lines) + "\nstderr:\n" + "".join(self.stderr)

    def stop(self) -> int:
        """SIGTERM and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(START_TIMEOUT)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(START_TIMEOUT)
        for reader in self._readers:
            reader.join(START_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Server(Program):
    """A program that prints the http:// address it serves on."""

    def __init__(self, *argv: str, env: Optional[dict[str, str]] = None,
                 pattern: str = r"serving (http://127\.0\.0\.1:(\d+))") -> None:
        super().__init__(*argv, env=env)
        try:
            match = self.wait_line(pattern)
        except BaseException:
            self.close()
            raise
        self.port = int(match.group(2))

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
def guide():
    """`wsrelay serve examples/guide/app.yaml` on a port the kernel picks;
    stopped with SIGTERM, which must exit 0."""
    server = Server(str(BIN / "wsrelay"), "serve", "examples/guide/app.yaml", "--addr", "127.0.0.1:0")
    try:
        yield server
        code = server.stop()
        assert code == 0, server.output()
    finally:
        server.close()


# -- clients ------------------------------------------------------------------------------------


async def http_request(port: int, path: str, headers: Optional[dict[str, str]] = None,
                       method: str = "GET", body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request: status, headers (lowercase names) and body.
    A 101 answer is read up to its headers, then the socket is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        fields = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
        lines = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        answer = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                answer[name.strip().lower()] = value.strip()
        content = b""
        if status != 101 and "content-length" in answer:
            content = await asyncio.wait_for(reader.readexactly(int(answer["content-length"])), TIMEOUT)
        return status, answer, content
    finally:
        writer.close()


async def recv(ws: Any) -> Any:
    """The next message: JSON text decoded, binary as bytes."""
    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
    return message if isinstance(message, bytes) else json.loads(message)


async def recv_until(ws: Any, condition: Callable[[Any], bool]) -> Any:
    """Read messages until one satisfies ``condition``; that one."""
    async def read() -> Any:
        while True:
            message = await recv(ws)
            if condition(message):
                return message

    return await asyncio.wait_for(read(), TIMEOUT)


async def closed(ws: Any) -> tuple[Optional[int], str]:
    """Wait for the server's close frame: (code, reason)."""
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    frame = info.value.rcvd
    assert frame is not None, "the connection dropped without a close frame"
    return frame.code, frame.reason


async def metric(port: int, sample: str) -> float:
    status, _, body = await http_request(port, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def health(port: int) -> dict[str, Any]:
    status, _, body = await http_request(port, "/health")
    assert status == 200, body
    return json.loads(body)


async def wait_for_processes(port: int, count: int) -> None:
    """Until /health counts ``count`` processes. Polled, because the count is
    only visible from outside; the poll is the condition, not a delay."""
    async def poll() -> None:
        while (await health(port))["processes"] != count:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), TIMEOUT)


# -- the guide and its files ------------------------------------------------------------------


def _code_blocks(markdown: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```$", markdown, flags=re.M | re.S)


def test_every_code_block_of_the_guide_is_in_an_example_file():
    blocks = [(lang, code) for lang, code in _code_blocks(GUIDE.read_text()) if lang in ("python", "yaml")]
    assert len(blocks) >= 10, "the guide lost its examples"
    files = {path.name: path.read_text() for path in sorted(EXAMPLES.iterdir()) if path.suffix in (".py", ".yaml")}
    missing = [code for _, code in blocks if not any(code in text for text in files.values())]
    assert not missing, "guide blocks that are in no file of examples/guide/:\n\n" + "\n---\n".join(missing)
    # And every example file is shown, at least in part, by the guide.
    guide = GUIDE.read_text()
    for name in files:
        assert f"examples/guide/{name}" in guide, f"the guide never mentions examples/guide/{name}"


def test_check_command_accepts_the_guide_app():
    done = subprocess.run([str(BIN / "wsrelay"), "check", "examples/guide/app.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "examples/guide/app.yaml: ok" in done.stdout


def test_a_bad_file_exits_non_zero_naming_the_entry(tmp_path: pathlib.Path):
    bad = tmp_path / "app.yaml"
    text = (EXAMPLES / "app.yaml").read_text().replace("func: session:handler", "func: session:nowhere")
    bad.write_text(text)
    for name in ("handlers.py", "session.py", "presence.py", "broadcast.py", "transfer.py"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    done = subprocess.run([str(BIN / "wsrelay"), "serve", str(bad), "--addr", "127.0.0.1:0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 2
    # The message the guide shows.
    assert f"wsrelay: {bad}: entry 'app.ws:handler', field 'func': module 'session' has no 'nowhere'" \
        in done.stderr, done.stderr


# -- handlers ---------------------------------------------------------------------------------


async def test_plain_handler_and_the_answers_to_bad_requests(guide: Server):
    status, headers, body = await http_request(guide.port, "/hello?name=Ada")
    assert (status, body) == (200, b"hello, Ada\n")
    assert headers["connection"] == "close"
    assert headers["content-type"] == "text/plain; charset=utf-8"

    status, _, body = await http_request(guide.port, "/nowhere")
    assert status == 404
    status, _, body = await http_request(guide.port, "/hello", method="POST")
    assert status == 400
    # A relay route asked without an upgrade: 426, before the handler runs.
    status, headers, _ = await http_request(guide.port, "/ws/session")
    assert status == 426 and headers["upgrade"] == "websocket"
    status, _, _ = await http_request(guide.port, "/ws/session", {**UPGRADE, "Connection": "keep-alive"})
    assert status == 400
    status, _, _ = await http_request(guide.port, "/ws/session", {**UPGRADE, "Sec-WebSocket-Version": "8"})
    assert status == 426
    status, _, body = await http_request(guide.port, "/ws/session", {**UPGRADE, "Origin": "https://evil.example"})
    assert status == 403 and b"not allowed" in body
    assert await metric(guide.port, 'wsrelay_handshake_failures_total{reason="origin"}') == 1
    assert await metric(guide.port, 'wsrelay_handshake_failures_total{reason="bad_upgrade"}') == 3
    assert (await health(guide.port))["processes"] == 1  # nothing was spawned


async def test_allowed_origins(guide: Server):
    for origin in ("https://app.example.com", "http://localhost:3000"):
        async with websockets.connect(guide.ws("/ws/session?user_id=ada"), origin=origin) as ws:
            assert (await recv(ws))["event"] == "welcome"
    for origin in ("http://app.example.com", "https://localhost:3000", "https://app.example.com.evil.example"):
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(guide.ws("/ws/session"), origin=origin):
                pass
        assert info.value.response.status_code == 403


async def test_private_refuses_with_an_ordinary_response(guide: Server):
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(guide.ws("/ws/private?token=wrong")):
            pass
    assert info.value.response.status_code == 401
    assert info.value.response.body == b"401 Unauthorized: unknown token\n"
    async with websockets.connect(guide.ws("/ws/private?token=s3cret")) as ws:
        assert ws.response.headers["X-User"] == "ada"
        assert "X-WS-Relay" not in ws.response.headers
        assert await recv(ws) == {"event": "welcome", "user": "ada"}


# -- the receive loop, sending, closing ------------------------------------------------------


async def test_session_receive_loop_send_text_binary_and_close(guide: Server):
    async with websockets.connect(guide.ws("/ws/session?user_id=ada")) as ws:
        assert await recv(ws) == {"event": "welcome", "user": "ada"}
        assert await recv(ws) == {"event": "online", "users": ["ada"]}
        await ws.send(json.dumps({"op": "update"}))
        assert await recv(ws) == {"event": "update", "value": 42}
        await ws.send(json.dumps({"op": "binary"}))
        assert await recv(ws) == bytes(range(8))
        await ws.send(b"\x00\x01\x02")
        assert await recv(ws) == {"event": "got_bytes", "size": 3}
        await ws.send("not json")
        assert await recv(ws) == {"event": "error", "error": "not JSON"}
        await ws.send(json.dumps({"op": "bye"}))
        assert await closed(ws) == (1000, "session ended")
    # The session process returned on ws.leave; presence stays.
    await wait_for_processes(guide.port, 2)


async def test_heartbeats(guide: Server):
    async with websockets.connect(guide.ws("/ws/clock?user_id=ada")) as ws:
        await recv_until(ws, lambda m: m.get("event") == "online")
        first = await recv_until(ws, lambda m: m.get("event") == "tick")
        assert first["messages"] == 0 and first["uptime"] >= 0.5
        await ws.send(json.dumps({"op": "update"}))
        await recv_until(ws, lambda m: m.get("event") == "update")
        second = await recv_until(ws, lambda m: m.get("event") == "tick")
        assert second["messages"] == 1 and second["uptime"] >= first["uptime"] + 0.5


async def test_presence_monitors_connections(guide: Server):
    async with websockets.connect(guide.ws("/ws/session?user_id=ada")) as ada:
        await recv_until(ada, lambda m: m == {"event": "online", "users": ["ada"]})
        async with websockets.connect(guide.ws("/ws/session?user_id=bob")) as bob:
            await recv_until(bob, lambda m: m == {"event": "online", "users": ["ada", "bob"]})
            await recv_until(ada, lambda m: m == {"event": "online", "users": ["ada", "bob"]})
        # bob's connection ended: presence got EXIT for it.
        await recv_until(ada, lambda m: m == {"event": "online", "users": ["ada"]})


async def test_shutdown_closes_clients_with_1001():
    # `python -m wsrelay` is the same command.
    server = Server(str(BIN / "python"), "-m", "wsrelay", "serve", "examples/guide/app.yaml", "--addr", "127.0.0.1:0")
    try:
        async with websockets.connect(server.ws("/ws/lobby?user=ada")) as ws:
            assert (await recv(ws))["event"] == "lobby"
            server.proc.send_signal(signal.SIGTERM)
            assert await closed(ws) == (1001, "server shutting down")
        code = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, START_TIMEOUT)
        assert code == 0, server.output()
    finally:
        server.close()


# -- broadcasting and transfer -----------------------------------------------------------------


async def test_broadcast_with_a_set_of_clients(guide: Server):
    async with websockets.connect(guide.ws("/ws/chat?user=ada")) as ada:
        assert await recv(ada) == {"event": "join", "user": "ada", "online": 1}
        async with websockets.connect(guide.ws("/ws/chat?user=bob")) as bob:
            assert await recv(bob) == {"event": "join", "user": "bob", "online": 2}
            assert await recv(ada) == {"event": "join", "user": "bob", "online": 2}
            await bob.send("hi all")
            for ws in (ada, bob):
                assert await recv(ws) == {"event": "message", "user": "bob", "text": "hi all"}
        assert await recv(ada) == {"event": "leave", "user": "bob", "online": 1}


async def test_transfer_from_lobby_to_a_room(guide: Server):
    async with websockets.connect(guide.ws("/ws/lobby?user=ada")) as ada:
        assert (await recv(ada))["event"] == "lobby"
        await ada.send("not a room!")
        assert (await recv(ada))["event"] == "error"
        await ada.send("kitchen")
        assert await recv(ada) == {"event": "join", "room": "kitchen", "user": "ada", "members": 1}
        async with websockets.connect(guide.ws("/ws/lobby?user=bob")) as bob:
            assert (await recv(bob))["event"] == "lobby"
            await bob.send("kitchen")
            joined = {"event": "join", "room": "kitchen", "user": "bob", "members": 2}
            assert await recv(bob) == joined
            assert await recv(ada) == joined
            await ada.send("dinner?")  # now goes to the room, not the lobby
            said = {"event": "message", "room": "kitchen", "user": "ada", "text": "dinner?"}
            assert await recv(ada) == said
            assert await recv(bob) == said
        assert await recv(ada) == {"event": "leave", "room": "kitchen", "user": "bob", "members": 1}
    # Both lobbies ended after the transfer; the room ended when it emptied.
    await wait_for_processes(guide.port, 1)
    async with websockets.connect(guide.ws("/ws/lobby?user=cy")) as cy:
        await recv(cy)
        await cy.send("kitchen")
        assert await recv(cy) == {"event": "join", "room": "kitchen", "user": "cy", "members": 1}


# -- the examples that are programs --------------------------------------------------------------


def test_processes_script():
    program = Program(str(BIN / "python"), "examples/guide/processes.py", env={"WSRELAY_MAILBOX_CAPACITY": "16"})
    try:
        code = program.proc.wait(START_TIMEOUT)
    finally:
        program.close()
    assert code == 0, program.output()
    assert program.lines == [
        "reply: total 16 True",
        "by name: 2",
        "lookup: True",
        "after exit: None False",
        "EXIT: ok normal None",
        "EXIT: bad error RuntimeError('job failed')",
        "EXIT: noproc",
        "send to an exited PID: False",
        "supervisor: True error job failed",
        "linked: True True crashed",
        "mailbox full after 16 messages; capacity 16",
    ], program.output()


async def test_python_app_is_the_yaml_app():
    server = Server(str(BIN / "python"), "examples/guide/python_app.py", "127.0.0.1:0")
    try:
        status, _, body = await http_request(server.port, "/hello?name=Py")
        assert (status, body) == (200, b"hello, Py\n")
        async with websockets.connect(server.ws("/ws/session?user_id=ada")) as ws:
            assert await recv(ws) == {"event": "welcome", "user": "ada"}
            await ws.send(json.dumps({"op": "update"}))
            assert await recv_until(ws, lambda m: m.get("event") == "update") == {"event": "update", "value": 42}
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(server.ws("/ws/chat"), origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403
    finally:
        code = await asyncio.get_running_loop().run_in_executor(None, server.stop)
    assert code == 0, server.output()


async def test_with_aiohttp_api_reaches_websocket_clients():
    server = Server(str(BIN / "python"), "examples/guide/with_aiohttp.py", "127.0.0.1:0", "127.0.0.1:0",
                    pattern=r"websockets on (ws://127\.0\.0\.1:(\d+))/ws")
    try:
        api = int(server.wait_line(r"api on http://127\.0\.0\.1:(\d+)/api").group(1))
        async with websockets.connect(server.ws("/ws/lobby?user=ada")) as ws:
            assert (await recv(ws))["event"] == "lobby"
            await ws.send("garden")
            assert (await recv(ws))["event"] == "join"

            status, _, body = await http_request(api, "/api/rooms")
            assert (status, json.loads(body)) == (200, {"rooms": ["garden"]})
            announce = json.dumps({"text": "lunch is ready"}).encode()
            json_type = {"Content-Type": "application/json"}
            status, _, body = await http_request(api, "/api/rooms/garden/announce", json_type, "POST", announce)
            assert (status, json.loads(body)) == (200, {"room": "garden", "sent": True})
            assert await recv(ws) == {"event": "announce", "room": "garden", "text": "lunch is ready"}

            status, _, _ = await http_request(api, "/api/rooms/nowhere/announce", json_type, "POST", announce)
            assert status == 404
            status, _, _ = await http_request(api, "/api/rooms/garden/announce", json_type, "POST", b"[1]")
            assert status == 400
    finally:
        code = await asyncio.get_running_loop().run_in_executor(None, server.stop)
    assert code == 0, server.output()
