"""A relay connection over real sockets (docs/guide.md sections 3 and 4): what the target
sees, what a connection accepts, the connection as a process, and every way a
client can break the protocol. tests/wsclient.py sends the frames the
``websockets`` client will not."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Optional

import pytest
import websockets

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running
from tests.procs import relay_to
from tests.wsclient import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    RSV1,
    RSV2,
    RSV3,
    TEXT,
    RawWebSocket,
    close_payload,
    encode_frame,
)
from wsrelay import Pid, process

PATH = "/ws/chat"


async def receive(timeout: float = 5.0) -> Any:
    return await process.inbox().receive(timeout=timeout)


async def from_target(name: str = "target", timeout: float = 5.0) -> tuple[str, Any, Any]:
    """(topic, payload, sender) of the next message a relay:recorder got."""
    return await expect(name, timeout)


async def gather(count: int, timeout: float = 5.0) -> dict[str, list]:
    """The next ``count`` messages, by topic (for events whose relative order
    is not part of the contract)."""
    got: dict[str, list] = {}
    for _ in range(count):
        msg = await receive(timeout)
        got.setdefault(msg.topic, []).append(msg.payload)
    return got


@dataclasses.dataclass
class Session:
    ws: RawWebSocket
    client: Pid
    target: Pid
    join: dict


def app_for(**fields: Any) -> Any:
    return relay_app(relay_handler("relay:recorder", process.self(), **fields))


async def connect(gw: Any, monitor: bool = False, path: str = PATH) -> Session:
    """A client relayed to a relay:recorder; ws.join already seen."""
    ws = await RawWebSocket.connect(gw, path)
    name, target = await expect("ready")
    topic, payload, sender = await from_target(name)
    assert topic == "ws.join", (topic, payload)
    assert sender == payload["client_pid"]
    if monitor:
        process.monitor(payload["client_pid"])
    return Session(ws, payload["client_pid"], target, payload)


async def ended(s: Session, reason: str, code: Optional[int], target_gets_leave: bool = True) -> None:
    """The connection has ended with ``reason``: its monitor (the test) gets
    EXIT and, when it is still alive, its target gets ws.leave."""
    got = await gather(2 if target_gets_leave else 1)
    exit_event = got.pop(wsrelay.EXIT)[0]
    assert exit_event["pid"] == s.client
    assert exit_event["reason"] == reason
    if target_gets_leave:
        topic, payload, sender = got.pop("target")[0]
        assert topic == "ws.leave"
        assert payload == {"client_pid": s.client, "metadata": s.join["metadata"], "reason": reason, "code": code}
        assert sender == s.client
    assert got == {}
    assert not process.is_alive(s.client)


# -- what the target receives (guide section 3, "Topics the target receives") --------------------------------


async def test_join_message_and_leave_payloads():
    async with running(app_for(metadata={"user": "bob", "n": 1})) as gw:
        s = await connect(gw)
        assert s.join == {"client_pid": s.client, "metadata": {"user": "bob", "n": 1}}
        assert isinstance(s.client, Pid) and s.client.host == "test:gateway"
        assert s.client != s.target
        s.ws.send_text("héllo")
        s.ws.send_binary(b"\x00\xffbin")
        s.ws.send_text("")
        s.ws.send_binary(b"")
        seen = [await from_target() for _ in range(4)]
        assert seen == [
            ("ws.message", {"client_pid": s.client, "type": "text", "data": "héllo",
                            "metadata": {"user": "bob", "n": 1}}, s.client),
            ("ws.message", {"client_pid": s.client, "type": "binary", "data": b"\x00\xffbin",
                            "metadata": {"user": "bob", "n": 1}}, s.client),
            ("ws.message", {"client_pid": s.client, "type": "text", "data": "", "metadata": {"user": "bob", "n": 1}},
             s.client),
            ("ws.message", {"client_pid": s.client, "type": "binary", "data": b"",
                            "metadata": {"user": "bob", "n": 1}}, s.client),
        ]
        assert type(seen[0][1]["data"]) is str and type(seen[1][1]["data"]) is bytes
        close = await s.ws.close_handshake(1000)
        assert close.close_code == 1000
        topic, payload, sender = await from_target()
        assert (topic, sender) == ("ws.leave", s.client)
        assert payload == {"client_pid": s.client, "metadata": {"user": "bob", "n": 1},
                           "reason": "client_closed", "code": 1000}


async def test_default_metadata_is_an_empty_dict():
    async with running(app_for()) as gw:
        s = await connect(gw)
        assert s.join["metadata"] == {}
        s.ws.send_text("x")
        assert (await from_target())[1]["metadata"] == {}
        await s.ws.close_handshake()
        assert (await from_target())[1]["metadata"] == {}


async def test_custom_message_topic():
    async with running(app_for(message_topic="chat.in", metadata={"room": 7})) as gw:
        s = await connect(gw)
        s.ws.send_text("a")
        s.ws.send_binary(b"b")
        assert await from_target() == ("chat.in", {"client_pid": s.client, "type": "text", "data": "a",
                                                   "metadata": {"room": 7}}, s.client)
        assert (await from_target())[:2] == ("chat.in", {"client_pid": s.client, "type": "binary", "data": b"b",
                                                        "metadata": {"room": 7}})
        # join and leave keep their own topics
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"


async def test_with_the_websockets_client():
    async with running(app_for(metadata={"k": "v"})) as gw:
        async with websockets.connect(gw.url(PATH)) as ws:
            _, target = await expect("ready")
            topic, join, _ = await from_target()
            await ws.send("text")
            await ws.send(b"bytes")
            assert (await from_target())[1]["data"] == "text"
            assert (await from_target())[1]["data"] == b"bytes"
            process.send(join["client_pid"], "ws.send", {"type": "text", "data": "reply"})
            assert await ws.recv() == "reply"
        topic, payload, _ = await from_target()
        assert (topic, payload["reason"], payload["code"]) == ("ws.leave", "client_closed", 1000)


async def test_heartbeats_carry_uptime_and_message_count():
    async with running(app_for(heartbeat_interval="50ms", metadata={"m": 1})) as gw:
        s = await connect(gw)
        topic, first, sender = await from_target()
        assert (topic, sender) == ("ws.heartbeat", s.client)
        assert set(first) == {"client_pid", "uptime", "message_count", "metadata"}
        assert first["client_pid"] == s.client and first["metadata"] == {"m": 1}
        assert isinstance(first["uptime"], float) and 0.04 <= first["uptime"] < 5
        assert first["message_count"] == 0
        s.ws.send_text("one")
        s.ws.send_binary(b"two")
        messages, beats = [], [first]
        while len(messages) < 2 or beats[-1]["message_count"] < 2:
            topic, payload, _ = await from_target()
            (messages if topic == "ws.message" else beats).append(payload)
            assert topic in ("ws.message", "ws.heartbeat")
        assert [m["data"] for m in messages] == ["one", b"two"]
        uptimes = [b["uptime"] for b in beats]
        assert uptimes == sorted(uptimes) and len(set(uptimes)) == len(uptimes)
        counts = [b["message_count"] for b in beats]
        assert counts == sorted(counts) and counts[-1] == 2
        # ~one heartbeat per interval: uptime of the k-th is about k intervals
        assert uptimes[-1] >= 0.05 * len(beats) * 0.8
        await s.ws.close_handshake()
        while (await from_target())[0] != "ws.leave":
            pass


async def test_heartbeat_interval_as_a_number_of_seconds():
    async with running(app_for(heartbeat_interval=0.05)) as gw:
        s = await connect(gw)
        topic, beat, _ = await from_target()
        assert topic == "ws.heartbeat" and beat["uptime"] >= 0.04
        await s.ws.close_handshake()
        while (await from_target())[0] != "ws.leave":
            pass


async def test_fragmented_messages_are_reassembled():
    async with running(app_for()) as gw:
        s = await connect(gw)
        euro = "€".encode()  # 3 bytes, split across fragments below
        s.ws.send_text(b"frag" + euro[:1], fin=False)
        s.ws.send_frame(CONT, euro[1:2], fin=False)
        s.ws.send_frame(CONT, b"", fin=False)
        # a control frame may come between fragments
        s.ws.send_ping(b"mid")
        s.ws.send_frame(CONT, euro[2:] + "ment😀".encode(), fin=True)
        s.ws.send_binary(b"\x01\x02", fin=False)
        s.ws.send_frame(CONT, b"\x03", fin=False)
        s.ws.send_frame(CONT, b"\x04\x05", fin=True)
        s.ws.send_text("after")
        pong = await s.ws.recv_frame()
        assert (pong.opcode, pong.payload) == (PONG, b"mid")
        got = [await from_target() for _ in range(3)]
        assert [(t, p["type"], p["data"]) for t, p, _ in got] == [
            ("ws.message", "text", "frag€ment😀"),
            ("ws.message", "binary", b"\x01\x02\x03\x04\x05"),
            ("ws.message", "text", "after"),
        ]
        await s.ws.close_handshake()
        topic, payload, _ = await from_target()
        assert topic == "ws.leave"


async def test_order_is_preserved_under_a_burst():
    # More messages than a mailbox holds (default 1024): the relay must hold
    # the client back, not drop or reorder.
    n = 3000
    observer = process.self()
    app = relay_app(relay_handler("relay:collect", observer, n))
    async with running(app) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        frames = []
        for i in range(n):
            if i % 3 == 0:
                frames.append(encode_frame(BINARY, i.to_bytes(4, "big")))
            elif i % 3 == 1:
                frames.append(encode_frame(TEXT, f"m{i}".encode()))
            else:  # fragmented
                frames.append(encode_frame(TEXT, b"m", fin=False) + encode_frame(CONT, str(i).encode()))
        ws.send_raw(b"".join(frames))
        collected = await expect("collected", timeout=30)
        expected = [i.to_bytes(4, "big") if i % 3 == 0 else f"m{i}" for i in range(n)]
        assert collected == expected
        await ws.close_handshake()
        assert (await expect("left"))["reason"] == "client_closed"


# -- ws.leave reasons (and EXIT to the connection's monitors) --------------------------------------


@pytest.mark.parametrize("code,reason", [(1000, b""), (1001, b"going"), (4001, "bye €".encode()), (3000, b"")])
async def test_client_closed_with_its_code(code, reason):
    async with running(app_for(metadata={"x": 1})) as gw:
        s = await connect(gw, monitor=True)
        answer = await s.ws.close_handshake(code, reason)
        assert answer.close_code == code
        await ended(s, "client_closed", code)


async def test_client_closed_without_a_code():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        answer = await s.ws.close_handshake(None)
        assert answer.close_code in (1000, None)
        await ended(s, "client_closed", None)


async def test_connection_lost_when_the_client_vanishes():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        s.ws.send_text("last words")
        assert (await from_target())[1]["data"] == "last words"
        s.ws.abort()
        await ended(s, "connection_lost", None)


async def _vanish(ws) -> None:
    await ws.drain()
    ws.abort()


async def _close(ws) -> None:
    assert (await ws.close_handshake(1000)).close_code == 1000


@pytest.mark.parametrize("leave, reason, code", [(_vanish, "connection_lost", None), (_close, "client_closed", 1000)],
                         ids=["connection lost", "client close"])
async def test_a_client_leaving_mid_fragmented_message_relays_nothing(leave, reason, code):
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        s.ws.send_text("part", fin=False)
        await leave(s.ws)
        await ended(s, reason, code)


@pytest.mark.parametrize("end, after, reason, code", [
    (encode_frame(CLOSE, close_payload(4000)), encode_frame(TEXT, b"after close"), "client_closed", 4000),
    (encode_frame(TEXT, b"\xff"), encode_frame(TEXT, b"after the error") + encode_frame(BINARY, b"and this"),
     "protocol_error", 1007),
], ids=["the_clients_close", "a_protocol_error"])
async def test_frames_after_the_end_of_the_connection_are_not_relayed(end: bytes, after: bytes, reason: str,
                                                                      code: int):
    """The frames the client sends after its close frame, or after a frame
    that ends the connection with a protocol error, never reach the target."""
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        s.ws.send_raw(encode_frame(TEXT, b"before") + end + after)
        assert (await from_target())[1]["data"] == "before"
        assert (await s.ws.expect_close()).close_code == code
        await s.ws.wait_eof()
        s.ws.abort()
        await ended(s, reason, code)


async def test_server_closed_by_ws_close():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        assert process.send(s.client, "ws.close", {"code": 4000, "reason": "kicked out"}) is True
        close = await s.ws.answer_close()
        assert (close.close_code, close.close_reason) == (4000, b"kicked out")
        await ended(s, "server_closed", 4000)


async def test_ws_close_without_payload_is_1000():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        process.send(s.client, "ws.close")
        close = await s.ws.answer_close()
        assert (close.close_code, close.close_reason) == (1000, b"")
        await ended(s, "server_closed", 1000)


@pytest.mark.parametrize("how,code", [("exit", 1000), ("crash", 1011)])
async def test_target_exited(how, code, caplog):
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        process.monitor(s.target)
        process.send(s.target, how)
        target_exit = await expect(wsrelay.EXIT)
        assert target_exit["pid"] == s.target
        close = await s.ws.answer_close()
        assert close.close_code == code
        # The target is gone: no ws.leave to it, only EXIT to the monitors.
        await ended(s, "target_exited", code, target_gets_leave=False)


async def test_target_killed_closes_the_client_with_1011():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        process.terminate(s.target, "killed")
        assert (await s.ws.answer_close()).close_code == 1011
        await ended(s, "target_exited", 1011, target_gets_leave=False)


async def test_target_already_gone_when_the_upgrade_completes():
    """The handler relays to a process that ends before the connection is up."""
    observer = process.self()

    def handler(req: Any, res: Any) -> None:
        pid = process.spawn("relay:recorder", None, observer)
        process.send(pid, "exit")
        relay_to(res, pid)

    async with running(relay_app(handler)) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        close = await ws.answer_close()
        assert close.close_code == 1000


async def test_shutdown_closes_with_1001_and_leave_shutdown():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        closing = asyncio.ensure_future(s.ws.answer_close())
        assert await gw.shutdown(drain_timeout=5) is True
        assert (await closing).close_code == 1001
        await ended(s, "shutdown", 1001)


# -- what a connection accepts (guide section 3, "Sending to the client") ------------------------------------


SIZES = [0, 1, 125, 126, 8192, 8193, 65535, 65536, 300_000]


async def test_ws_send_text_and_binary_of_every_size():
    # All of it is queued before the first flush, and queued output counts
    # toward the write-buffer limit (docs/configuration.md,
    # `WSRELAY_WRITE_BUFFER_LIMIT`): give it room.
    async with running(app_for(), write_buffer_limit=8 << 20) as gw:
        s = await connect(gw)
        for size in SIZES:
            text = "é" * (size // 2) + "x" * (size % 2)
            assert process.send(s.client, "ws.send", {"type": "text", "data": text}) is True
            data = bytes(i % 251 for i in range(size))
            assert process.send(s.client, "ws.send", {"type": "binary", "data": data}) is True
            assert process.send(s.client, "ws.send", {"type": "binary", "data": bytearray(data)}) is True
            assert process.send(s.client, "ws.send", {"type": "binary", "data": memoryview(data)}) is True
        for size in SIZES:
            text = "é" * (size // 2) + "x" * (size % 2)
            frame = await s.ws.recv()
            assert (frame.opcode, frame.fin, frame.rsv, frame.masked) == (TEXT, True, 0, False)
            assert frame.text == text
            data = bytes(i % 251 for i in range(size))
            for _ in range(3):
                frame = await s.ws.recv()
                assert (frame.opcode, frame.fin, frame.payload) == (BINARY, True, data)
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"


async def test_many_small_ws_sends_in_one_go_arrive_intact_and_in_order():
    async with running(app_for()) as gw:
        s = await connect(gw)
        for i in range(500):
            process.send(s.client, "ws.send", {"type": "text", "data": f"message {i} " + "x" * (i % 50)})
        for i in range(500):
            assert await s.ws.recv_text() == f"message {i} " + "x" * (i % 50)
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"


async def test_large_ws_sends_queued_behind_a_slow_reader_arrive_intact():
    """Frames the kernel cannot take at once are queued by the transport; each
    must still arrive whole (sizes differ, so a header reused or overwritten
    while queued shows)."""
    frames = 120
    async with running(app_for(), write_buffer_limit=256 << 20) as gw:
        s = await connect(gw)
        sent = []
        for i in range(frames):
            size = 70_000 + 997 * i
            if i % 2:
                data = bytes([i % 256]) * size
                process.send(s.client, "ws.send", {"type": "binary", "data": data})
            else:
                data = chr(ord("a") + i % 26) * size
                process.send(s.client, "ws.send", {"type": "text", "data": data})
            sent.append(data)
        try:
            for i, data in enumerate(sent):
                frame = await s.ws.recv(timeout=20)
                assert len(frame.payload) == len(data), f"frame {i}: {len(frame.payload)} bytes, sent {len(data)}"
                if i % 2:
                    assert frame.opcode == BINARY and frame.payload == data, i
                else:
                    assert frame.opcode == TEXT and frame.text == data, i
        except BaseException:
            s.ws.abort()
            raise
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"


@pytest.mark.parametrize("reason,expected", [
    ("a" + "€" * 50, ("a" + "€" * 40).encode()),         # 151 bytes: 123 falls inside a €
    ("é" * 70, ("é" * 61).encode()),                     # 140 bytes: 123 falls inside an é
    ("😀" * 40, ("😀" * 30).encode()),                   # 160 bytes: cut to 120
    ("x" * 123, b"x" * 123),                             # exactly the limit: kept
    ("x" * 200, b"x" * 123),
    ("", b""),
])
async def test_ws_close_reason_is_cut_at_a_utf8_boundary(reason, expected):
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        process.send(s.client, "ws.close", {"code": 4002, "reason": reason})
        close = await s.ws.answer_close()
        assert close.close_code == 4002
        assert close.close_reason == expected
        close.close_reason.decode("utf-8")
        assert len(close.payload) <= 125
        await ended(s, "server_closed", 4002)


BAD_SENDS = [
    ("ws.send", "just text"),
    ("ws.send", None),
    ("ws.send", {"data": "no type"}),
    ("ws.send", {"type": "text"}),
    ("ws.send", {"type": "text", "data": b"bytes as text"}),
    ("ws.send", {"type": "text", "data": 5}),
    ("ws.send", {"type": "binary", "data": "str as binary"}),
    ("ws.send", {"type": "binary", "data": None}),
    ("ws.send", {"type": "ping", "data": b""}),
    ("ws.send", {"type": "close", "data": b""}),
    ("ws.send", ["text", "x"]),
    ("ws.close", "bye"),
    ("ws.close", {"code": 999}),
    ("ws.close", {"code": 1004}),
    ("ws.close", {"code": 1005}),
    ("ws.close", {"code": 1006}),
    ("ws.close", {"code": 1015}),
    ("ws.close", {"code": 2999}),
    ("ws.close", {"code": 5000}),
    ("ws.close", {"code": "1000"}),
    ("ws.close", {"code": 1000.0}),
    ("ws.close", {"code": True}),
    ("ws.close", {"code": 1000, "reason": b"bytes"}),
    ("ws.close", {"code": 1000, "reason": 5}),
    ("ws.nonsense", {}),
]


@pytest.mark.parametrize("topic,payload", BAD_SENDS)
async def test_malformed_send_or_close_raises_and_nothing_reaches_the_wire(topic, payload):
    async with running(app_for()) as gw:
        s = await connect(gw)
        with pytest.raises(ValueError):
            process.send(s.client, topic, payload)
        with pytest.raises(ValueError):  # the text form of the PID too
            process.send(str(s.client), topic, payload)
        # Still open, and the next frame on the wire is the next good one.
        process.send(s.client, "ws.send", {"type": "text", "data": "marker"})
        frame = await s.ws.recv()
        assert (frame.opcode, frame.payload) == (TEXT, b"marker")
        s.ws.send_text("still here")
        assert (await from_target())[1]["data"] == "still here"
        await s.ws.close_handshake()
        topic, payload, _ = await from_target()
        assert (topic, payload["reason"]) == ("ws.leave", "client_closed")


async def test_ws_send_and_ws_close_from_another_process():
    observer = process.self()
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        process.spawn("test:try_send", None, observer, s.client, "ws.send", {"type": "binary", "data": b"hi"})
        assert await expect("tried") == ("sent", True)
        assert await s.ws.recv_binary() == b"hi"
        # A malformed one raises ValueError inside the sending process.
        process.spawn("test:try_send", None, observer, s.client, "ws.send", {"type": "text", "data": b"hi"})
        outcome, kind, text = await expect("tried")
        assert (outcome, kind) == ("raised", "ValueError") and "str" in text
        process.spawn("test:try_send", None, observer, str(s.client), "ws.close", {"code": 1006})
        outcome, kind, text = await expect("tried")
        assert (outcome, kind) == ("raised", "ValueError") and "1006" in text
        process.spawn("test:try_send", None, observer, s.client, "ws.close", {"code": 1001, "reason": "bye"})
        assert await expect("tried") == ("sent", True)
        close = await s.ws.answer_close()
        assert (close.close_code, close.close_reason) == (1001, b"bye")
        await ended(s, "server_closed", 1001)


async def test_ws_send_after_ws_close_is_dropped():
    async with running(app_for()) as gw:
        s = await connect(gw)
        assert process.send(s.client, "ws.close", {"code": 1000}) is True
        assert process.send(s.client, "ws.send", {"type": "text", "data": "too late"}) is False
        assert process.send(s.client, "ws.close", {"code": 1001}) is False
        close = await s.ws.expect_close()
        assert close.close_code == 1000
        s.ws.send_frame(CLOSE, close.payload[:2])
        assert await s.ws.wait_eof() == b""
        s.ws.abort()
        topic, payload, _ = await from_target()
        assert (topic, payload["reason"], payload["code"]) == ("ws.leave", "server_closed", 1000)


async def test_ws_control_changes_topic_and_metadata():
    async with running(app_for(metadata={"v": 1})) as gw:
        s = await connect(gw)
        s.ws.send_text("one")
        assert (await from_target())[:2] == ("ws.message", {"client_pid": s.client, "type": "text",
                                                           "data": "one", "metadata": {"v": 1}})
        assert process.send(s.client, "ws.control", {"message_topic": "room.msg", "metadata": {"v": 2}}) is True
        s.ws.send_text("two")
        assert (await from_target())[:2] == ("room.msg", {"client_pid": s.client, "type": "text",
                                                         "data": "two", "metadata": {"v": 2}})
        # Changing only one field keeps the other; the same target is not a transfer.
        process.send(s.client, "ws.control", {"metadata": {"v": 3}, "target_pid": str(s.target)})
        s.ws.send_text("three")
        assert (await from_target())[:2] == ("room.msg", {"client_pid": s.client, "type": "text",
                                                         "data": "three", "metadata": {"v": 3}})
        await s.ws.close_handshake()
        topic, payload, _ = await from_target()
        assert (topic, payload["reason"], payload["metadata"]) == ("ws.leave", "client_closed", {"v": 3})


async def test_ws_control_heartbeat_interval_on_and_off():
    async with running(app_for()) as gw:
        s = await connect(gw)
        process.send(s.client, "ws.control", {"heartbeat_interval": "30ms"})
        topic, beat, _ = await from_target()
        assert topic == "ws.heartbeat" and beat["client_pid"] == s.client
        process.send(s.client, "ws.control", {"heartbeat_interval": None})
        s.ws.send_text("marker")
        while (msg := await from_target())[0] == "ws.heartbeat":
            pass
        assert msg[1]["data"] == "marker"
        # Off: nothing more within several intervals (a bounded window, the
        # only way to see that something does not happen).
        with pytest.raises(TimeoutError):
            await expect("target", timeout=0.3)
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"


@pytest.mark.parametrize("payload", [
    "not a dict",
    {"colour": "red"},
    {"message_topic": 5},
    {"message_topic": "@exit"},
    {"message_topic": ""},
    {"metadata": [1]},
    {"heartbeat_interval": "soon"},
    {"heartbeat_interval": "1ms"},
    {"target_pid": "not-a-pid"},
])
async def test_malformed_ws_control_raises_and_changes_nothing(payload):
    async with running(app_for(metadata={"v": 1})) as gw:
        s = await connect(gw)
        with pytest.raises((ValueError, TypeError)):
            process.send(s.client, "ws.control", payload)
        s.ws.send_text("same")
        assert (await from_target())[:2] == ("ws.message", {"client_pid": s.client, "type": "text",
                                                           "data": "same", "metadata": {"v": 1}})
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"


async def test_transfer_to_a_new_target():
    observer = process.self()
    async with running(app_for(metadata={"room": 1})) as gw:
        s = await connect(gw, monitor=True)
        second = process.spawn("relay:recorder", None, observer, "second")
        assert await expect("ready") == ("second", second)
        process.monitor(s.target)
        assert process.send(s.client, "ws.control", {"target_pid": second, "metadata": {"room": 2},
                                                     "message_topic": "r2"}) is True
        got = await gather(2)
        topic, leave, sender = got["target"][0]
        assert (topic, sender) == ("ws.leave", s.client)
        assert leave == {"client_pid": s.client, "metadata": {"room": 1}, "reason": "transferred", "code": None}
        topic, join, sender = got["second"][0]
        assert (topic, sender) == ("ws.join", s.client)
        assert join == {"client_pid": s.client, "metadata": {"room": 2}}
        s.ws.send_text("to second")
        assert await from_target("second") == ("r2", {"client_pid": s.client, "type": "text", "data": "to second",
                                                     "metadata": {"room": 2}}, s.client)
        # The old target is no longer watched: its exit leaves the client open.
        process.send(s.target, "exit")
        old_exit = await expect(wsrelay.EXIT)
        assert old_exit["pid"] == s.target
        s.ws.send_text("still open")
        assert (await from_target("second"))[1]["data"] == "still open"
        # The new one is: its crash closes the client with 1011.
        process.send(second, "crash")
        assert (await s.ws.answer_close()).close_code == 1011
        exit_event = await expect(wsrelay.EXIT)
        assert (exit_event["pid"], exit_event["reason"]) == (s.client, "target_exited")


async def test_transfer_then_client_close_sends_leave_to_the_new_target_only():
    observer = process.self()
    async with running(app_for()) as gw:
        s = await connect(gw)
        second = process.spawn("relay:recorder", None, observer, "second")
        await expect("ready")
        process.send(s.client, "ws.control", {"target_pid": str(second)})
        got = await gather(2)
        assert got["target"][0][1]["reason"] == "transferred"
        assert got["second"][0][0] == "ws.join"
        process.send(s.target, "exit")  # the first recorder stays after a transfer
        await s.ws.close_handshake(4004)
        topic, payload, _ = await from_target("second")
        assert (topic, payload["reason"], payload["code"]) == ("ws.leave", "client_closed", 4004)


async def test_transfer_to_a_dead_target_changes_nothing_and_is_logged(caplog):
    caplog.set_level(logging.WARNING, logger="wsrelay")
    async with running(app_for(metadata={"room": 1})) as gw:
        s = await connect(gw, monitor=True)
        dead = process.spawn_monitored("test:returns")
        assert (await expect(wsrelay.EXIT))["pid"] == dead
        caplog.clear()
        for target in (dead, str(dead), "{test:processes|0xfffffff}"):
            process.send(s.client, "ws.control", {"target_pid": target, "metadata": {"room": 9}})
            s.ws.send_text("where am I")
            assert await from_target() == ("ws.message", {"client_pid": s.client, "type": "text",
                                                          "data": "where am I", "metadata": {"room": 1}}, s.client)
        # Logged, at most one line a second (docs/guide.md section 9, "A full
        # mailbox"): the first one at least.
        assert any("not alive" in r.getMessage() and str(s.client) in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        # The first target is still the one watched.
        process.send(s.target, "crash")
        assert (await s.ws.answer_close()).close_code == 1011
        await ended(s, "target_exited", 1011, target_gets_leave=False)


# -- the connection as a process (guide section 4) -----------------------------------------------------------


async def linked_client(gw: Any) -> tuple[RawWebSocket, Pid]:
    """A client of a relay:linker target, and the target (linked to the
    client's connection, monitored by the test)."""
    ws = await RawWebSocket.connect(gw, PATH)
    linked = await expect("linked")
    process.monitor(linked)
    return ws, linked


async def client_goes(ws: RawWebSocket, end: str, code: int) -> str:
    """The client goes, by a close handshake with ``code`` (``end`` "close")
    or a TCP abort ("abort"); the reason its connection ends with."""
    if end == "close":
        await ws.close_handshake(code)
        return "client_closed"
    ws.abort()
    return "connection_lost"


@pytest.mark.parametrize("end", ["close", "abort"])
async def test_linked_handler_process_is_terminated_when_the_client_goes(end):
    async with running(relay_app(relay_handler("relay:linker", process.self(), False))) as gw:
        ws, linked = await linked_client(gw)
        reason = await client_goes(ws, end, 1000)
        exit_event = await expect(wsrelay.EXIT)
        assert exit_event["pid"] == linked
        assert exit_event["reason"] == reason
        assert not process.is_alive(linked)


@pytest.mark.parametrize("end", ["close", "abort"])
async def test_linked_process_that_traps_exits_gets_link_down(end):
    async with running(relay_app(relay_handler("relay:linker", process.self(), True))) as gw:
        ws, linked = await linked_client(gw)
        reason = await client_goes(ws, end, 4000)
        code = 4000 if end == "close" else None
        leave = await expect("leave")
        assert (leave["reason"], leave["code"]) == (reason, code)
        topic, event = await expect("event")
        assert topic == wsrelay.LINK_DOWN
        assert event["pid"] == leave["client_pid"] and event["reason"] == reason
        # It was not terminated by the link: it returned after reporting.
        exit_event = await expect(wsrelay.EXIT)
        assert (exit_event["pid"], exit_event["reason"]) == (linked, "normal")


async def _crash_a_linked_process(client) -> None:
    other = process.spawn("test:link_crash", None, process.self(), client)
    assert await expect("linked") == other
    process.send(other, "crash")


async def _terminate(client) -> None:
    assert process.terminate(client, "admin") is True


@pytest.mark.parametrize("end, code", [(_crash_a_linked_process, 1011), (_terminate, 1000)],
                         ids=["a crashing linked process: 1011", "terminate: 1000"])
async def test_ending_the_connection_process_closes_the_client(end, code):
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        await end(s.client)
        close = await s.ws.answer_close()
        assert close.close_code == code
        got = await gather(2)
        assert got[wsrelay.EXIT][0]["pid"] == s.client
        assert got["target"][0][0] == "ws.leave"


async def test_monitor_of_an_already_ended_connection_is_noproc():
    async with running(app_for()) as gw:
        s = await connect(gw)
        await s.ws.close_handshake()
        assert (await from_target())[0] == "ws.leave"
        process.monitor(s.client)
        exit_event = await expect(wsrelay.EXIT)
        assert (exit_event["pid"], exit_event["reason"]) == (s.client, "noproc")
        assert process.send(s.client, "ws.send", {"type": "text", "data": "x"}) is False


# -- protocol errors ------------------------------------------------------------------------------


def _send(*frames: tuple) -> Any:
    def run(ws: RawWebSocket) -> None:
        for opcode, payload, flags in frames:
            ws.send_frame(opcode, payload, **flags)
    return run


PROTOCOL_ERRORS = [
    # (id, what the client sends, close code)
    ("rsv1", _send((TEXT, b"x", {"rsv": RSV1})), 1002),
    ("rsv2", _send((BINARY, b"x", {"rsv": RSV2})), 1002),
    ("rsv3", _send((TEXT, b"x", {"rsv": RSV3})), 1002),
    ("rsv on a continuation", _send((TEXT, b"a", {"fin": False}), (CONT, b"b", {"rsv": RSV1})), 1002),
    ("rsv on a ping", _send((PING, b"", {"rsv": RSV2})), 1002),
    ("rsv on a pong", _send((PONG, b"", {"rsv": RSV1})), 1002),
    ("rsv on a close", _send((CLOSE, close_payload(1000), {"rsv": RSV3})), 1002),
    ("continuation without a start", _send((CONT, b"x", {})), 1002),
    ("final continuation without a start", _send((CONT, b"x", {"fin": True})), 1002),
    ("new message inside a fragmented one",
     _send((TEXT, b"a", {"fin": False}), (BINARY, b"b", {})), 1002),
    ("unmasked frame", _send((TEXT, b"x", {"mask": False})), 1002),
    ("reserved opcode 3", _send((0x3, b"", {})), 1002),
    ("reserved control opcode 0xB", _send((0xB, b"", {})), 1002),
    ("fragmented ping", _send((PING, b"", {"fin": False})), 1002),
    ("ping over 125 bytes", _send((PING, b"p" * 126, {})), 1002),
    ("invalid utf-8", _send((TEXT, b"ok\xff", {})), 1007),
    ("overlong utf-8", _send((TEXT, b"\xc0\xaf", {})), 1007),
    ("utf-16 surrogate", _send((TEXT, b"\xed\xa0\x80", {})), 1007),
    ("code point over U+10FFFF", _send((TEXT, b"\xf4\x90\x80\x80", {})), 1007),
    ("text ends inside a sequence", _send((TEXT, b"a\xe2\x82", {})), 1007),
    ("fragmented: ends inside a sequence",
     _send((TEXT, b"a\xe2", {"fin": False}), (CONT, b"\x82", {})), 1007),
    ("fragmented: invalid in the last fragment",
     _send((TEXT, b"good", {"fin": False}), (CONT, b"\xff", {})), 1007),
    # Fail fast: the close comes without the client ever finishing the message.
    ("fragmented: invalid in the first fragment", _send((TEXT, b"\xffbad", {"fin": False})), 1007),
    ("fragmented: invalid in a middle fragment",
     _send((TEXT, b"good", {"fin": False}), (CONT, b"ok\xc3\x28", {"fin": False})), 1007),
    ("fragmented: overlong split across fragments",
     _send((TEXT, b"a\xe0", {"fin": False}), (CONT, b"\x80\x80", {"fin": False})), 1007),
    ("close code 999", _send((CLOSE, close_payload(999), {})), 1002),
    ("close code 0", _send((CLOSE, close_payload(0), {})), 1002),
    ("close code 1004", _send((CLOSE, close_payload(1004), {})), 1002),
    ("close code 1005", _send((CLOSE, close_payload(1005), {})), 1002),
    ("close code 1006", _send((CLOSE, close_payload(1006), {})), 1002),
    ("close code 1015", _send((CLOSE, close_payload(1015), {})), 1002),
    ("close code 2999", _send((CLOSE, close_payload(2999), {})), 1002),
    ("close code 5000", _send((CLOSE, close_payload(5000), {})), 1002),
    ("close code 65535", _send((CLOSE, close_payload(65535), {})), 1002),
    ("close payload of one byte", _send((CLOSE, b"\x03", {})), 1002),
    ("close reason invalid utf-8", _send((CLOSE, close_payload(1000, b"\xff"), {})), 1007),
    ("fragmented close", _send((CLOSE, close_payload(1000), {"fin": False})), 1002),
]


@pytest.mark.parametrize("answer", [False, True], ids=["silent", "answering"])
@pytest.mark.parametrize("send,code", [pytest.param(s, c, id=i) for i, s, c in PROTOCOL_ERRORS])
async def test_protocol_errors_close_with_the_rfc_code(send, code, answer):
    """The server's close carries the RFC code; a client that answers it (as
    a well-behaved one does) does not turn the failure into its own close."""
    async with running(app_for(metadata={"p": 1})) as gw:
        s = await connect(gw, monitor=True)
        try:
            send(s.ws)
            close = await s.ws.recv_frame()
            assert close.opcode == CLOSE and close.close_code == code, close
            if answer:
                s.ws.send_close(code)
            assert await s.ws.wait_eof() == b""
        finally:
            s.ws.abort()
        # Nothing was relayed: the target's next message is ws.leave.
        await ended(s, "protocol_error", code)


async def test_valid_close_codes_are_accepted():
    async with running(app_for()) as gw:
        for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
            s = await connect(gw, monitor=True)
            assert (await s.ws.close_handshake(code)).close_code == code
            await ended(s, "client_closed", code)


@pytest.mark.parametrize("parts,code", [
    ([1000], None),                 # exactly the limit, one frame
    ([1001], 1009),                 # one frame over
    ([500, 500], None),             # exactly the limit, fragmented
    ([500, 501], 1009),             # fragmented, over after reassembly
    ([400, 400, 400, 400], 1009),   # fails at the third fragment, before the end
    ([0, 1000, 0], None),
])
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
async def test_max_message_size(parts, code, opcode):
    async with running(app_for(), max_message_size=1000) as gw:
        s = await connect(gw, monitor=True)
        for i, size in enumerate(parts):
            s.ws.send_frame(opcode if i == 0 else CONT, b"z" * size, fin=(i == len(parts) - 1))
        if code is None:
            topic, payload, _ = await from_target()
            assert topic == "ws.message" and len(payload["data"]) == sum(parts)
            s.ws.send_text("next")
            assert (await from_target())[1]["data"] == "next"
            await s.ws.close_handshake()
            await ended(s, "client_closed", 1000)
        else:
            close = await s.ws.expect_close()
            assert close.close_code == code
            s.ws.send_close(code)  # a well-behaved client answers
            await s.ws.wait_eof()
            s.ws.abort()
            await ended(s, "message_too_big", 1009)


async def test_message_too_big_fails_fast_without_the_rest_of_the_message():
    """A fragmented message over the limit is refused when the limit is
    crossed, not when (if ever) the message ends."""
    async with running(app_for(), max_message_size=1000) as gw:
        s = await connect(gw, monitor=True)
        s.ws.send_binary(b"z" * 600, fin=False)
        s.ws.send_frame(CONT, b"z" * 600, fin=False)
        assert (await s.ws.expect_close()).close_code == 1009
        await s.ws.wait_eof()
        s.ws.abort()
        await ended(s, "message_too_big", 1009)


async def test_oversized_frame_header_is_refused_before_its_payload():
    async with running(app_for(), max_message_size=1000) as gw:
        s = await connect(gw, monitor=True)
        # Announce 10 MB, send only the header and a few bytes.
        header = encode_frame(BINARY, b"\x00" * 70000)[:14]
        s.ws.send_raw(header[:2] + (10_000_000).to_bytes(8, "big") + header[10:14] + b"abc")
        assert (await s.ws.expect_close()).close_code == 1009
        await s.ws.wait_eof()
        s.ws.abort()
        await ended(s, "message_too_big", 1009)


async def test_pings_are_answered_and_unsolicited_pongs_ignored():
    async with running(app_for()) as gw:
        s = await connect(gw, monitor=True)
        s.ws.send_ping(b"are you there")
        frame = await s.ws.recv_frame()
        assert (frame.opcode, frame.payload) == (PONG, b"are you there")
        s.ws.send_ping(b"")
        frame = await s.ws.recv_frame()
        assert (frame.opcode, frame.payload) == (PONG, b"")
        s.ws.send_pong(b"unsolicited")
        s.ws.send_pong(b"")
        s.ws.send_text("after pongs")
        assert await from_target() == ("ws.message", {"client_pid": s.client, "type": "text",
                                                      "data": "after pongs", "metadata": {}}, s.client)
        process.send(s.client, "ws.send", {"type": "text", "data": "reply"})
        assert await s.ws.recv_text() == "reply"  # no pong for the pongs, no close
        await s.ws.close_handshake()
        await ended(s, "client_closed", 1000)


async def test_idle_client_that_does_not_answer_pings_is_dropped_with_timeout():
    async with running(app_for(), ping_interval=0.2, ping_timeout=0.2) as gw:
        s = await connect(gw, monitor=True)
        ping = await s.ws.recv_frame()
        assert ping.opcode == PING
        # no pong
        close = await s.ws.recv_frame()
        assert close.opcode == CLOSE and close.close_code == 1001
        await s.ws.wait_eof()
        s.ws.abort()
        await ended(s, "timeout", 1001)


async def test_idle_client_that_answers_pings_stays():
    # Five pings answered: well past two ping timeouts, still connected.
    async with running(app_for(), ping_interval=0.2, ping_timeout=0.4) as gw:
        s = await connect(gw, monitor=True)
        for _ in range(5):
            ping = await s.ws.recv_frame()
            assert ping.opcode == PING
            s.ws.send_pong(ping.payload)
        s.ws.send_text("alive")
        assert (await from_target())[1]["data"] == "alive"
        await s.ws.close_handshake()
        await ended(s, "client_closed", 1000)


async def test_active_client_is_not_pinged():
    # The target's heartbeats pace the client: one message per 50 ms for
    # 1.2 s, so the connection is never idle for the 0.4 s ping interval.
    async with running(app_for(heartbeat_interval="50ms"), ping_interval=0.4, ping_timeout=0.4) as gw:
        s = await connect(gw)
        i = 0
        while True:
            topic, payload, _ = await from_target()
            if topic == "ws.message":
                continue
            assert topic == "ws.heartbeat"
            if payload["uptime"] >= 1.2:
                break
            s.ws.send_text(f"m{i}")
            i += 1
        assert i >= 10
        process.send(s.client, "ws.send", {"type": "text", "data": "reply"})
        assert await s.ws.recv_text() == "reply"
        assert s.ws.pings == []
        await s.ws.close_handshake()
        while (await from_target())[0] != "ws.leave":
            pass


async def test_ws_control_takes_what_the_header_takes():
    """One parser for the relay settings: ``metadata: null`` is {} in
    X-WS-Relay and in ws.control alike."""
    app = relay_app(relay_handler("relay:recorder", process.self(), metadata=None))
    async with running(app) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        join = (await expect("target"))[1]
        assert join["metadata"] == {}
        client = join["client_pid"]
        assert process.send(client, "ws.control", {"metadata": {"room": 1}}) is True
        assert process.send(client, "ws.control", {"metadata": None}) is True
        ws.send_text("hi")
        assert (await expect("target"))[1]["metadata"] == {}
        await ws.close_handshake()
