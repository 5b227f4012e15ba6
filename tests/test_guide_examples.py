"""docs/guide.md cannot rot: its code blocks are the files of examples/guide/,
and these tests run those files against real gateways over real sockets.

- Every ```python and ```yaml block of the guide must appear, verbatim, in a
  file of examples/guide/, or of the examples that tests of their own run:
  examples/fastapi/ (tests/test_example_fastapi.py), examples/chat/
  (tests/test_demo_browser.py), examples/django/ (tests/test_example_django.py).
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
import pathlib
import re
import signal
import sys
from typing import Any, Callable, Iterator, Optional

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness import REPO, START_TIMEOUT, WSRELAY, ServerProcess, run_to_exit, scrape, serve_command
from tests.wsclient import HTTPResponse, http_request

GUIDE = REPO / "docs" / "guide.md"
EXAMPLES = REPO / "examples" / "guide"
# The folders whose files the guide's code blocks come from.
SHOWN = tuple(REPO / "examples" / folder for folder in (
    "guide", "fastapi", "chat", "django/gateway", "django/notify_site"))
# The machine has 2 shared cores: generous bounds, strict conditions.
TIMEOUT = 20.0
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


# -- running an example ---------------------------------------------------------------------


@pytest.fixture
def guide() -> Iterator[ServerProcess]:
    """`wsrelay serve examples/guide/app.yaml` on a port the kernel picks;
    stopped with SIGTERM, which must exit 0."""
    with ServerProcess([WSRELAY, "serve", "examples/guide/app.yaml", "--addr", "127.0.0.1:0"]) as server:
        yield server
        code = server.stop()
        assert code == 0, server.output()


# -- clients ------------------------------------------------------------------------------------


async def http(target: Any, path: str, headers: Optional[dict[str, str]] = None,
               method: str = "GET", body: bytes = b"") -> HTTPResponse:
    """One request on a connection the server closes after its answer."""
    return await http_request(target, path, {"Connection": "close", **(headers or {})}, method=method, body=body,
                              timeout=TIMEOUT)


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


async def health(server: ServerProcess) -> dict[str, Any]:
    res = await http(server, "/health")
    assert res.status == 200, res.body
    return json.loads(res.body)


async def wait_for_processes(server: ServerProcess, count: int) -> None:
    """Until /health counts ``count`` processes. Polled, because the count is
    only visible from outside; the poll is the condition, not a delay."""
    async def poll() -> None:
        while (await health(server))["processes"] != count:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), TIMEOUT)


# -- the guide and its files ------------------------------------------------------------------


def _code_blocks(markdown: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```$", markdown, flags=re.M | re.S)


def test_every_code_block_of_the_guide_is_in_an_example_file():
    blocks = [(lang, code) for lang, code in _code_blocks(GUIDE.read_text()) if lang in ("python", "yaml")]
    assert len(blocks) >= 10, "the guide lost its examples"
    # By their paths in the repository; an empty file (a package's
    # __init__.py) has nothing to show.
    files = {path.relative_to(REPO).as_posix(): path.read_text() for folder in SHOWN
             for path in sorted(folder.iterdir()) if path.suffix in (".py", ".yaml") and path.stat().st_size}
    missing = [code for _, code in blocks if not any(code in text for text in files.values())]
    folders = " or ".join(f"{folder.relative_to(REPO).as_posix()}/" for folder in SHOWN)
    assert not missing, f"guide blocks that are in no file of {folders}:\n\n" + "\n---\n".join(missing)
    # And every example file is shown, at least in part, by the guide.
    guide = GUIDE.read_text()
    for name in files:
        assert name in guide, f"the guide never mentions {name}"


def test_check_command_accepts_the_guide_app():
    done = run_to_exit([WSRELAY, "check", "examples/guide/app.yaml"])
    assert done.returncode == 0, done.stderr
    assert "examples/guide/app.yaml: ok" in done.stdout


def test_a_bad_file_exits_non_zero_naming_the_entry(tmp_path: pathlib.Path):
    bad = tmp_path / "app.yaml"
    text = (EXAMPLES / "app.yaml").read_text().replace("func: session:handler", "func: session:nowhere")
    bad.write_text(text)
    for name in ("handlers.py", "session.py", "presence.py", "broadcast.py", "transfer.py", "rooms.py",
                 "lounge.py"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    done = run_to_exit([WSRELAY, "serve", bad, "--addr", "127.0.0.1:0"])
    assert done.returncode == 2
    # The message the guide shows.
    assert f"wsrelay: {bad}: entry 'app.ws:handler', field 'func': module 'session' has no 'nowhere'" \
        in done.stderr, done.stderr


# -- handlers ---------------------------------------------------------------------------------


async def test_plain_handler_and_the_answers_to_bad_requests(guide: ServerProcess):
    res = await http(guide, "/hello?name=Ada")
    assert (res.status, res.body) == (200, b"hello, Ada\n")
    assert res.headers["connection"] == "close"
    assert res.headers["content-type"] == "text/plain; charset=utf-8"

    assert (await http(guide, "/nowhere")).status == 404
    assert (await http(guide, "/hello", method="POST")).status == 400
    # A relay route asked without an upgrade: 426, before the handler runs.
    res = await http(guide, "/ws/session")
    assert res.status == 426 and res.headers["upgrade"] == "websocket"
    assert (await http(guide, "/ws/session", {**UPGRADE, "Connection": "keep-alive"})).status == 400
    assert (await http(guide, "/ws/session", {**UPGRADE, "Sec-WebSocket-Version": "8"})).status == 426
    res = await http(guide, "/ws/session", {**UPGRADE, "Origin": "https://evil.example"})
    assert res.status == 403 and b"not allowed" in res.body
    metrics = await scrape(guide)
    assert metrics("wsrelay_handshake_failures_total", reason="origin") == 1
    assert metrics("wsrelay_handshake_failures_total", reason="bad_upgrade") == 3
    assert (await health(guide))["processes"] == 1  # nothing was spawned


async def test_allowed_origins(guide: ServerProcess):
    for origin in ("https://app.example.com", "http://localhost:3000"):
        async with websockets.connect(guide.url("/ws/session?user_id=ada"), origin=origin) as ws:
            assert (await recv(ws))["event"] == "welcome"
    for origin in ("http://app.example.com", "https://localhost:3000", "https://app.example.com.evil.example"):
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(guide.url("/ws/session"), origin=origin):
                pass
        assert info.value.response.status_code == 403


@pytest.mark.parametrize("path, refusal, token, user, headers", [
    ("/ws/private", b"401 Unauthorized: unknown token\n", "s3cret", "ada", {"X-User": "ada"}),
    # The same, written as an async def handler awaiting its session store.
    ("/ws/account", b"401 Unauthorized: unknown session\n", "t-grace", "grace", {}),
], ids=["private", "account (async)"])
async def test_a_handler_refuses_with_an_ordinary_response(guide: ServerProcess, path, refusal, token, user,
                                                           headers):
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(guide.url(f"{path}?token=wrong")):
            pass
    assert info.value.response.status_code == 401
    assert info.value.response.body == refusal
    async with websockets.connect(guide.url(f"{path}?token={token}")) as ws:
        for name, value in headers.items():
            assert ws.response.headers[name] == value
        assert "X-WS-Relay" not in ws.response.headers
        assert await recv(ws) == {"event": "welcome", "user": user}


# -- the receive loop, sending, closing ------------------------------------------------------


async def test_session_receive_loop_send_text_binary_and_close(guide: ServerProcess):
    async with websockets.connect(guide.url("/ws/session?user_id=ada")) as ws:
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
    await wait_for_processes(guide, 2)


async def test_heartbeats(guide: ServerProcess):
    async with websockets.connect(guide.url("/ws/clock?user_id=ada")) as ws:
        await recv_until(ws, lambda m: m.get("event") == "online")
        first = await recv_until(ws, lambda m: m.get("event") == "tick")
        assert first["messages"] == 0 and first["uptime"] >= 0.5
        await ws.send(json.dumps({"op": "update"}))
        await recv_until(ws, lambda m: m.get("event") == "update")
        second = await recv_until(ws, lambda m: m.get("event") == "tick")
        assert second["messages"] == 1 and second["uptime"] >= first["uptime"] + 0.5


async def test_presence_monitors_connections(guide: ServerProcess):
    async with websockets.connect(guide.url("/ws/session?user_id=ada")) as ada:
        await recv_until(ada, lambda m: m == {"event": "online", "users": ["ada"]})
        async with websockets.connect(guide.url("/ws/session?user_id=bob")) as bob:
            await recv_until(bob, lambda m: m == {"event": "online", "users": ["ada", "bob"]})
            await recv_until(ada, lambda m: m == {"event": "online", "users": ["ada", "bob"]})
        # bob's connection ended: presence got EXIT for it.
        await recv_until(ada, lambda m: m == {"event": "online", "users": ["ada"]})


async def test_shutdown_closes_clients_with_1001():
    # `python -m wsrelay` is the same command.
    async with ServerProcess(serve_command("examples/guide/app.yaml", "--addr", "127.0.0.1:0")) as server:
        async with websockets.connect(server.url("/ws/lobby?user=ada")) as ws:
            assert (await recv(ws))["event"] == "lobby"
            server.signal(signal.SIGTERM)
            assert await closed(ws) == (1001, "server shutting down")
        code = await server.exited(START_TIMEOUT)
        assert code == 0, server.output()


# -- broadcasting and transfer -----------------------------------------------------------------


async def test_broadcast_with_a_set_of_clients(guide: ServerProcess):
    async with websockets.connect(guide.url("/ws/chat?user=ada")) as ada:
        assert await recv(ada) == {"event": "join", "user": "ada", "online": 1}
        async with websockets.connect(guide.url("/ws/chat?user=bob")) as bob:
            assert await recv(bob) == {"event": "join", "user": "bob", "online": 2}
            assert await recv(ada) == {"event": "join", "user": "bob", "online": 2}
            await bob.send("hi all")
            for ws in (ada, bob):
                assert await recv(ws) == {"event": "message", "user": "bob", "text": "hi all"}
        assert await recv(ada) == {"event": "leave", "user": "bob", "online": 1}


async def test_channels_granted_by_the_handler_and_published_by_a_process(guide: ServerProcess):
    def publication(data: Any) -> dict[str, Any]:
        return {"channel": "room:lobby", "event": "publication", "data": data}

    async with websockets.connect(guide.url("/ws/rooms?room=lobby&user=ada")) as ada:
        assert await recv(ada) == publication({"joined": "ada"})
        async with websockets.connect(guide.url("/ws/rooms?room=lobby&user=bob")) as bob:
            assert await recv(bob) == publication({"joined": "bob"})
            assert await recv(ada) == publication({"joined": "bob"})
            await bob.send("hi all")
            for ws in (ada, bob):
                assert await recv(ws) == publication({"user": "bob", "text": "hi all"})
            await ada.send("/leave room:lobby")
            assert await recv(ada) == {"channel": "room:lobby", "event": "unsubscribed"}
            await bob.send("still here?")
            assert await recv(bob) == publication({"user": "bob", "text": "still here?"})
            await ada.send("/leave no room")
            assert "not allowed" in await asyncio.wait_for(ada.recv(), TIMEOUT)
            # Subscribed by the process: ada hears the garden from now on.
            await ada.send("/join room:garden")
            await ada.send("/join no room")
            assert "not allowed" in await asyncio.wait_for(ada.recv(), TIMEOUT)
            async with websockets.connect(guide.url("/ws/rooms?room=garden&user=cy")) as cy:
                garden = {"channel": "room:garden", "event": "publication", "data": {"joined": "cy"}}
                assert await recv(cy) == garden
                assert await recv(ada) == garden
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(guide.url("/ws/rooms?room=a%20b")):
            pass
    assert info.value.response.status_code == 400


async def test_presence_in_the_lounge(guide: ServerProcess):
    def event(kind: str, client: str, user: str, mood: str) -> dict[str, Any]:
        return {"channel": "lounge:main", "event": kind,
                "info": {"client": client, "user": user, "info": {"mood": mood}}}

    async with websockets.connect(guide.url("/ws/lounge?user=ada&mood=sunny")) as ada:
        own = await recv(ada)
        assert own == event("join", own["info"]["client"], "ada", "sunny")  # its own join
        async with websockets.connect(guide.url("/ws/lounge?user=bob")) as bob:
            joined = await recv(bob)
            bob_pid = joined["info"]["client"]
            assert joined == event("join", bob_pid, "bob", "fine")
            assert await recv(ada) == joined
            async with websockets.connect(guide.url("/ws/lounge?user=bob")) as again:
                second = await recv(again)
                assert await recv(ada) == second == event("join", second["info"]["client"], "bob", "fine")
                await ada.send("/who")
                assert await recv_until(ada, lambda m: "online" in m) == {"online": ["ada", "bob"], "connections": 3}
            assert await recv(ada) == event("leave", second["info"]["client"], "bob", "fine")
        assert await recv(ada) == event("leave", bob_pid, "bob", "fine")


async def test_transfer_from_lobby_to_a_room(guide: ServerProcess):
    async with websockets.connect(guide.url("/ws/lobby?user=ada")) as ada:
        assert (await recv(ada))["event"] == "lobby"
        await ada.send("not a room!")
        assert (await recv(ada))["event"] == "error"
        await ada.send("kitchen")
        assert await recv(ada) == {"event": "join", "room": "kitchen", "user": "ada", "members": 1}
        async with websockets.connect(guide.url("/ws/lobby?user=bob")) as bob:
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
    await wait_for_processes(guide, 1)
    async with websockets.connect(guide.url("/ws/lobby?user=cy")) as cy:
        await recv(cy)
        await cy.send("kitchen")
        assert await recv(cy) == {"event": "join", "room": "kitchen", "user": "cy", "members": 1}


# -- the examples that are programs --------------------------------------------------------------


def test_processes_script():
    with ServerProcess([sys.executable, "examples/guide/processes.py"], env={"WSRELAY_MAILBOX_CAPACITY": "16"},
                       ready=None) as program:
        code = program.wait(START_TIMEOUT)
    assert code == 0, program.output()
    assert program.stdout == [
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
        "put: ok",
        "get: blue",
        "no reply within 0.1 s",
        "CallError: error RuntimeError('kv failed')",
        "CallError: noproc",
        "mailbox full after 16 messages; capacity 16",
    ], program.output()


async def test_python_app_is_the_yaml_app():
    async with ServerProcess([sys.executable, "examples/guide/python_app.py", "127.0.0.1:0"]) as server:
        res = await http(server, "/hello?name=Py")
        assert (res.status, res.body) == (200, b"hello, Py\n")
        async with websockets.connect(server.url("/ws/session?user_id=ada")) as ws:
            assert await recv(ws) == {"event": "welcome", "user": "ada"}
            await ws.send(json.dumps({"op": "update"}))
            assert await recv_until(ws, lambda m: m.get("event") == "update") == {"event": "update", "value": 42}
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(server.url("/ws/chat"), origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403
        code = await server.stopped()
    assert code == 0, server.output()


async def test_with_aiohttp_api_reaches_websocket_clients():
    async with ServerProcess([sys.executable, "examples/guide/with_aiohttp.py", "127.0.0.1:0", "127.0.0.1:0"],
                             ready=r"websockets on ws://(127\.0\.0\.1):(\d+)/ws") as server:
        api = ("127.0.0.1", int(server.wait_line(r"api on http://127\.0\.0\.1:(\d+)/api").group(1)))
        async with websockets.connect(server.url("/ws/lobby?user=ada")) as ws:
            assert (await recv(ws))["event"] == "lobby"
            await ws.send("garden")
            assert (await recv(ws))["event"] == "join"

            res = await http(api, "/api/rooms")
            assert (res.status, json.loads(res.body)) == (200, {"rooms": ["garden"]})
            announce = json.dumps({"text": "lunch is ready"}).encode()
            json_type = {"Content-Type": "application/json"}
            res = await http(api, "/api/rooms/garden/announce", json_type, "POST", announce)
            assert (res.status, json.loads(res.body)) == (200, {"room": "garden", "sent": True})
            assert await recv(ws) == {"event": "announce", "room": "garden", "text": "lunch is ready"}

            assert (await http(api, "/api/rooms/nowhere/announce", json_type, "POST", announce)).status == 404
            assert (await http(api, "/api/rooms/garden/announce", json_type, "POST", b"[1]")).status == 400
        code = await server.stopped()
    assert code == 0, server.output()
