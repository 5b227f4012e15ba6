"""The relay end to end: a client, a handler that spawns a room, the room
echoing through ws.send."""

import websockets

from tests.apps import relay_app, relay_handler
from tests.harness import running
from wsrelay import process


async def test_message_reaches_the_target_and_the_reply_reaches_the_client():
    observer = process.self()
    app = relay_app(relay_handler("relay:tagged_echo", observer, metadata={"user": "bob"}))
    async with running(app) as gw:
        async with websockets.connect(gw.url("/ws/chat")) as ws:
            join = await process.inbox().receive(timeout=5)
            assert join.topic == "ws.join"
            client = join.payload["client_pid"]
            assert join.payload["metadata"] == {"user": "bob"}
            assert client.host == "test:gateway"
            await ws.send("hello")
            assert await ws.recv() == "echo:hello"
        leave = await process.inbox().receive(timeout=5)
        assert leave.topic == "ws.leave"
        assert leave.payload == {"client_pid": client, "metadata": {"user": "bob"},
                                 "reason": "client_closed", "code": 1000}
