"""aiohttp's WebSocket server on uvloop: /echo echoes with send_str /
send_bytes; /pub sends each message to every /sub connection in a loop."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import WSMsgType, web

from bench.servers import run_server

SUBSCRIBERS: set[web.WebSocketResponse] = set()
# aiohttp's compress=True (its default) with BENCH_COMPRESSION=on, the
# aiohttp+deflate variant; off otherwise, as the load generator offers
# compression to the variant alone.
COMPRESS = os.environ.get("BENCH_COMPRESSION") == "on"


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=COMPRESS)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def sub(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=COMPRESS)
    await ws.prepare(request)
    SUBSCRIBERS.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        SUBSCRIBERS.discard(ws)
    return ws


async def pub(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=COMPRESS)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            for s in list(SUBSCRIBERS):
                if not s.closed:
                    await s.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            for s in list(SUBSCRIBERS):
                if not s.closed:
                    await s.send_bytes(msg.data)
    return ws


async def main(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/sub", sub)
    app.router.add_get("/pub", pub)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"ready {host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    run_server(main)
