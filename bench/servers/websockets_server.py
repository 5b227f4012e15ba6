"""The websockets library (asyncio implementation) on uvloop: /echo echoes,
/pub fans out with websockets.broadcast() to the /sub connections."""

from __future__ import annotations

import asyncio
import os
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.servers import run_server

SUBSCRIBERS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path.split("?", 1)[0]
    if path == "/echo":
        async for message in ws:
            await ws.send(message)
    elif path == "/sub":
        SUBSCRIBERS.add(ws)
        try:
            await ws.wait_closed()
        finally:
            SUBSCRIBERS.discard(ws)
    elif path == "/pub":
        async for message in ws:
            broadcast(SUBSCRIBERS, message)
    else:
        await ws.close(1008, "unknown path")


async def main(host: str, port: int) -> None:
    # Compression off unless BENCH_COMPRESSION=on (the websockets+deflate
    # variant: "deflate" with websockets' own defaults). Backlog raised like
    # every server here.
    compression = "deflate" if os.environ.get("BENCH_COMPRESSION") == "on" else None
    async with serve(handler, host, port, compression=compression, backlog=4096, reuse_address=True) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        print(f"ready {host}:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    run_server(main)
