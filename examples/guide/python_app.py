"""The application of app.yaml, said in Python (docs/guide.md, "The same
application in Python"), and run without the ``wsrelay`` command:

    .venv/bin/python examples/guide/python_app.py [ADDR]
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import broadcast
import handlers
import presence
import session
import transfer
import uvloop

import wsrelay
from wsrelay import App, Gateway


def build_app() -> App:
    app = App("app")  # the namespace of every id below without one
    app.service("gateway", "127.0.0.1:8080")
    app.process_host("processes")

    web = app.router("web_router", "gateway")
    web.endpoint("GET", "/hello", handlers.hello)

    ws = app.router(
        "ws_router", "gateway", prefix="/ws",
        post_middleware=["websocket_relay"],
        post_options={"wsrelay.allowed.origins": "https://app.example.com, http://localhost:*"},
    )
    ws.endpoint("GET", "/session", handlers.handler)
    ws.endpoint("GET", "/clock", handlers.clock)
    ws.endpoint("GET", "/private", handlers.private)
    ws.endpoint("GET", "/chat", broadcast.endpoint)
    ws.endpoint("GET", "/lobby", transfer.endpoint)

    app.process_function("app.ws:handler", session.handler)
    app.process_function("app.ws:presence", presence.presence)
    app.process_function("app.ws:chat", broadcast.chat)
    app.process_function("app.ws:lobby", transfer.lobby)
    app.process_function("app.ws:room", transfer.room)
    return app


async def serve(addr=None):
    gateway = Gateway(build_app(), addr=addr)  # addr overrides the service's
    await gateway.start()
    print("serving", gateway.url("", scheme="http"), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Close every connection with 1001 (targets get ws.leave, reason
    # "shutdown"), wait for them up to WSRELAY_DRAIN_TIMEOUT, then end the
    # processes that are left.
    await gateway.shutdown()
    wsrelay.node().terminate_all("shutdown")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvloop.run(serve(sys.argv[1] if len(sys.argv) > 1 else None))
