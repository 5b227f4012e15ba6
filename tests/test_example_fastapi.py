"""examples/fastapi, run as its README says: `python examples/fastapi/main.py`
in a child process, FastAPI on uvicorn and the wsrelay gateway in its one
event loop. Real WebSocket clients on the gateway's port, real HTTP requests
(httpx) on the API's. Then `python examples/fastapi/publisher.py`, FastAPI
in a process of its own publishing to the chat demo's rooms through the
server API (wsrelay.client.AsyncClient).

Nothing sleeps: every wait is for a line the example prints, a frame, an
HTTP answer or the end of the process, with a generous upper bound.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any, Callable, Iterator

import httpx
import psutil
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.harness import WSRELAY, ServerProcess

# The machine has 2 shared cores: generous bounds, strict conditions.
TIMEOUT = 20.0
COMMAND = [sys.executable, "examples/fastapi/main.py", "127.0.0.1:0", "127.0.0.1:0"]
# The example's last line at start, once both sides listen.
READY = r"api on http://(127\.0\.0\.1):(\d+)$"


class Example:
    """The running example: where its two sides listen."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.api = f"http://{server.host}:{server.port}"
        self.ws = server.wait_line(r"websockets on (ws://127\.0\.0\.1:\d+/ws/chat)$").group(1)
        host, _, port = self.ws.removeprefix("ws://").partition("/")[0].partition(":")
        self.gateway = (host, int(port))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api, timeout=TIMEOUT)

    async def login(self, user: str) -> str:
        async with self.client() as http:
            res = await http.post("/sessions", json={"user": user})
        assert res.status_code == 200, res.text
        return res.json()["token"]

    def connect(self, room: str, token: str) -> Any:
        return websockets.connect(f"{self.ws}?room={room}&token={token}", open_timeout=TIMEOUT)

    async def online(self, room: str) -> list[str]:
        async with self.client() as http:
            res = await http.get(f"/rooms/{room}/online")
        assert res.status_code == 200, res.text
        assert res.json()["room"] == room
        return res.json()["online"]


def start() -> ServerProcess:
    return ServerProcess(COMMAND, ready=READY)


@pytest.fixture(scope="module")
def example() -> Iterator[Example]:
    """One running example for the tests of this file (each uses rooms and
    users of its own); SIGTERM at the end must exit 0."""
    with start() as server:
        yield Example(server)
        code = server.stop()
        assert code == 0, server.output()


async def recv_until(ws: Any, condition: Callable[[dict], bool]) -> dict:
    """Read events until one satisfies ``condition``; that one."""
    async def read() -> dict:
        while True:
            event = json.loads(await ws.recv())
            if condition(event):
                return event

    return await asyncio.wait_for(read(), TIMEOUT)


async def joined(ws: Any, user: str) -> dict:
    """The room's join event of ``user``, as ``ws`` receives it."""
    return await recv_until(ws, lambda e: e["event"] == "join" and e["user"] == user)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_post_reaches_the_clients_of_its_room_and_no_other(example: Example):
    ada, bob, cy = [await example.login(user) for user in ("ada", "bob", "cy")]
    async with example.connect("garden", ada) as ws_ada, example.connect("garden", bob) as ws_bob, \
            example.connect("kitchen", cy) as ws_cy:
        await joined(ws_ada, "bob")
        await joined(ws_bob, "bob")
        assert (await joined(ws_cy, "cy"))["online"] == ["cy"]

        async with example.client() as http:
            res = await http.post("/rooms/garden/messages", json={"text": "lunch is ready"}, headers=bearer(ada))
            assert (res.status_code, res.json()) == (200, {"room": "garden", "sent": True})
            message = {"event": "message", "room": "garden", "from": "ada", "text": "lunch is ready"}
            assert await recv_until(ws_ada, lambda e: e["event"] == "message") == message
            assert await recv_until(ws_bob, lambda e: e["event"] == "message") == message

            # The garden's broadcast is written: had cy been sent it, it
            # would come before anything the kitchen sends after it.
            res = await http.post("/rooms/kitchen/messages", json={"text": "who took my spoon"}, headers=bearer(bob))
            assert res.status_code == 200, res.text
            assert json.loads(await asyncio.wait_for(ws_cy.recv(), TIMEOUT)) == \
                {"event": "message", "room": "kitchen", "from": "bob", "text": "who took my spoon"}

            # What a client says goes to its room through the same process.
            await ws_bob.send("coming")
            said = {"event": "message", "room": "garden", "from": "bob", "text": "coming"}
            assert await recv_until(ws_ada, lambda e: e["event"] == "message") == said

            res = await http.post("/rooms/nowhere/messages", json={"text": "hello?"}, headers=bearer(ada))
            assert res.status_code == 404, res.text
            res = await http.post("/rooms/garden/messages", json={"text": "hi"}, headers=bearer("forged"))
            assert res.status_code == 401, res.text
            res = await http.post("/rooms/garden/messages", json={"text": ""}, headers=bearer(ada))
            assert res.status_code == 422, res.text


