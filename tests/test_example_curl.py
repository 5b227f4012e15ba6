"""examples/curl/publish.sh, run as its header says, against the chat demo
(`wsrelay serve examples/chat/app.yaml` with WSRELAY_API_KEY): what each
call answers, and what the demo's sockets receive.

Nothing sleeps: every wait is for a line a process prints, a frame or the
end of a process, with a generous upper bound.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any, Callable, Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.harness import WSRELAY, ServerProcess

# The machine has 2 shared cores: generous bounds, strict conditions.
TIMEOUT = 20.0
KEY = "curl-example-key"
SCRIPT = "examples/curl/publish.sh"


@pytest.fixture(autouse=True)
def _curl_installed() -> None:
    # The script is curl; without it this test says nothing, and says so.
    if shutil.which("curl") is None:
        pytest.fail("curl is missing: apt-get install curl")


@pytest.fixture
def demo() -> Iterator[ServerProcess]:
    """The chat demo with its server API on; SIGTERM must exit 0."""
    command = [WSRELAY, "serve", "examples/chat/app.yaml", "--addr", "127.0.0.1:0"]
    with ServerProcess(command, env={"WSRELAY_API_KEY": KEY}) as server:
        yield server
        code = server.stop()
        assert code == 0, server.output()


async def run_script(demo: ServerProcess, *args: str, key: str = KEY) -> ServerProcess:
    """`sh examples/curl/publish.sh ARGS`, to its end: the process, its
    output complete."""
    script = ServerProcess(["sh", SCRIPT, *args], env={"WSRELAY_URL": demo.url("", "http"), "WSRELAY_API_KEY": key},
                           ready=None)
    try:
        await script.exited(TIMEOUT)
    finally:
        script.kill()
    return script


def join(demo: ServerProcess, room: str, user: str) -> Any:
    return websockets.connect(demo.url(f"/ws/chat?room={room}&user={user}"), open_timeout=TIMEOUT)


async def recv_until(ws: Any, condition: Callable[[dict], bool]) -> dict:
    """Read the room's publications until one satisfies ``condition``; that
    one. The rest of what the demo sends, the room's join and leave events
    and the online list a socket is sent as it joins, is not checked here."""
    async def read() -> dict:
        while True:
            event = json.loads(await ws.recv())
            if event.get("event") == "publication" and condition(event):
                return event

    return await asyncio.wait_for(read(), TIMEOUT)


def said(channel: str, text: str, position: dict) -> dict:
    """The publication of ``text`` to ``channel`` at ``position`` (the API's answer: offset and epoch)."""
    return {"channel": channel, "event": "publication", "data": {"kind": "message", "user": "curl", "text": text},
            **position}


def by_curl(event: dict) -> bool:
    return event["data"].get("user") == "curl"


async def test_publish_broadcast_channels_and_disconnect(demo: ServerProcess):
    async with join(demo, "lobby", "ann") as ann, join(demo, "garden", "bob") as bob, \
            join(demo, "lobby", "zed") as zed:
        # Each has seen its own arrival: all three are subscribed.
        for ws, user in ((ann, "ann"), (bob, "bob"), (zed, "zed")):
            await recv_until(ws, lambda e, user=user: (e["data"]["kind"], e["data"]["user"]) == ("join", user))

        script = await run_script(demo, "zed")
        assert script.returncode == 0, script.output()
        publish, broadcast, channels, disconnect = (json.loads(line) for line in script.stdout)
        # The demo's rooms keep history: each publication's position is its answer.
        hello = publish["result"]
        assert set(hello) == {"offset", "epoch"}, publish
        lobby, garden = broadcast["result"]
        assert lobby["epoch"] == hello["epoch"] and lobby["offset"] == hello["offset"] + 1, broadcast
        assert channels == {"result": {"channels": {"room:lobby": {"subscribers": 2},
                                                    "room:garden": {"subscribers": 1}}}}
        assert disconnect == {"result": {"closed": 1}}

        for ws in (ann, zed):
            assert await recv_until(ws, by_curl) == said("room:lobby", "hello from curl", hello)
            assert await recv_until(ws, by_curl) == said("room:lobby", "to every room", lobby)
        assert await recv_until(bob, by_curl) == said("room:garden", "to every room", garden)

        with pytest.raises(ConnectionClosed) as closed:
            await recv_until(zed, lambda e: False)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "disconnected with curl")
        # The demo's process tells the lobby, as for any socket that goes.
        left = await recv_until(ann, lambda e: e["data"]["kind"] == "leave")
        assert left["data"] == {"kind": "leave", "user": "zed"}


async def test_a_wrong_key_stops_the_script_at_the_first_call(demo: ServerProcess):
    async with join(demo, "lobby", "ann") as ann:
        await recv_until(ann, lambda e: e["data"]["kind"] == "join")
        script = await run_script(demo, key="not-the-key")
        # curl --fail-with-body: exit 22 on an HTTP error, the answer printed.
        assert script.returncode == 22, script.output()
        assert len(script.stdout) == 1, script.output()
        assert json.loads(script.stdout[0])["error"]["code"] == "unauthorized"
        # Nothing was published: the next publication ann gets is what she says herself.
        await ann.send("still here")
        event = await recv_until(ann, lambda e: True)
        assert event["data"] == {"kind": "message", "user": "ann", "text": "still here"}


async def test_without_a_key_the_script_says_so(demo: ServerProcess):
    script = await run_script(demo, key="")
    assert script.returncode != 0
    assert "set WSRELAY_API_KEY" in script.text("stderr"), script.output()
    assert script.stdout == []
