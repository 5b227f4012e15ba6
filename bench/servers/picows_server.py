"""Bare picows: the ceiling. /echo sends each frame back from on_ws_frame;
/sub and /pub fan a publisher's frames out with one transport.send per
subscriber. Default picows buffers (16 KiB read buffer), uvloop transports."""

from __future__ import annotations

import picows
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, WSUpgradeRequest

from bench.servers import run_server

SUBSCRIBERS: set[WSTransport] = set()


def _close(transport: WSTransport, frame: picows.WSFrame) -> None:
    transport.send_close(frame.get_close_code() if frame.payload_size >= 2 else WSCloseCode.OK)
    transport.disconnect()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: picows.WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY or msg_type == WSMsgType.CONTINUATION:
            transport.send(msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif msg_type == WSMsgType.CLOSE:
            _close(transport, frame)


class Subscriber(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.add(transport)

    def on_ws_frame(self, transport: WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            _close(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.discard(transport)


class Publisher(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: picows.WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY:
            data = frame.get_payload_as_bytes()
            for sub in SUBSCRIBERS:
                sub.send(msg_type, data)
        elif msg_type == WSMsgType.CLOSE:
            _close(transport, frame)


ROUTES = {b"/echo": Echo, b"/sub": Subscriber, b"/pub": Publisher}


def listener_factory(request: WSUpgradeRequest):
    cls = ROUTES.get(request.path.split(b"?", 1)[0])
    return None if cls is None else cls()


async def main(host: str, port: int) -> None:
    # uvloop's transports (not aiofastnet), like the wsrelay gateway, so the
    # difference between the two is wsrelay's own work.
    server = await picows.ws_create_server(listener_factory, host, port, backlog=4096, reuse_address=True,
                                           use_aiofastnet=False)
    print(f"ready {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    run_server(main)
