"""A chat service: FastAPI on uvicorn for the HTTP API and wsrelay for the
WebSockets, in one process and one event loop (docs/guide.md, section 11),
so that the API's endpoints talk to the rooms' processes directly.

    pip install fastapi uvicorn
    python examples/fastapi/main.py [WS_ADDR [API_ADDR]]

WS_ADDR (default 127.0.0.1:8080) serves ws://WS_ADDR/ws/chat, API_ADDR
(default 127.0.0.1:8000) the API; README.md beside this file walks through
them. SIGTERM or SIGINT stops both and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import uvicorn
import uvloop
from api import api
from rooms import build_app

import wsrelay
from wsrelay import Gateway
from wsrelay.app import parse_addr


async def serve(ws_addr="127.0.0.1:8080", api_addr="127.0.0.1:8000"):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # uvicorn takes these while it serves, and raises them again once it
        # has stopped, to the handlers it found: this one sees them either way.
        loop.add_signal_handler(sig, stop.set)

    # The gateway binds wsrelay's runtime to this loop's thread, and points
    # wsrelay.threads at this loop for the API's def endpoints.
    gateway = Gateway(build_app(ws_addr))
    await gateway.start()

    # uvicorn serves on the running loop (loop="none": it sets up none of
    # its own), from a socket bound here so that its address is known now.
    host, port = parse_addr(api_addr)
    sock = socket.create_server((host, port))
    config = uvicorn.Config(api, loop="none", log_level="info", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    print("websockets on", gateway.url("/ws/chat"), flush=True)
    print("api on http://{}:{}".format(*sock.getsockname()[:2]), flush=True)

    await stop.wait()
    # The API first: it stops accepting and finishes the requests in flight,
    # which may still talk to the rooms. Then every WebSocket is closed with
    # 1001 and the rooms end.
    server.should_exit = True
    await serving
    await gateway.shutdown()
    wsrelay.node().terminate_all("shutdown")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvloop.run(serve(*sys.argv[1:3]))
