"""What wsrelay relies on in picows beyond its public API
(wsrelay/_core/picows_private.pxd and .pyx), checked over real sockets the
way the relay uses it. A failure here after a picows upgrade names the
reliance that broke: picows_private and its callers need a look before
anything else does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Optional

import picows
import pytest
from picows import WSMsgType

from tests.wsclient import BINARY, PING, PONG, TEXT, RawWebSocket, encode_frame
from wsrelay._core.handshake import Handshakes
from wsrelay._core.picows_private import (
    CHECKED_AGAINST,
    _release_upgrade,
    _write_buffer_capacity,
    server_protocol_factory,
)

PATH = "/picows"
# The write buffer the relay gives each transport (relay.pyx, CONTROL_FRAME_BUFFER).
CONTROL_FRAME_BUFFER = 160


def broke(what: str) -> str:
    return f"picows {picows.__version__} (checked against {CHECKED_AGAINST}) changed: {what}"


class Recorder(picows.WSListener):
    """A server-side listener that keeps what picows hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: Any = None
        self.frames: list[tuple[WSMsgType, bytes]] = []
        self.pauses = 0
        self.resumes = 0
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.framed = asyncio.Event()
        self.resumed = asyncio.Event()

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport
        self.connected.set()

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        payload = frame.get_payload_as_bytes()
        if payload == b"raise":
            raise RuntimeError("the listener failed")
        self.frames.append((frame.msg_type, payload))
        self.framed.set()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.disconnected.set()

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1
        self.resumed.set()

    async def next_frame(self) -> None:
        """Wait for a frame to arrive (5 s at most)."""
        await asyncio.wait_for(self.framed.wait(), 5.0)
        self.framed.clear()