async def test_the_online_list_follows_the_connections(example: Example):
    ann, ben = await example.login("ann"), await example.login("ben")
    assert await example.online("porch") == []  # nobody has joined it yet
    async with example.connect("porch", ann) as ws_ann:
        await joined(ws_ann, "ann")
        assert await example.online("porch") == ["ann"]
        async with example.connect("porch", ben) as ws_ben:
            await joined(ws_ben, "ben")
            await joined(ws_ann, "ben")
            assert await example.online("porch") == ["ann", "ben"]
        # ben's client closed: the room says so to those who are left.
        left = await recv_until(ws_ann, lambda e: e["event"] == "leave")
        assert (left["user"], left["online"]) == ("ben", ["ann"])
        assert await example.online("porch") == ["ann"]


async def test_a_def_endpoint_reaches_the_clients_through_wsrelay_threads(example: Example):
    dee = await example.login("dee")
    async with example.connect("attic", dee) as ws:
        await joined(ws, "dee")
        async with example.client() as http:
            res = await http.post("/rooms/attic/notices", json={"text": "the lift is out"}, headers=bearer(dee))
            assert (res.status_code, res.json()) == (200, {"room": "attic", "sent": True, "to": ["dee"]})
            assert await recv_until(ws, lambda e: e["event"] == "notice") == \
                {"event": "notice", "room": "attic", "by": "dee", "text": "the lift is out"}
            # wsrelay.threads.send's False, said by the def endpoint.
            res = await http.post("/rooms/cellar/notices", json={"text": "anyone?"}, headers=bearer(dee))
            assert res.status_code == 404, res.text


async def test_the_websocket_endpoint_refuses_an_unknown_token(example: Example):
    for token in ("forged", ""):
        with pytest.raises(InvalidStatus) as refused:
            async with example.connect("vault", token):
                pass
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
    eve = await example.login("eve")
    with pytest.raises(InvalidStatus) as refused:
        async with example.connect("Not A Room", eve):
            pass
    assert refused.value.response.status_code == 400
    # A refused connection started no room: no process holds the name.
    async with example.client() as http:
        res = await http.post("/rooms/vault/messages", json={"text": "anyone?"}, headers=bearer(eve))
    assert res.status_code == 404, res.text


def refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_sigterm_closes_the_websockets_and_exits_0_leaving_nothing():
    async with start() as server:
        example = Example(server)
        api = (server.host, server.port)
        token = await example.login("fay")
        async with example.connect("hall", token) as ws:
            await joined(ws, "fay")
            # One process, no child: nothing can outlive it.
            assert psutil.Process(server.pid).children(recursive=True) == []
            server.signal()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        code = await server.exited()
    assert code == 0, server.output()
    assert "Traceback" not in server.text("stderr"), server.output()
    assert refused(api) and refused(example.gateway)


# -- publisher.py: a FastAPI process of its own, publishing through the server API ------------

PUBLISHER_KEY = "fastapi-publisher-key"
PUBLISHER_READY = r"publisher on http://(127\.0\.0\.1):(\d+)$"


