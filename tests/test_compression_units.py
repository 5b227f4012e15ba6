"""permessage-deflate in the frame path, without sockets: what FrameReader
makes of compressed client frames (RSV1), and the frames the server writes to
a connection that negotiated compression (docs/guide.md section 5,
"Compression"). The deflate module's own
pieces (negotiation, the bounded inflater) are in tests/test_deflate_unit.py.

Client messages are compressed here with Python's zlib, as a browser would:
a raw DEFLATE stream, sync-flushed, without its trailing 0x00 0x00 0xff 0xff.
"""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows.picows import WSMsgType, _make_test_ws_frame

from wsrelay._core.deflate import MAX_WINDOW_BITS, acquire_inflater, release_inflater
from wsrelay._core.frames import FrameReader, frame_for_send

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONT = WSMsgType.CONTINUATION
PING = WSMsgType.PING

PROPERTY = settings(max_examples=150, deadline=None)
TAIL = b"\x00\x00\xff\xff"
RESERVED = (1002, "reserved bits set without a negotiated extension")
MISPLACED = (1002, "RSV1 set on a frame that does not start a data message")
CORRUPT = (1007, "compressed message is not valid DEFLATE data")


def deflate(data: bytes, wbits: int = 15, level: int = 6) -> bytes:
    """``data`` as a client sends it compressed (RFC 7692 §7.2.1)."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    return d.decompress(data + TAIL) + d.flush()


def frame(opcode, payload: bytes = b"", fin: bool = True, rsv1: bool = False):
    return _make_test_ws_frame(opcode, payload, fin, rsv1)


def feed_compressed(reader: FrameReader, opcode, pieces: list[bytes]) -> list:
    """Feed ``pieces`` as one compressed message: RSV1 on the first frame only."""
    return [reader.feed(frame(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1, rsv1=i == 0))
            for i, piece in enumerate(pieces)]


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    bounds = [0, *sorted(positions), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def parse_server_frame(data: bytes) -> tuple[int, int, bytes]:
    """(first byte, header size, payload) of one unmasked server frame."""
    length = data[1] & 0x7F
    header = 2
    if length == 126:
        length, header = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, header = int.from_bytes(data[2:10], "big"), 10
    assert data[1] & 0x80 == 0, "server frames are not masked"
    assert len(data) == header + length
    return data[0], header, data[header:]


# -- RSV1: only on the first frame of a message of a connection that negotiated it ------------


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_rsv1_without_negotiation_is_a_protocol_error(opcode):
    reader = FrameReader(1000)
    assert reader.feed(frame(opcode, deflate(b"hello"), rsv1=True)) == RESERVED
    assert reader.feed(frame(opcode, deflate(b"hello"), fin=False, rsv1=True)) == RESERVED
    assert reader.in_progress == 0 and not reader.inflating


def test_rsv1_on_a_continuation_is_a_protocol_error():
    reader = FrameReader(1000, deflate=True)
    # A plain message's continuation, and a compressed message's second frame.
    assert reader.feed(frame(TEXT, b"ab", fin=False)) is None
    assert reader.feed(frame(CONT, b"cd", rsv1=True)) == MISPLACED
    data = deflate(b"abcdef")
    assert reader.feed(frame(TEXT, data[:2], fin=False, rsv1=True)) is None
    assert reader.inflating
    assert reader.feed(frame(CONT, data[2:], rsv1=True)) == MISPLACED
    assert reader.in_progress == 0 and not reader.inflating


def test_plain_messages_still_pass_on_a_negotiated_connection():
    """RFC 7692 §6: compression is per message; RSV1 clear is a plain message."""
    reader = FrameReader(1000, deflate=True)
    assert reader.feed(frame(TEXT, b"plain")) == "plain"
    assert reader.feed(frame(BINARY, b"\x00\x01", fin=False)) is None
    assert reader.feed(frame(CONT, b"\x02")) == b"\x00\x01\x02"
    assert reader.feed(frame(TEXT, deflate(b"packed"), rsv1=True)) == "packed"


# -- compressed messages: the same message either way ---------------------------------------


@pytest.mark.parametrize("opcode,message", [
    (TEXT, "héllo wörld € " * 40),
    (BINARY, bytes(range(256)) * 8),
    (TEXT, ""),
    (BINARY, b""),
])
def test_a_compressed_frame_is_the_message_it_inflates_to(opcode, message):
    reader = FrameReader(1 << 20, deflate=True)
    raw = message.encode() if isinstance(message, str) else message
    got = reader.feed(frame(opcode, deflate(raw), rsv1=True))
    assert got == message and type(got) is type(message)


@pytest.mark.parametrize("payload", [b"\x00", b"\x02\x00", b""])
def test_the_empty_messages_of_rfc_7692(payload):
    """§7.2.3.6: an empty message may be one 0x00 byte (an empty stored
    block's first byte) or the compressor's empty output."""
    reader = FrameReader(100, deflate=True)
    assert reader.feed(frame(TEXT, payload, rsv1=True)) == ""
    assert reader.feed(frame(BINARY, payload, rsv1=True)) == b""


@PROPERTY
@given(
    data=st.binary(max_size=3000) | st.text(max_size=1000).map(str.encode),
    positions=st.lists(st.integers(0, 1200), max_size=8),
    wbits=st.integers(9, 15),
    level=st.integers(0, 9),
    text=st.booleans(),
)
def test_fragmented_compressed_messages_are_inflated_as_they_come(data, positions, wbits, level, text):
    """Whatever the client's window and level, and wherever the compressed
    bytes are cut into fragments (empty ones included)."""
    opcode = TEXT if text else BINARY
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        opcode = BINARY
    compressed = deflate(data, wbits, level)
    pieces = cut(compressed, [p for p in positions if p <= len(compressed)])
    reader = FrameReader(1 << 20, deflate=True)
    results = feed_compressed(reader, opcode, pieces)
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == (data.decode() if opcode == TEXT else data)
    assert reader.in_progress == 0 and not reader.inflating


def test_a_compressed_message_between_plain_ones_and_after_an_error():
    reader = FrameReader(1000, deflate=True)
    data = deflate(b"second message")
    assert reader.feed(frame(TEXT, b"first")) == "first"
    assert feed_compressed(reader, TEXT, [data[:3], data[3:]]) == [None, "second message"]
    assert reader.feed(frame(TEXT, b"\xff\x00\x00\x00", rsv1=True)) == CORRUPT
    assert reader.feed(frame(TEXT, deflate(b"third"), rsv1=True)) == "third"


# -- bounds: the limit counts inflated bytes, and inflation stops at it -------------------------


def test_the_limit_counts_inflated_bytes():
    reader = FrameReader(1000, deflate=True)
    assert reader.feed(frame(BINARY, deflate(b"a" * 1000), rsv1=True)) == b"a" * 1000
    too_big = deflate(b"a" * 1001)
    assert len(too_big) < 20
    assert reader.feed(frame(BINARY, too_big, rsv1=True))[0] == 1009
    assert feed_compressed(reader, BINARY, [too_big[:5], too_big[5:]])[-1][0] == 1009
    assert reader.in_progress == 0 and not reader.inflating


def test_a_bomb_fails_at_the_first_fragment_past_the_limit():
    """A few hundred bytes that would inflate to 64 MiB, in fragments: the
    reader has inflated at most the limit when it says 1009, and nothing
    of the message is kept."""
    limit = 1 << 16
    bomb = deflate(b"\x00" * (64 << 20), level=9)
    assert len(bomb) < 100_000
    reader = FrameReader(limit, deflate=True)
    pieces = cut(bomb, list(range(16, len(bomb), 16)))
    results = []
    for i, piece in enumerate(pieces):
        results.append(reader.feed(frame(BINARY if i == 0 else CONT, piece, fin=i == len(pieces) - 1, rsv1=i == 0)))
        if results[-1] is not None:
            break
        assert reader.buffered <= limit and reader.allocated <= limit
    assert results[-1] == (1009, "message too big")
    assert len(results) < len(pieces), "the reader went on past the limit"
    assert reader.buffered == 0 and not reader.inflating


def test_empty_compressed_continuations_end_at_the_frame_bound():
    """As for plain messages: at most as many frames as the limit has bytes."""
    reader = FrameReader(50, deflate=True)
    assert reader.feed(frame(TEXT, b"", fin=False, rsv1=True)) is None
    results = [reader.feed(frame(CONT, b"", fin=False)) for _ in range(60)]
    assert results[:49] == [None] * 49
    assert results[49] == (1009, "message too big")


# -- invalid data: 1007 ---------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff\xff",            # a reserved block type (BTYPE=11)
    b"\x00\x05\x00\x00\x00",        # a stored block whose length and its complement disagree
    b"\x7f" + os.urandom(8),        # a dynamic block's code lengths, garbled
], ids=["reserved block type", "stored length mismatch", "bad dynamic block"])
def test_corrupt_deflate_data_is_1007(payload):
    reader = FrameReader(1000, deflate=True)
    result = reader.feed(frame(BINARY, payload, rsv1=True))
    assert result == CORRUPT, (payload, result)
    # Fragmented: it fails at the fragment where the data goes wrong.
    results = feed_compressed(reader, BINARY, [payload[:2], payload[2:]])
    assert [r for r in results if r is not None][0] == CORRUPT
    assert not reader.inflating


def test_invalid_utf8_in_compressed_text_is_1007():
    reader = FrameReader(1000, deflate=True)
    assert reader.feed(frame(TEXT, deflate(b"ok \xff"), rsv1=True))[0] == 1007
    # Fragmented: the bad byte fails the message at its fragment, not at the end.
    bad = deflate(b"\xc3" + b"a" * 500, level=0)
    assert reader.feed(frame(TEXT, bad[:100], fin=False, rsv1=True)) == (1007, "invalid UTF-8 in text message")
    # Cut inside a sequence at the end, in one frame and in two.
    cut_short = deflate("ab€".encode()[:-1])
    assert reader.feed(frame(TEXT, cut_short, rsv1=True))[0] == 1007
    assert feed_compressed(reader, TEXT, [cut_short[:2], cut_short[2:]])[-1] == (
        1007, "text message ends inside a UTF-8 sequence")
    assert not reader.inflating


def test_an_inflater_is_held_only_for_a_fragmented_compressed_message():
    """A connection between messages holds no zlib state: the worker's
    spare inflater it used is back among the spares."""
    spare = acquire_inflater()
    release_inflater(spare)
    reader = FrameReader(1000, deflate=True)
    data = deflate(b"x" * 300)
    reader.feed(frame(TEXT, data, rsv1=True))
    assert not reader.inflating
    reader.feed(frame(TEXT, data[:3], fin=False, rsv1=True))
    assert reader.inflating
    reader.feed(frame(CONT, data[3:]))
    assert not reader.inflating
    # The same spare served the message, and is back.
    again = acquire_inflater()
    assert again is spare
    release_inflater(again)


# -- frames out --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    {"type": "text", "data": '{"user": "ann", "text": "' + "hello " * 50 + '"}'},
    {"type": "binary", "data": bytes(1000)},
    {"type": "binary", "data": bytearray(b"abc" * 3000)},   # over the copy limit: header and payload apart
    {"type": "text", "data": "x" * 70_000},                 # a 64-bit length
])
@pytest.mark.parametrize("window_bits", [9, 12, 15])
def test_sent_messages_are_compressed_with_rsv1(payload, window_bits):
    data = payload["data"]
    raw = data.encode() if isinstance(data, str) else bytes(data)
    first, _, body = parse_server_frame(frame_for_send(payload, window_bits, 128))
    opcode = 0x1 if payload["type"] == "text" else 0x2
    assert first == 0x80 | 0x40 | opcode
    assert len(body) < len(raw)
    d = zlib.decompressobj(-window_bits)  # inflates within the window the client allowed
    assert d.decompress(body + TAIL) == raw


@pytest.mark.parametrize("size,compressed", [(0, False), (127, False), (128, True), (129, True)])
def test_messages_under_the_minimum_size_go_plain(size, compressed):
    payload = {"type": "text", "data": "a" * size}
    first, _, body = parse_server_frame(frame_for_send(payload, MAX_WINDOW_BITS, 128))
    assert bool(first & 0x40) is compressed
    assert (inflate(body) if compressed else body) == b"a" * size
    assert frame_for_send(payload, MAX_WINDOW_BITS, 128) != frame_for_send(payload) or not compressed


def test_each_sent_message_is_a_stream_of_its_own():
    """No context takeover: the second of two equal messages is compressed
    exactly like the first, and inflates without the first."""
    payload = {"type": "text", "data": "the same message, twice " * 10}
    one, two = frame_for_send(payload, 15, 0), frame_for_send(payload, 15, 0)
    assert one == two
    assert inflate(parse_server_frame(two)[2]) == payload["data"].encode()


def test_a_malformed_payload_is_refused_before_compression():
    with pytest.raises(ValueError):
        frame_for_send({"type": "text", "data": b"bytes"}, 15, 0)
    with pytest.raises(ValueError):
        frame_for_send({"type": "json", "data": "x"}, 15, 0)
