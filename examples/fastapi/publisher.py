"""FastAPI in a process of its own, publishing to the chat demo's rooms
through wsrelay's server API with ``wsrelay.client.AsyncClient``
(docs/guide.md, "Publishing from your application"). Unlike main.py, it
shares nothing with the gateway: it could run on another machine.

    WSRELAY_API_KEY=secret make run                                   # the chat demo, its API on
    WSRELAY_API_KEY=secret python examples/fastapi/publisher.py [ADDR]

ADDR (default 127.0.0.1:8001) serves the API; WSRELAY_URL (default
http://127.0.0.1:8080) names the gateway. SIGTERM or SIGINT stops it, exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import AsyncIterator

import uvicorn
from fastapi import FastAPI, HTTPException, Path, Request
from pydantic import BaseModel, Field

from wsrelay.client import APIError, AsyncClient


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client for the app's life: it keeps its connection to wsrelay
    # open from one request to the next.
    url = os.environ.get("WSRELAY_URL", "http://127.0.0.1:8080")
    async with AsyncClient(url, os.environ["WSRELAY_API_KEY"]) as relay:
        app.state.relay = relay
        yield


api = FastAPI(title="announcements", lifespan=lifespan)
# The chat demo's room names (examples/chat/chat.py).
Room = Path(pattern=r"^[A-Za-z0-9_]{1,64}$")


class Announcement(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


@api.post("/rooms/{room}/announcements")
async def announce(request: Request, body: Announcement, room: str = Room) -> dict:
    """POST /rooms/{room}/announcements {"text": ...}: to everyone in the
    room, shown by the chat page as a message."""
    data = {"kind": "message", "user": "announcer", "text": body.text}
    try:
        await request.app.state.relay.publish(f"room:{room}", data)
    except APIError as exc:
        raise HTTPException(502, f"wsrelay answered {exc.code}: {exc.message}") from None
    return {"room": room, "announced": True}


@api.get("/rooms")
async def rooms(request: Request) -> dict:
    """GET /rooms: the rooms with someone in them, and how many sockets each."""
    try:
        answer = await request.app.state.relay.channels(pattern="room:*")
    except APIError as exc:
        raise HTTPException(502, f"wsrelay answered {exc.code}: {exc.message}") from None
    return {"rooms": {name.removeprefix("room:"): channel["subscribers"]
                      for name, channel in answer["channels"].items()}}


def main(addr: str = "127.0.0.1:8001") -> None:
    # Bound here, so that its address (a port of 0: the kernel's pick) is
    # known and printed before uvicorn starts.
    host, _, port = addr.rpartition(":")
    sock = socket.create_server((host, int(port)))
    print("publisher on http://{}:{}".format(*sock.getsockname()[:2]), flush=True)
    # uvicorn takes SIGTERM and SIGINT while it serves and, once it has
    # stopped, raises them again to the handlers it found: these end the
    # program with status 0 rather than by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    uvicorn.Server(uvicorn.Config(api, log_level="info")).run(sockets=[sock])


if __name__ == "__main__":
    main(*sys.argv[1:2])