def chat_demo() -> ServerProcess:
    """The chat demo, its server API on (`WSRELAY_API_KEY=... make run`)."""
    return ServerProcess([WSRELAY, "serve", "examples/chat/app.yaml", "--addr", "127.0.0.1:0"],
                         env={"WSRELAY_API_KEY": PUBLISHER_KEY})


def publisher(demo: ServerProcess, key: str = PUBLISHER_KEY) -> ServerProcess:
    """`python examples/fastapi/publisher.py 127.0.0.1:0`, pointed at ``demo``."""
    return ServerProcess([sys.executable, "examples/fastapi/publisher.py", "127.0.0.1:0"],
                         env={"WSRELAY_URL": demo.url("", "http"), "WSRELAY_API_KEY": key},
                         ready=PUBLISHER_READY)


def publication(event: dict) -> bool:
    """One of the chat room's publications: not its join and leave events,
    nor the online list the demo sends a socket as it joins."""
    return event.get("event") == "publication"


async def own_arrival(ws: Any, user: str) -> None:
    """Until ``ws`` has seen its own join in its room: it is subscribed."""
    await recv_until(ws, lambda e: publication(e) and e["data"].get("kind") == "join" and e["data"]["user"] == user)


def announced(room: str, text: str) -> dict:
    return {"channel": f"room:{room}", "event": "publication",
            "data": {"kind": "message", "user": "announcer", "text": text}}


def by_announcer(event: dict) -> bool:
    return publication(event) and event["data"].get("user") == "announcer"


def position(event: dict) -> tuple[int, str]:
    """Where a publication stands in its room's history (the demo's rooms keep one),
    taken out of ``event``."""
    return event.pop("offset"), event.pop("epoch")


async def test_a_fastapi_process_of_its_own_publishes_to_the_chat_demos_rooms():
    async with chat_demo() as demo, publisher(demo) as api:
        def join(room: str, user: str) -> Any:
            return websockets.connect(demo.url(f"/ws/chat?room={room}&user={user}"), open_timeout=TIMEOUT)

        async with join("garden", "ada") as ada, join("garden", "bob") as bob, join("kitchen", "cy") as cy, \
                httpx.AsyncClient(base_url=f"http://{api.host}:{api.port}", timeout=TIMEOUT) as http:
            for ws, user in ((ada, "ada"), (bob, "bob"), (cy, "cy")):
                await own_arrival(ws, user)
            res = await http.get("/rooms")
            assert (res.status_code, res.json()) == (200, {"rooms": {"garden": 2, "kitchen": 1}})

            res = await http.post("/rooms/garden/announcements", json={"text": "lunch is ready"})
            assert (res.status_code, res.json()) == (200, {"room": "garden", "announced": True})
            seen = [await recv_until(ws, by_announcer) for ws in (ada, bob)]
            # One publication: the same position in the room's history for both.
            assert position(seen[0]) == position(seen[1])
            assert seen == [announced("garden", "lunch is ready")] * 2
            # The garden's publication is made: had cy been sent it, it
            # would come before the kitchen's, made after it by the same client.
            res = await http.post("/rooms/kitchen/announcements", json={"text": "who took my spoon"})
            assert res.status_code == 200, res.text
            kitchen = await recv_until(cy, by_announcer)
            position(kitchen)
            assert kitchen == announced("kitchen", "who took my spoon")

            # Refused by FastAPI's validation, before anything is published.
            assert (await http.post("/rooms/Not A Room/announcements", json={"text": "x"})).status_code == 422
            assert (await http.post("/rooms/garden/announcements", json={"text": ""})).status_code == 422

        assert await api.stopped() == 0, api.output()

        # wsrelay's refusal, named in a 502.
        async with publisher(demo, key="not-the-key") as api, \
                httpx.AsyncClient(base_url=f"http://{api.host}:{api.port}", timeout=TIMEOUT) as http:
            for res in (await http.post("/rooms/garden/announcements", json={"text": "x"}), await http.get("/rooms")):
                assert res.status_code == 502, res.text
                assert "unauthorized" in res.json()["detail"], res.text
        assert await demo.stopped() == 0, demo.output()
