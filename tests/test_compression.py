"""permessage-deflate over real sockets (docs/guide.md section 5,
"Compression"): the offer answered in the
upgrade, compressed client messages relayed as the same ``ws.message``,
``ws.send`` and group sends compressed from WSRELAY_COMPRESSION_MIN_SIZE, and
the connection failed on what RFC 7692 and the limits forbid.

The client is tests.wsclient.RawWebSocket, which shows the frames as they
are on the wire (RSV1, compressed payloads); messages are compressed with
Python's zlib as a browser would.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any, Optional

import pytest
import websockets

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running, scrape, until
from tests.procs import relay_to
from tests.wsclient import BINARY, CONT, PING, RSV1, RSV2, TEXT, HandshakeRefused, RawWebSocket
from wsrelay import process

PATH = "/ws/chat"
EXTENSIONS = "Sec-WebSocket-Extensions"
AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAIL = b"\x00\x00\xff\xff"
ON = {"compression": True}


def deflate(data: bytes, wbits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflate(data: bytes, wbits: int = 15) -> bytes:
    """As a client that allowed the server a ``wbits`` window must be able to."""
    d = zlib.decompressobj(-wbits)
    return d.decompress(data + TAIL) + d.flush()


async def connect(gw: Any, offer: Optional[str] = "permessage-deflate", path: str = PATH) -> RawWebSocket:
    return await RawWebSocket.connect(gw, path, None if offer is None else {EXTENSIONS: offer})


def forward_app() -> Any:
    return relay_app(relay_handler("test:forward", process.self()))


async def joined() -> tuple[Any, Any]:
    """(target, client) of the ws.join a test:forward target saw."""
    target = await expect("ready")
    topic, payload, _ = await expect("seen")
    assert topic == "ws.join"
    return target, payload["client_pid"]


async def relayed() -> dict:
    topic, payload, _ = await expect("seen")
    assert topic == "ws.message", (topic, payload)
    return payload


async def left(target: Any) -> dict:
    """The ws.leave the target saw; the target is stopped."""
    topic, payload, _ = await expect("seen")
    assert topic == "ws.leave", (topic, payload)
    process.send(target, "stop")
    return payload


# -- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize("offers,answer", [
    (["permessage-deflate"], AGREED),
    (["permessage-deflate; client_max_window_bits"], AGREED),
    (["permessage-deflate; client_max_window_bits=10"], AGREED + "; client_max_window_bits=10"),
    (["permessage-deflate; server_max_window_bits=10"], AGREED + "; server_max_window_bits=10"),
    (['permessage-deflate; server_max_window_bits="12"'], AGREED + "; server_max_window_bits=12"),
    (["permessage-deflate; server_no_context_takeover; client_no_context_takeover"], AGREED),
    # The first offer that can be honoured, across headers and elements.
    (["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=11"],
     AGREED + "; server_max_window_bits=11"),
    (["permessage-deflate; server_max_window_bits=8, permessage-deflate"], AGREED),
    (["permessage-deflate; unknown_parameter, permessage-deflate; server_max_window_bits=9"],
     AGREED + "; server_max_window_bits=9"),
    # Nothing that can be honoured: uncompressed, never a refused upgrade.
    (["permessage-deflate; server_max_window_bits=8"], None),   # zlib's raw streams need 9 bits at least
    (["permessage-deflate; server_max_window_bits=16"], None),
    (["permessage-deflate; server_max_window_bits"], None),     # the server's needs a value
    (["permessage-deflate; client_max_window_bits=abc"], None),
    (["permessage-deflate; server_no_context_takeover=1"], None),
    (["permessage-deflate; client_no_context_takeover; client_no_context_takeover"], None),
    (['permessage-deflate; server_max_window_bits="1'], None),
    (["permessage-deflate;;"], None),
    (["x-webkit-deflate-frame"], None),
    ([",,,"], None),
    (["; permessage-deflate"], None),
    (["permessage-deflate=1"], None),
])
async def test_the_offer_is_answered_in_the_upgrade(offers, answer):
    async with running(forward_app(), **ON) as gw:
        ws = await RawWebSocket.connect(gw, PATH, [(EXTENSIONS, offer) for offer in offers])
        target, _ = await joined()
        assert ws.response.headers.getall(EXTENSIONS, []) == ([] if answer is None else [answer])
        # Whatever was agreed, the connection works.
        ws.send_text("hello")
        assert (await relayed())["data"] == "hello"
        await ws.close_handshake()
        assert (await left(target))["reason"] == "client_closed"


async def test_with_compression_off_an_offer_is_ignored_and_rsv1_is_a_protocol_error():
    async with running(forward_app()) as gw:
        ws = await connect(gw)
        target, _ = await joined()
        assert EXTENSIONS not in ws.response.headers
        ws.send_frame(TEXT, deflate(b"compressed anyway"), rsv=RSV1)
        assert (await ws.expect_close()).close_code == 1002
        assert (await left(target))["reason"] == "protocol_error"


async def test_with_compression_on_a_client_that_offers_nothing_is_uncompressed():
    async with running(forward_app(), **ON) as gw:
        ws = await connect(gw, offer=None)
        target, client = await joined()
        assert EXTENSIONS not in ws.response.headers
        process.send(client, "ws.send", {"type": "text", "data": "x" * 5000})
        frame = await ws.recv()
        assert (frame.rsv, frame.payload) == (0, b"x" * 5000)
        ws.send_frame(TEXT, deflate(b"not agreed"), rsv=RSV1)
        assert (await ws.expect_close()).close_code == 1002
        assert (await left(target))["reason"] == "protocol_error"


async def test_the_websockets_client_negotiates_and_round_trips():
    """An independent implementation on the other end (websockets compresses
    with context takeover unless told not to: our answer tells it not to)."""
    async with running(relay_app(relay_handler("relay:tagged_echo")), compression=True,
                       compression_min_size=0) as gw:
        async with websockets.connect(gw.url(PATH)) as ws:
            assert ws.response.headers[EXTENSIONS] == AGREED
            for message in ["hi", "{\"k\": " + "1" * 3000 + "}", bytes(range(256)) * 40, ""]:
                await ws.send(message)
                echo = await ws.recv()
                assert echo == (("echo:" + message) if isinstance(message, str) else message)


# -- client -> target ------------------------------------------------------------------------


async def test_compressed_messages_reach_the_target_as_the_same_ws_message():
    text = json.dumps({"user": "ann", "text": "héllo " * 200})
    binary = bytes(range(256)) * 20
    async with running(forward_app(), **ON) as gw:
        ws = await connect(gw)
        target, _ = await joined()
        ws.send_frame(TEXT, deflate(text.encode()), rsv=RSV1)
        ws.send_frame(BINARY, deflate(binary), rsv=RSV1)
        # Fragmented: RSV1 on the first frame only.
        packed = deflate(text.encode())
        ws.send_frame(TEXT, packed[:10], fin=False, rsv=RSV1)
        ws.send_frame(CONT, packed[10:20], fin=False)
        ws.send_frame(CONT, packed[20:])
        # Uncompressed messages on the same connection (RFC 7692 §6: per message).
        ws.send_text(text)
        ws.send_frame(TEXT, deflate(b""), rsv=RSV1)
        got = [await relayed() for _ in range(5)]
        assert [(p["type"], p["data"]) for p in got] == [
            ("text", text), ("binary", binary), ("text", text), ("text", text), ("text", "")]
        assert type(got[1]["data"]) is bytes
        await ws.close_handshake()
        await left(target)


@pytest.mark.parametrize("frames,code,reason", [
    pytest.param([(TEXT, b"ab", False, 0), (CONT, b"cd", True, RSV1)], 1002, "protocol_error",
                 id="rsv1 on a continuation"),
    pytest.param([(TEXT, deflate(b"abcdef")[:3], False, RSV1), (CONT, deflate(b"abcdef")[3:], True, RSV1)],
                 1002, "protocol_error", id="rsv1 on a compressed message's continuation"),
    pytest.param([(PING, b"", True, RSV1)], 1002, "protocol_error", id="rsv1 on a ping"),
    pytest.param([(TEXT, deflate(b"x"), True, RSV1 | RSV2)], 1002, "protocol_error", id="rsv2 with rsv1"),
    pytest.param([(BINARY, b"\xff\xff\xff\xff", True, RSV1)], 1007, "protocol_error", id="corrupt deflate data"),
    pytest.param([(TEXT, deflate(b"bad \xff utf-8"), True, RSV1)], 1007, "protocol_error",
                 id="invalid utf-8 once inflated"),
    pytest.param([(BINARY, deflate(b"\x00" * 2000), True, RSV1)], 1009, "message_too_big",
                 id="inflates past the limit"),
    # picows' own frame bound has a margin for compressed frames: the relay's holds.
    pytest.param([(TEXT, b"x" * 1001, True, 0)], 1009, "message_too_big", id="a plain message past the limit"),
])
async def test_what_rfc_7692_and_the_limits_forbid_fails_the_connection(frames, code, reason):
    async with running(forward_app(), max_message_size=1000, **ON) as gw:
        ws = await connect(gw)
        target, _ = await joined()
        for opcode, payload, fin, rsv in frames:
            ws.send_frame(opcode, payload, fin=fin, rsv=rsv)
        assert (await ws.expect_close()).close_code == code
        leave = await left(target)
        assert (leave["reason"], leave["code"]) == (reason, code)


async def test_a_bomb_in_fragments_closes_with_1009():
    """64 MiB of zeros in about 64 KiB of compressed fragments against a
    1 MiB limit (that at most the limit is inflated: tests/test_compression_units.py)."""
    bomb = deflate(b"\x00" * (64 << 20))
    assert len(bomb) < 100_000
    async with running(forward_app(), max_message_size=1 << 20, **ON) as gw:
        ws = await connect(gw)
        target, _ = await joined()
        ws.send_frame(BINARY, bomb[:4096], fin=False, rsv=RSV1)
        for start in range(4096, len(bomb), 4096):
            ws.send_frame(CONT, bomb[start:start + 4096], fin=start + 4096 >= len(bomb))
        assert (await ws.expect_close(timeout=10)).close_code == 1009
        assert (await left(target))["reason"] == "message_too_big"


async def test_compressed_frames_held_while_paused_are_replayed_in_order():
    """Backpressure holds a compressed frame with its RSV1, and acts on it
    as it came once the target makes room."""
    gate = asyncio.Event()
    app = relay_app(relay_handler("relay:gated", process.self(), gate, "target"))
    async with running(app, **ON) as gw:
        ws = await connect(gw)
        assert (await expect("ready"))[0] == "target"
        capacity = wsrelay.node().mailbox_capacity
        pauses = wsrelay.node().counters.relay_backpressure_pauses
        messages = [f"message {n} " + "padding " * 30 for n in range(capacity + 20)]
        for n, message in enumerate(messages):
            packed = deflate(message.encode())
            if n % 2:
                ws.send_frame(TEXT, packed[:5], fin=False, rsv=RSV1)
                ws.send_frame(CONT, packed[5:])
            else:
                ws.send_frame(TEXT, packed, rsv=RSV1)
        await ws.drain()
        await until(lambda: wsrelay.node().counters.relay_backpressure_pauses > pauses, what="a pause")
        gate.set()
        await expect("backlog")
        await ws.close_handshake()
        seen = await expect("target")
    assert [data for topic, data in seen if topic == "ws.message"] == messages


# -- target -> client --------------------------------------------------------------------------


async def test_ws_send_is_compressed_from_the_minimum_size():
    async with running(forward_app(), compression=True, compression_min_size=100) as gw:
        ws = await connect(gw)
        target, client = await joined()
        short, long = "s" * 99, json.dumps({"rows": [{"id": n, "name": f"user{n}"} for n in range(50)]})
        process.send(client, "ws.send", {"type": "text", "data": short})
        process.send(client, "ws.send", {"type": "text", "data": long})
        process.send(client, "ws.send", {"type": "binary", "data": bytes(100_000)})
        first, second, third = await ws.recv(), await ws.recv(), await ws.recv()
        assert (first.opcode, first.rsv, first.payload) == (TEXT, 0, short.encode())
        assert (second.opcode, second.rsv) == (TEXT, RSV1)
        assert len(second.payload) < len(long) and inflate(second.payload) == long.encode()
        assert (third.opcode, third.rsv) == (BINARY, RSV1)
        assert inflate(third.payload) == bytes(100_000)
        await ws.close_handshake()
        await left(target)


async def test_a_smaller_server_window_is_honoured():
    data = ("".join(chr(65 + (n * 7919) % 26) for n in range(3000)) * 4).encode()
    async with running(forward_app(), **ON) as gw:
        ws = await connect(gw, "permessage-deflate; server_max_window_bits=9")
        target, client = await joined()
        process.send(client, "ws.send", {"type": "binary", "data": data})
        frame = await ws.recv()
        assert frame.rsv == RSV1
        assert inflate(frame.payload, wbits=9) == data
        await ws.close_handshake()
        await left(target)


async def test_bytes_out_count_the_compressed_payload():
    async with running(forward_app(), **ON) as gw:
        ws = await connect(gw)
        target, client = await joined()
        before = (await scrape(gw))("wsrelay_bytes_out_total")
        process.send(client, "ws.send", {"type": "text", "data": "abc" * 10_000})
        frame = await ws.recv()
        assert frame.rsv == RSV1 and len(frame.payload) < 1000
        await until(lambda: wsrelay.node().counters.ws_bytes_out >= before + len(frame.payload),
                    what="the write being counted")
        after = (await scrape(gw))("wsrelay_bytes_out_total")
        assert after - before == len(frame.payload)
        await ws.close_handshake()
        await left(target)


async def test_a_group_send_compresses_for_the_members_that_agreed_and_frames_plain_for_the_others():
    room_pid = process.spawn("relay:say_room", None, process.self())

    def handler(req: Any, res: Any) -> None:
        relay_to(res, room_pid)

    offers = ["permessage-deflate", None, "permessage-deflate", "permessage-deflate; server_max_window_bits=10",
              None]
    async with running(relay_app(handler), compression=True, compression_min_size=64) as gw:
        clients = []
        for offer in offers:
            clients.append(await connect(gw, offer))
            await expect("joined")
        message = json.dumps({"event": "presence", "users": [f"user-{n}" for n in range(100)]})
        process.send(room_pid, "say", {"type": "text", "data": message})
        assert await expect("said") == len(offers)
        frames = [await ws.recv() for ws in clients]
        for offer, frame in zip(offers, frames):
            if offer is None:
                assert (frame.rsv, frame.payload) == (0, message.encode())
            else:
                assert frame.rsv == RSV1
                assert inflate(frame.payload, 10 if "bits=10" in offer else 15) == message.encode()
        # The members with the same window got the same compressed bytes.
        assert frames[0].payload == frames[2].payload
        # Under the minimum size, one plain frame for everyone.
        process.send(room_pid, "say", {"type": "text", "data": "short"})
        assert await expect("said") == len(offers)
        for ws in clients:
            frame = await ws.recv()
            assert (frame.rsv, frame.payload) == (0, b"short")
        for ws in clients:
            await ws.close_handshake()
        process.terminate(room_pid)


async def test_broadcast_to_pids_mixes_compressed_and_plain():
    async with running(forward_app(), **ON) as gw:
        plain_ws = await connect(gw, None)
        plain_target, plain_pid = await joined()
        packed_ws = await connect(gw)
        packed_target, packed_pid = await joined()
        message = "broadcast " * 100
        assert process.broadcast([plain_pid, packed_pid], {"type": "text", "data": message}) == 2
        plain_frame, packed_frame = await plain_ws.recv(), await packed_ws.recv()
        assert (plain_frame.rsv, plain_frame.payload) == (0, message.encode())
        assert packed_frame.rsv == RSV1 and inflate(packed_frame.payload) == message.encode()
        await plain_ws.close_handshake()
        await left(plain_target)
        await packed_ws.close_handshake()
        await left(packed_target)


async def test_a_bad_relay_header_is_still_refused_with_an_offer():
    """Negotiation happens only once the upgrade is going ahead."""
    def handler(req: Any, res: Any) -> None:
        res.header("X-WS-Relay", "not json")

    async with running(relay_app(handler), **ON) as gw:
        with pytest.raises(HandshakeRefused) as refused:
            await connect(gw)
        assert refused.value.response.status == 500
        assert EXTENSIONS not in refused.value.response.headers