@contextlib.asynccontextmanager
async def server(max_frame_size: int = 1 << 20) -> AsyncIterator[tuple[tuple[str, int], list[Recorder]]]:
    """A picows server made as the gateway makes it: the handshake guard reads
    the request head, then hands the socket to a protocol from
    server_protocol_factory. Yields its address and the listeners made."""
    loop = asyncio.get_running_loop()
    listeners: list[Recorder] = []

    def listener_factory(request: Any) -> Recorder:
        listener = Recorder()
        listeners.append(listener)
        return listener

    make_protocol = server_protocol_factory(listener_factory, logging.getLogger("tests.picows_private"), 5.0,
                                            max_frame_size, 4096)
    # The guard hands each socket's transport to its protocol factory.
    handshakes = Handshakes(loop, lambda transport: make_protocol(), timeout=5.0)
    srv = await loop.create_server(handshakes.protocol, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[:2], listeners
    finally:
        srv.close()
        await srv.wait_closed()


async def connect(addr: tuple[str, int], listeners: list[Recorder], *,
                  rcvbuf: Optional[int] = None) -> tuple[RawWebSocket, Recorder]:
    try:
        ws = await RawWebSocket.connect(addr, PATH, rcvbuf=rcvbuf)
        await asyncio.wait_for(listeners[-1].connected.wait(), 5.0)
    except Exception as exc:
        pytest.fail(broke(f"a protocol from server_protocol_factory, handed a socket by the handshake guard, "
                          f"no longer upgrades it ({exc!r}): WSProtocol's constructor, or how it takes a "
                          "socket whose first bytes were read already"))
    return ws, listeners[-1]


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A frame as a server writes it (unmasked), the way the Writer writes its own."""
    return encode_frame(opcode, payload, mask=False)


def test_the_protocol_class_is_where_the_factory_takes_it():
    from picows.picows import WSProtocol

    assert issubclass(WSProtocol, asyncio.BufferedProtocol), broke(
        "WSProtocol is no longer an asyncio.BufferedProtocol (the handshake guard feeds it through get_buffer "
        "and buffer_updated)")


async def test_the_protocol_upgrades_a_socket_handed_over_after_its_request_head():
    async with server() as (addr, listeners):
        ws, listener = await connect(addr, listeners)
        assert listener.transport is not None and not listener.transport.is_client_side
        ws.send_text(b"hello")
        await ws.drain()
        await listener.next_frame()
        assert listener.frames == [(WSMsgType.TEXT, b"hello")]
        ws.abort()


async def test_auto_pong_is_off_so_the_listener_sees_pings_unanswered():
    async with server() as (addr, listeners):
        ws, listener = await connect(addr, listeners)
        ws.send_ping(b"are you there")
        await ws.drain()
        await listener.next_frame()
        assert listener.frames == [(WSMsgType.PING, b"are you there")], broke(
            "the listener no longer gets the client's pings (enable_auto_pong is the 12th argument of WSProtocol)")
        with pytest.raises(asyncio.TimeoutError):
            frame = await ws.recv_frame(timeout=0.3)
            pytest.fail(broke(f"picows answered a ping by itself ({frame!r}): auto-pong is on"))
        ws.abort()


async def test_max_frame_size_bounds_a_frame():
    async with server(max_frame_size=1000) as (addr, listeners):
        ws, listener = await connect(addr, listeners)
        ws.send_binary(b"a" * 1000)
        ws.send_binary(b"a" * 1001)
        close = await ws.recv()
        assert close.close_code == 1009, broke(f"a frame over max_frame_size (the 13th argument) gave {close!r}")
        assert listener.frames == [(WSMsgType.BINARY, b"a" * 1000)]
        ws.abort()


async def test_an_exception_in_the_listener_fails_the_connection_with_1011():
    async with server() as (addr, listeners):
        ws, listener = await connect(addr, listeners)
        ws.send_text(b"raise")
        close = await ws.recv()
        assert close.close_code == 1011, broke(
            f"an exception in on_ws_frame gave {close!r} (disconnect_on_exception is the 6th argument)")
        await asyncio.wait_for(listener.disconnected.wait(), 5.0)


async def test_release_upgrade_leaves_a_transport_that_sends_control_frames():
    async with server() as (addr, listeners):
        ws, listener = await connect(addr, listeners)
        transport = listener.transport
        assert transport.request is not None and transport.response is not None
        try:
            assert _write_buffer_capacity(transport) >= CONTROL_FRAME_BUFFER
        except AttributeError as exc:
            pytest.fail(broke(f"WSTransport._write_buffer is no MemoryBuffer with a capacity: {exc!r}"))
        _release_upgrade(transport, CONTROL_FRAME_BUFFER)
        assert transport.request is None and transport.response is None
        assert _write_buffer_capacity(transport) == CONTROL_FRAME_BUFFER
        # The largest control frames the relay sends: they fit, and the
        # buffer stays as it was given.
        transport.send_ping(b"p" * 125)
        transport.send_pong(b"q" * 125)
        assert (await ws.recv_frame()).payload == b"p" * 125
        assert (await ws.recv_frame()).payload == b"q" * 125
        assert _write_buffer_capacity(transport) == CONTROL_FRAME_BUFFER, broke(
            "picows reallocated the write buffer for a control frame")
        # A larger frame grows it on demand.
        transport.send(WSMsgType.BINARY, b"x" * 4000)
        assert (await ws.recv_frame()).payload == b"x" * 4000
        assert _write_buffer_capacity(transport) >= 4004, broke("the write buffer no longer grows on demand")
        transport.send_close(picows.WSCloseCode.GOING_AWAY, b"bye")
        close = await ws.recv()
        assert (close.close_code, close.close_reason) == (1001, b"bye")
        ws.send_raw(encode_frame(0x8, close.payload))
        await ws.drain()
        transport.disconnect()
        await asyncio.wait_for(listener.disconnected.wait(), 5.0)


async def test_frames_written_beside_picows_stay_in_order_and_are_counted():
    """The Writer writes its frames to the underlying transport and counts
    what is unsent from get_write_buffer_size(); picows' own frames (pong,
    close) must go behind them, and be counted too."""
    async with server() as (addr, listeners):
        ws, listener = await connect(addr, listeners, rcvbuf=4096)
        transport = listener.transport
        wire = transport.underlying_transport
        wire.set_write_buffer_limits(high=1 << 16, low=1 << 15)
        chunk = server_frame(BINARY, b"b" * 60000)
        written = 0
        # The client reads nothing meanwhile: the kernel's buffers fill, then the transport's.
        while wire.get_write_buffer_size() <= 1 << 16 and written < 2000:
            wire.write(chunk)
            written += 1
            await asyncio.sleep(0)
        before = wire.get_write_buffer_size()
        assert before > 1 << 16
        assert listener.pauses == 1, broke("pause_writing no longer reaches the listener (RelayListener counts on it)")
        transport.send_ping(b"abc")
        assert wire.get_write_buffer_size() == before + 2 + 3, broke(
            "picows' own frame, sent while the transport holds bytes, is not in get_write_buffer_size() "
            "(it no longer writes through the transport then, or keeps bytes of its own)")
        wire.write(server_frame(TEXT, b"after"))
        assert wire.get_write_buffer_size() == before + 5 + 7
        for n in range(written):
            frame = await ws.recv_frame()
            assert (frame.opcode, len(frame.payload)) == (BINARY, 60000), f"frame {n}: {frame!r}"
        ping = await ws.recv_frame()
        assert (ping.opcode, ping.payload) == (PING, b"abc"), broke(f"picows' frame came out of order: {ping!r}")
        assert (await ws.recv_frame()).payload == b"after"
        try:
            await asyncio.wait_for(listener.resumed.wait(), 5.0)
        except asyncio.TimeoutError:
            pytest.fail(broke("resume_writing no longer reaches the listener"))
        assert listener.resumes == 1, broke("resume_writing reached the listener more than once")
        # With nothing held, picows writes straight to the socket; still in order.
        wire.write(server_frame(TEXT, b"one"))
        transport.send_pong(b"two")
        wire.write(server_frame(TEXT, b"three"))
        got = [await ws.recv_frame() for _ in range(3)]
        assert [(f.opcode, f.payload) for f in got] == [(TEXT, b"one"), (PONG, b"two"), (TEXT, b"three")]
        ws.abort()


async def test_reading_paused_underneath_picows_holds_the_client_frames():
    async with server() as (addr, listeners):
        ws, listener = await connect(addr, listeners)
        other, other_listener = await connect(addr, listeners)
        wire = listener.transport.underlying_transport
        wire.pause_reading()
        ws.send_text(b"held")
        await ws.drain()
        # A frame on another connection, sent after and read by the same loop:
        # once it is in, a connection still reading would have had its own.
        other.send_text(b"after")
        await other.drain()
        await other_listener.next_frame()
        assert listener.frames == []
        wire.resume_reading()
        await listener.next_frame()
        assert listener.frames == [(WSMsgType.TEXT, b"held")], broke("picows lost the frames read after a pause")
        ws.abort()
        other.abort()
