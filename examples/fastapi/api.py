"""The HTTP API, served by FastAPI on uvicorn in the gateway's event loop:
a login that issues tokens, and endpoints that post to a room and ask who is
in it, by talking to the room's process.

- ``async def`` endpoints run on the event loop's thread, which is the
  runtime's: they call the process API directly, ``await process.call``
  included.
- ``def`` endpoints run in FastAPI's thread pool, where they may block (a
  synchronous database driver, say); the runtime is not theirs, so they go
  through ``wsrelay.threads``, which hands the call to the loop and waits.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from rooms import room_name
from sessions import sessions

import wsrelay
from wsrelay import CallError, MailboxFull, process

api = FastAPI(title="chat")


class Login(BaseModel):
    user: str = Field(min_length=1, max_length=32)


class Text(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


async def current_user(authorization: str = Header("")) -> str:
    """The user of the request's ``Authorization: Bearer TOKEN``; 401 without one."""
    scheme, _, token = authorization.partition(" ")
    user = await sessions.user(token) if scheme.lower() == "bearer" else None
    if user is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return user


@api.post("/sessions")
async def login(body: Login) -> dict:
    """POST /sessions {"user": "ada"}: a token, for this API (Authorization:
    Bearer) and for the WebSocket (?token=)."""
    return {"token": await sessions.create(body.user)}


@api.post("/rooms/{room}/messages")
async def post_message(room: str, body: Text, user: str = Depends(current_user)) -> dict:
    """POST /rooms/{room}/messages {"text": ...}: to everyone in the room."""
    try:
        queued = process.send(room_name(room), "post", {"from": user, "text": body.text})
    except MailboxFull:
        raise HTTPException(503, f"room {room!r} is busy: try again") from None
    if not queued:
        raise HTTPException(404, f"nobody has joined room {room!r}")
    return {"room": room, "sent": True}


@api.get("/rooms/{room}/online")
async def who_is_online(room: str) -> dict:
    """GET /rooms/{room}/online: the users connected to the room, as its
    process answers the call."""
    try:
        users = await process.call(room_name(room), "online", timeout=5.0)
    except CallError:
        users = []  # no process holds the name: nobody has joined the room
    return {"room": room, "online": users}


@api.post("/rooms/{room}/notices")
def post_notice(room: str, body: Text, user: str = Depends(current_user)) -> dict:
    """POST /rooms/{room}/notices {"text": ...}: a notice to everyone in the
    room, from a def endpoint (a worker thread of FastAPI's pool), and who
    it reached."""
    try:
        queued = wsrelay.threads.send(room_name(room), "notice", {"by": user, "text": body.text}, timeout=5.0)
    except MailboxFull:
        raise HTTPException(503, f"room {room!r} is busy: try again") from None
    if not queued:
        raise HTTPException(404, f"nobody has joined room {room!r}")
    # A call, awaited on the loop; the room takes it after the notice.
    reached = wsrelay.threads.call(process.call, room_name(room), "online")
    return {"room": room, "sent": True, "to": reached}
