"""python-socketio as its docs set it up behind more than one process: an
``AsyncServer`` with an ``AsyncRedisManager`` on the redis-server of the
publish scenario (``BENCH_REDIS_URL``), as an ASGI app that uvicorn serves
(``bench.servers.socketio_server:app``). Every client joins room ``bench``
on connect; a publisher (``bench.servers.socketio_publish``) emits to the
room from another process through Redis."""

from __future__ import annotations

import os
from typing import Any

import socketio

ROOM = "bench"

sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")),
)
app = socketio.ASGIApp(sio)


@sio.event
async def connect(sid: str, environ: dict[str, Any]) -> None:
    await sio.enter_room(sid, ROOM)
