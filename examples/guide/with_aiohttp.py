"""wsrelay next to a full HTTP framework (docs/guide.md, "Pairing with an
HTTP framework"): the guide's app.yaml serves the WebSockets, aiohttp serves
the rest of the API on another port, in the same process and event loop, so
its handlers can address wsrelay processes directly.

    .venv/bin/python examples/guide/with_aiohttp.py [WS_ADDR [API_ADDR]]

A reverse proxy in front routes /ws/ to WS_ADDR and everything else to
API_ADDR (see the guide).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
import sys

import uvloop
from aiohttp import web

import wsrelay
from wsrelay import Gateway, process
from wsrelay.app import parse_addr
from wsrelay.config import load_app

APP_FILE = pathlib.Path(__file__).with_name("app.yaml")


async def list_rooms(request: web.Request) -> web.Response:
    """GET /api/rooms: the rooms that have a process now."""
    names = process.registry.names()
    rooms = sorted(name.removeprefix("room:") for name in names if name.startswith("room:"))
    return web.json_response({"rooms": rooms})


async def announce(request: web.Request) -> web.Response:
    """POST /api/rooms/{room}/announce {"text": ...}: to every client in a room.

    Code outside any process acts as the node's system process: it may send
    to any process by PID or by name.
    """
    room = request.match_info["room"]
    body = await request.json()
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise web.HTTPBadRequest(text='send {"text": "..."}')
    if not process.send(f"room:{room}", "announce", text):
        raise web.HTTPNotFound(text=f"no room {room!r}")
    return web.json_response({"room": room, "sent": True})


def api() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_post("/api/rooms/{room}/announce", announce)
    return app


async def serve(ws_addr="127.0.0.1:8080", api_addr="127.0.0.1:8081"):
    gateway = Gateway(load_app(str(APP_FILE)), addr=ws_addr)
    await gateway.start()
    runner = web.AppRunner(api())
    await runner.setup()
    host, port = parse_addr(api_addr)
    site = web.TCPSite(runner, host, port)
    await site.start()
    api_host, api_port = runner.addresses[0][:2]
    print("websockets on", gateway.url("/ws"), flush=True)
    print(f"api on http://{api_host}:{api_port}/api", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    await runner.cleanup()
    await gateway.shutdown()
    wsrelay.node().terminate_all("shutdown")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvloop.run(serve(*sys.argv[1:3]))
