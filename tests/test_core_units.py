"""The pure parts of the core, tested without sockets through the views their
modules export: frames made into messages (FrameReader), the frames the server
writes, the mailbox ring and its room waiters, the relay settings, the
counters table and the rate-limited log."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import random
import re
import time
from typing import Any, Optional, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows.picows import WSMsgType, _make_test_ws_frame

import wsrelay
from wsrelay._core.frames import FrameReader, close_for, frame_for_send, utf8_valid_in_pieces
from wsrelay._core.mailbox import Mailbox, _CallbackWaiter
from wsrelay._core.relayspec import FIELDS, parse_control_payload, parse_relay_header
from wsrelay._core.stats import COUNTERS, Counters, LimitedLog

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONT = WSMsgType.CONTINUATION

PROPERTY = settings(max_examples=200, deadline=None)

Result = Union[str, bytes, None, tuple[int, str]]


def frame(opcode: WSMsgType, payload: bytes = b"", fin: bool = True, rsv1: bool = False):
    return _make_test_ws_frame(opcode, payload, fin, rsv1)


def feed_message(reader: FrameReader, opcode: WSMsgType, pieces: list[bytes]) -> list[Result]:
    """Feed ``pieces`` as one message (the first frame carries the opcode,
    the last one FIN); what the reader said after each frame."""
    results = []
    for i, piece in enumerate(pieces):
        results.append(reader.feed(frame(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1)))
    return results


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    """``data`` cut at ``positions`` (repeats make empty pieces)."""
    bounds = [0, *sorted(positions), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# -- 1. frames -> messages ------------------------------------------------------------


def test_single_text_and_binary_frames_are_whole_messages():
    reader = FrameReader(1000)
    assert reader.feed(frame(TEXT, "héllo €".encode())) == "héllo €"
    message = reader.feed(frame(BINARY, b"\x00\xff\xed\xa0"))
    assert message == b"\x00\xff\xed\xa0" and type(message) is bytes
    assert reader.feed(frame(TEXT, b"")) == ""
    assert reader.feed(frame(BINARY, b"")) == b""
    assert reader.in_progress == 0 and reader.buffered == 0


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
@pytest.mark.parametrize(
    "pieces",
    [
        [b"ab", b"cd"],
        [b"a", b"", b"b"],
        [b"", b"", b"abc"],
        [b"abc", b"", b""],
        [b"x"] * 10,
        [b"", b""],
    ],
)
def test_fragmented_message_is_reassembled(opcode, pieces):
    reader = FrameReader(1000)
    so_far = 0
    for i, piece in enumerate(pieces[:-1]):
        assert reader.feed(frame(opcode if i == 0 else CONT, piece, fin=False)) is None
        so_far += len(piece)
        assert reader.in_progress == int(opcode)
        assert reader.buffered == so_far
    whole = b"".join(pieces)
    assert reader.feed(frame(CONT, pieces[-1])) == (whole.decode() if opcode == TEXT else whole)
    assert reader.in_progress == 0 and reader.buffered == 0


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_empty_fragments_around_a_limit_sized_one_are_accepted(opcode):
    reader = FrameReader(1000)
    results = feed_message(reader, opcode, [b"", b"a" * 1000, b""])
    assert results[:2] == [None, None]
    assert results[2] == ("a" * 1000 if opcode == TEXT else b"a" * 1000)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_single_frame_at_the_limit_passes_and_one_byte_more_is_1009(opcode):
    reader = FrameReader(1000)
    assert len(reader.feed(frame(opcode, b"a" * 1000))) == 1000
    assert reader.feed(frame(opcode, b"a" * 1001)) == (1009, "message too big")


def test_the_limit_counts_utf8_bytes_not_characters():
    reader = FrameReader(1000)
    assert reader.feed(frame(TEXT, ("é" * 500).encode())) == "é" * 500
    assert reader.feed(frame(TEXT, ("é" * 500 + "a").encode())) == (1009, "message too big")
    assert feed_message(reader, TEXT, [("é" * 250).encode(), ("é" * 250).encode()])[-1] == "é" * 500
    assert feed_message(reader, TEXT, [("é" * 250).encode(), ("é" * 250 + "a").encode()])[-1][0] == 1009


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_fragmented_message_over_the_limit_fails_at_the_fragment_that_passes_it(opcode):
    reader = FrameReader(1000)
    assert feed_message(reader, opcode, [b"a" * 500, b"a" * 500])[-1] == (
        "a" * 1000 if opcode == TEXT else b"a" * 1000)
    # The fragment that takes it over the limit fails at once, FIN or not.
    results = [reader.feed(frame(opcode, b"a" * 500, fin=False)),
               reader.feed(frame(CONT, b"a" * 501, fin=False))]
    assert results == [None, (1009, "message too big")]
    assert reader.in_progress == 0 and reader.buffered == 0
    # A first fragment over the limit on its own fails too.
    assert reader.feed(frame(opcode, b"a" * 1001, fin=False)) == (1009, "message too big")
    assert reader.in_progress == 0


def test_a_message_may_have_as_many_frames_as_the_limit_has_bytes():
    reader = FrameReader(1000)
    pieces = [b""] * 1000
    results = feed_message(reader, BINARY, pieces)
    assert results == [None] * 999 + [b""]


def test_the_frame_after_the_limit_th_frame_is_1009():
    # A non-FIN start and 999 empty continuations make 1000 frames, all kept;
    # the 1000th continuation is frame 1001 and fails, FIN or not.
    for last_fin in (False, True):
        reader = FrameReader(1000)
        assert reader.feed(frame(BINARY, b"", fin=False)) is None
        for _ in range(999):
            assert reader.feed(frame(CONT, b"", fin=False)) is None
        assert reader.buffered == 0 and reader.in_progress == int(BINARY)
        assert reader.feed(frame(CONT, b"", fin=last_fin)) == (1009, "message too big")
        assert reader.in_progress == 0


def test_a_small_limit_bounds_frames_as_well_as_bytes():
    reader = FrameReader(3)
    assert feed_message(reader, BINARY, [b"a", b"", b"b"])[-1] == b"ab"
    assert feed_message(reader, BINARY, [b"a", b"", b"", b"b"])[-1] == (1009, "message too big")


def test_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        FrameReader(0)


@pytest.mark.parametrize("fin", [False, True])
def test_continuation_without_a_message_is_1002(fin):
    reader = FrameReader(1000)
    assert reader.feed(frame(CONT, b"x", fin=fin)) == (1002, "continuation frame without a message in progress")
    assert reader.in_progress == 0


@pytest.mark.parametrize("first", [TEXT, BINARY])
@pytest.mark.parametrize("second", [TEXT, BINARY])
@pytest.mark.parametrize("fin", [False, True])
def test_new_message_inside_a_fragmented_one_is_1002_and_forgets_it(first, second, fin):
    reader = FrameReader(1000)
    assert reader.feed(frame(first, b"abc", fin=False)) is None
    assert reader.feed(frame(second, b"def", fin=fin)) == (
        1002, "new message started before the fragmented one ended")
    assert reader.in_progress == 0 and reader.buffered == 0
    # The dropped message is gone: its continuation has nothing to continue.
    assert reader.feed(frame(CONT, b"ghi"))[0] == 1002
    # And the reader takes a fresh message.
    assert reader.feed(frame(TEXT, b"fresh")) == "fresh"


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_reserved_bits_are_1002_wherever_they_come(opcode):
    reader = FrameReader(1000)
    expected = (1002, "reserved bits set without a negotiated extension")
    assert reader.feed(frame(opcode, b"x", rsv1=True)) == expected
    assert reader.feed(frame(opcode, b"x", fin=False, rsv1=True)) == expected
    assert reader.in_progress == 0
    assert reader.feed(frame(opcode, b"x", fin=False)) is None
    assert reader.feed(frame(CONT, b"y", fin=False, rsv1=True)) == expected
    assert reader.in_progress == 0 and reader.buffered == 0
    assert reader.feed(frame(CONT, b"z"))[0] == 1002


@pytest.mark.parametrize(
    "pieces, bad_at",
    [
        # A surrogate (U+D800..U+DFFF) can never be completed: Python's
        # incremental decoder waits after b"\xed\xa0", the reader must not.
        ([b"ok", b"\xed\xa0", b"\x80"], 1),
        ([b"\xed", b"\xa0", b"\x80"], 1),
        ([b"a", b"\xf4\x90", b"\x80\x80"], 1),  # above U+10FFFF
        ([b"\xe0\x80", b"\x80"], 0),  # overlong
        ([b"\xf0", b"\x8f"], 1),  # overlong 4-byte
        ([b"ab", b"c\xc0", b"\x80"], 1),  # C0/C1 start only overlongs
        ([b"", b"\xff", b""], 1),
        ([b"x", b"\xf5\x80\x80\x80"], 1),
        ([b"\xe2\x82", b"a"], 1),  # a sequence interrupted by ASCII
        ([b"abcdefgh" * 3, b"abcdefg\x80", b"ok"], 1),  # past the 8-byte ASCII run
    ],
)
def test_invalid_utf8_fails_at_the_first_fragment_that_makes_it_invalid(pieces, bad_at):
    reader = FrameReader(1000)
    results = feed_message(reader, TEXT, pieces)
    assert results[:bad_at] == [None] * bad_at
    assert results[bad_at] == (1007, "invalid UTF-8 in text message")
    assert reader.in_progress == 0 and reader.buffered == 0


@pytest.mark.parametrize("pieces", [[b"a", b"\xe2\x82"], [b"\xf0", b"\x9f", b"\x98"], [b"\xc3", b""],
                                    [b"ok", b"", b"\xed"]])
def test_text_ending_inside_a_utf8_sequence_is_1007(pieces):
    reader = FrameReader(1000)
    results = feed_message(reader, TEXT, pieces)
    assert results == [None] * (len(pieces) - 1) + [(1007, "text message ends inside a UTF-8 sequence")]
    assert reader.in_progress == 0 and reader.buffered == 0


def test_characters_cut_across_fragments_are_accepted():
    reader = FrameReader(1000)
    assert feed_message(reader, TEXT, [b"\xe2", b"\x82", b"\xac"])[-1] == "€"
    assert feed_message(reader, TEXT, [b"\xf0", b"\x9f", b"", b"\x98", b"\x80"])[-1] == "😀"
    assert feed_message(reader, TEXT, [b"\xed\x9f", b"\xbf"])[-1] == "\ud7ff"
    assert feed_message(reader, TEXT, [b"\xf4\x8f\xbf", b"\xbf"])[-1] == "\U0010ffff"


def test_single_frame_invalid_utf8_is_1007_and_binary_is_not_checked():
    reader = FrameReader(1000)
    assert reader.feed(frame(TEXT, b"\xed\xa0\x80"))[0] == 1007
    assert reader.feed(frame(TEXT, b"ab\xe2\x82"))[0] == 1007
    assert reader.feed(frame(BINARY, b"\xed\xa0\x80")) == b"\xed\xa0\x80"
    assert feed_message(reader, BINARY, [b"\xed", b"\xa0"])[-1] == b"\xed\xa0"


@PROPERTY
@given(text=st.text(max_size=300), data=st.data())
def test_property_text_in_random_fragments_comes_back_whole(text, data):
    encoded = text.encode()
    positions = data.draw(st.lists(st.integers(0, len(encoded)), max_size=12))
    reader = FrameReader(1 << 20)
    results = feed_message(reader, TEXT, cut(encoded, positions))
    assert results == [None] * (len(results) - 1) + [text]
    assert reader.in_progress == 0


@PROPERTY
@given(payload=st.binary(max_size=300), data=st.data())
def test_property_binary_in_random_fragments_comes_back_whole(payload, data):
    positions = data.draw(st.lists(st.integers(0, len(payload)), max_size=12))
    reader = FrameReader(1 << 20)
    results = feed_message(reader, BINARY, cut(payload, positions))
    assert results == [None] * (len(results) - 1) + [payload]


# Bytes that make UTF-8 interesting: every boundary of RFC 3629's table.
_EDGE_BYTES = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC,
               0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]


@st.composite
def nearly_utf8(draw) -> bytes:
    """Valid UTF-8 with a few bytes changed, inserted or removed: mostly
    almost-valid input, where a validator's mistakes show."""
    data = bytearray(draw(st.text(max_size=60)).encode())
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(_EDGE_BYTES) | st.integers(0, 255))
        action = draw(st.sampled_from(["insert", "replace", "delete"]))
        if action == "insert" or where == len(data):
            data.insert(where, byte)
        elif action == "replace":
            data[where] = byte
        else:
            del data[where]
    return bytes(data)


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _completable(prefix: bytes) -> bool:
    """Whether some valid UTF-8 text starts with ``prefix``. A cut sequence
    needs at most 3 more bytes, and one of 0x80, 0x90, 0xA0 fits every
    position of every sequence (after E0, ED, F0, F4 too)."""
    tails = (bytes(t) for n in range(4) for t in itertools.product((0x80, 0x90, 0xA0), repeat=n))
    return any(_decodes(prefix + t) for t in tails)


@PROPERTY
@given(payload=st.binary(max_size=40) | nearly_utf8(), data=st.data())
def test_property_utf8_verdict_agrees_with_strict_decode(payload, data):
    positions = data.draw(st.lists(st.integers(0, len(payload)), max_size=8))
    pieces = cut(payload, positions)
    valid = _decodes(payload)
    assert utf8_valid_in_pieces(pieces) is valid

    reader = FrameReader(1 << 20)
    results = feed_message(reader, TEXT, pieces)
    if valid:
        assert results == [None] * (len(pieces) - 1) + [payload.decode()]
        return
    # It fails at the first fragment after which no text could be valid, or,
    # if every prefix could still be completed, at the last (cut inside).
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]
    bad_at = next((i for i, end in enumerate(ends) if not _completable(payload[:end])), len(pieces) - 1)
    assert results[:bad_at] == [None] * bad_at
    assert results[bad_at] is not None and results[bad_at][0] == 1007
    assert len(results) == bad_at + 1 or all(r[0] == 1002 for r in results[bad_at + 1:])


def test_completable_oracle_knows_the_hard_cases():
    # The oracle of the property test, checked on the cases it exists for.
    assert _completable(b"\xed") and _completable(b"\xed\x9f") and not _completable(b"\xed\xa0")
    assert _completable(b"\xf4\x8f") and not _completable(b"\xf4\x90")
    assert _completable(b"\xe0") and not _completable(b"\xe0\x9f")
    assert _completable(b"\xf0\x90\x80") and not _completable(b"\xf0\x80")
    assert not _completable(b"\xc1") and not _completable(b"\x80")


# -- 2. memory of reassembly -----------------------------------------------------------


def test_reassembly_is_one_buffer_of_the_message_bytes():
    reader = FrameReader(1 << 20)
    piece = frame(CONT, b"x", fin=False)
    assert reader.feed(frame(BINARY, b"x", fin=False)) is None
    worst = 0.0
    for n in range(2, 200_000):
        assert reader.feed(piece) is None
        buffered, allocated = reader.buffered, reader.allocated
        assert buffered == n
        # A list of 1-byte pieces would cost ~33 bytes a byte; one growing
        # buffer costs its size plus at most a quarter (1 KiB at first).
        assert allocated <= max(1024, 1.25 * buffered), (n, allocated)
        if buffered >= 1024:
            worst = max(worst, allocated / buffered)
    assert worst <= 1.25
    assert reader.feed(frame(CONT, b"x")) == b"x" * 200_000
    assert (reader.buffered, reader.allocated, reader.in_progress) == (0, 0, 0)


# -- 3. server frames ------------------------------------------------------------------


def _header(opcode: int, size: int) -> bytes:
    if size < 126:
        return bytes([0x80 | opcode, size])
    if size < 65536:
        return bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    return bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")


@pytest.mark.parametrize(
    "size, header_size, length_bytes",
    [(0, 2, b"\x00"), (125, 2, b"\x7d"), (126, 4, b"\x7e\x00\x7e"), (4096, 4, b"\x7e\x10\x00"),
     (4097, 4, b"\x7e\x10\x01"), (65535, 4, b"\x7e\xff\xff"), (65536, 10, b"\x7f" + (65536).to_bytes(8, "big")),
     ((1 << 20) + 3, 10, b"\x7f\x00\x00\x00\x00\x00\x10\x00\x03")],
)
def test_binary_frame_header_layout(size, header_size, length_bytes):
    payload = random.Random(size).randbytes(size)
    wire = frame_for_send({"type": "binary", "data": payload})
    assert wire[0] == 0x82  # FIN, binary
    assert wire[1] & 0x80 == 0  # unmasked
    assert wire[1:header_size] == length_bytes
    assert wire[:header_size] == _header(2, size)
    assert wire[header_size:] == payload and len(wire) == header_size + size
    for other in (bytearray(payload), memoryview(payload), memoryview(bytearray(b"_" + payload + b"_"))[1:-1]):
        assert frame_for_send({"type": "binary", "data": other}) == wire


@pytest.mark.parametrize("text", ["", "a" * 125, "é" * 63, "€" * 42, "a" * 65535, "😀" * 16384, "x" * 100_000])
def test_text_frame_header_layout(text):
    encoded = text.encode()
    wire = frame_for_send({"type": "text", "data": text})
    header = _header(1, len(encoded))
    assert wire[0] == 0x81 and wire[1] & 0x80 == 0
    assert wire == header + encoded


@pytest.mark.parametrize(
    "payload, problem",
    [
        ([("type", "text")], "must be a dict.*got list"),
        ("hello", "must be a dict.*got str"),
        (None, "must be a dict.*got NoneType"),
        ({"type": "ping", "data": b""}, "type must be 'text' or 'binary', got 'ping'"),
        ({"data": "x"}, "type must be 'text' or 'binary', got None"),
        ({"type": "text", "data": b"x"}, "'text' needs str data, got bytes"),
        ({"type": "text"}, "'text' needs str data, got NoneType"),
        ({"type": "binary", "data": "x"}, "'binary' needs bytes data, got str"),
        ({"type": "binary", "data": [1, 2]}, "'binary' needs bytes data, got list"),
        ({"type": "text", "data": "\ud800"}, "surrogates not allowed"),
    ],
)
def test_malformed_send_payload_raises_value_error_naming_the_problem(payload, problem):
    with pytest.raises(ValueError, match=problem):
        frame_for_send(payload)


def test_close_defaults():
    assert close_for(None) == (1000, b"")
    assert close_for({}) == (1000, b"")
    assert close_for({"code": None}) == (1000, b"")
    assert close_for({"reason": "bye"}) == (1000, b"bye")
    assert close_for({"code": 4000, "reason": None}) == (4000, b"")


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 1014, 3000, 4999])
def test_close_codes_a_server_may_send(code):
    assert close_for({"code": code, "reason": "why"}) == (code, b"why")


# 1004-1006 and 1015 are never on the wire; 1010 is the client's (RFC 6455
# §7.4.1: the server did not negotiate an extension).
@pytest.mark.parametrize("code", [1004, 1005, 1006, 1010, 1015, 999, 0, -1, 2999, 5000, True, "1000", 1000.0])
def test_close_codes_a_server_may_not_send(code):
    with pytest.raises(ValueError, match="ws.close code"):
        close_for({"code": code})


@pytest.mark.parametrize("payload, problem", [([1000], "must be a dict"), ("bye", "must be a dict"),
                                              ({"reason": b"bye"}, "reason must be a str"),
                                              ({"reason": 5}, "reason must be a str")])
def test_malformed_close_payload(payload, problem):
    with pytest.raises(ValueError, match=problem):
        close_for(payload)


@pytest.mark.parametrize(
    "reason, expected_size",
    [("a" * 123, 123), ("a" * 124, 123), ("é" * 100, 122), ("€" * 50, 123), ("😀" * 40, 120),
     ("a" + "😀" * 40, 121), ("ab" + "😀" * 40, 122), ("abc" + "😀" * 40, 123), ("abcd" + "😀" * 40, 120)],
)
def test_long_reason_is_cut_at_a_character_boundary(reason, expected_size):
    code, cut_reason = close_for({"code": 1000, "reason": reason})
    assert len(cut_reason) == expected_size
    assert reason.startswith(cut_reason.decode("utf-8"))


@PROPERTY
@given(reason=st.text(max_size=200))
def test_property_reason_is_the_longest_whole_prefix_that_fits(reason):
    encoded = reason.encode()
    _, got = close_for({"reason": reason})
    assert len(got) <= 123 and encoded.startswith(got)
    assert reason.startswith(got.decode("utf-8"))
    if len(encoded) <= 123:
        assert got == encoded
    else:
        # The next character did not fit.
        assert len(got) + len(reason[len(got.decode())].encode()) > 123


# -- 4. the mailbox ring ---------------------------------------------------------------


def msg(n: int) -> wsrelay.Message:
    return wsrelay.Message("t", n)


def test_push_up_to_capacity_then_refused_and_push_force_passes():
    box = Mailbox(3)
    assert [box._test_push(msg(i)) for i in range(4)] == [True, True, True, False]
    assert len(box) == 3
    assert box._test_push(msg(3), force=True) is True
    assert box._test_push(msg(4), force=True) is True
    assert len(box) == 5 and box._test_push(msg(5)) is False
    assert [box._test_pop().payload for _ in range(5)] == [0, 1, 2, 3, 4]
    assert box._test_pop() is None and box.taken == 5
    assert box._test_push(msg(6)) is True


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_refused(capacity):
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(capacity)


def test_growth_while_wrapped_keeps_order():
    box = Mailbox(1000)
    for i in range(7):
        box._test_push(msg(i))
    assert [box._test_pop().payload for _ in range(5)] == [0, 1, 2, 3, 4]
    # The ring (8 slots) now wraps; growing must unwrap it in order.
    for i in range(7, 40):
        box._test_push(msg(i))
    assert box._test_allocated() == 64
    assert [box._test_pop().payload for _ in range(35)] == list(range(5, 40))


def _run_ops(capacity: int, ops: list[tuple[str, int]]) -> None:
    box = Mailbox(capacity)
    model: collections.deque[int] = collections.deque()
    taken = 0
    serial = 0
    for op, count in ops:
        for _ in range(count):
            if op == "pop":
                got = box._test_pop()
                if model:
                    assert got is not None and got.payload == model.popleft()
                    taken += 1
                else:
                    assert got is None
            else:
                accepted = box._test_push(msg(serial), force=op == "force")
                assert accepted is (op == "force" or len(model) < capacity)
                if accepted:
                    model.append(serial)
                serial += 1
            assert len(box) == len(model)
            assert box.taken == taken


@PROPERTY
@given(
    capacity=st.integers(1, 40),
    ops=st.lists(st.tuples(st.sampled_from(["push", "pop", "force"]), st.integers(1, 30)), max_size=40),
)
def test_property_ring_is_a_bounded_fifo(capacity, ops):
    _run_ops(capacity, ops)


def test_ring_wraps_many_times_against_a_deque():
    rng = random.Random(6455)
    ops = [(rng.choice(["push", "push", "pop", "force"]), rng.randint(1, 12)) for _ in range(3000)]
    _run_ops(50, ops)
    # A backlog of 4 to 7 messages in the smallest ring (8 slots): its head
    # goes round it over a thousand times.
    box = Mailbox(8)
    pushed = popped = 0
    for _ in range(3000):
        for _ in range(4 if pushed == 0 else 3):
            assert box._test_push(msg(pushed))
            pushed += 1
        for _ in range(3):
            assert box._test_pop().payload == popped
            popped += 1
        assert box._test_allocated() == 8
    assert box.taken == popped == 9000


def test_drained_burst_ring_is_released_and_a_small_one_kept():
    box = Mailbox(1000)
    for i in range(65):
        box._test_push(msg(i))
    assert box._test_allocated() == 128
    for i in range(64):
        assert box._test_pop().payload == i
    assert box._test_allocated() == 128
    assert box._test_pop().payload == 64
    assert box._test_allocated() == 0 and len(box) == 0
    for i in range(64):
        box._test_push(msg(i))
    while len(box):
        box._test_pop()
    assert box._test_allocated() == 64
    box._test_push(msg(0))
    assert box._test_pop().payload == 0


# -- 5. room waiters -------------------------------------------------------------------


def full_box(capacity: int) -> Mailbox:
    box = Mailbox(capacity)
    for i in range(capacity):
        assert box._test_push(msg(i))
    return box


@pytest.mark.parametrize("capacity, wake_at", [(10, 5), (7, 3), (1, 0), (2, 1)])
def test_waiter_is_called_once_when_the_mailbox_drains_to_half(capacity, wake_at):
    box = full_box(capacity)
    calls: list[int] = []
    waiter = _CallbackWaiter(lambda: calls.append(len(box)))
    box._test_wait_for_room(waiter)
    assert waiter.waiting and box._test_waiting() == 1
    while len(box) > wake_at + 1:
        box._test_pop()
        assert calls == []
    box._test_push(msg(-1), force=True)  # a push never wakes
    box._test_pop()
    assert calls == []
    box._test_pop()
    assert calls == [wake_at]
    assert not waiter.waiting and box._test_waiting() == 0
    while box._test_pop() is not None:
        pass
    assert calls == [wake_at]


def test_waiters_are_called_in_registration_order():
    box = full_box(4)
    order: list[str] = []
    waiters = {name: _CallbackWaiter(lambda name=name: order.append(name)) for name in "cab"}
    for name in "cab":
        box._test_wait_for_room(waiters[name])
    box._test_wait_for_room(waiters["c"])  # already waiting: keeps its place
    assert box._test_waiting() == 3
    box._test_pop()
    box._test_pop()
    assert order == ["c", "a", "b"]
    assert not any(w.waiting for w in waiters.values())


def test_withdrawn_waiter_is_not_called():
    box = full_box(4)
    calls: list[str] = []
    first = _CallbackWaiter(lambda: calls.append("first"))
    second = _CallbackWaiter(lambda: calls.append("second"))
    box._test_wait_for_room(first)
    box._test_wait_for_room(second)
    box._test_withdraw(first)
    assert not first.waiting and second.waiting and box._test_waiting() == 1
    box._test_withdraw(first)  # withdrawing twice is harmless
    box._test_pop()
    box._test_pop()
    assert calls == ["second"]


def test_registering_twice_keeps_one_registration():
    box = full_box(2)
    calls: list[int] = []
    waiter = _CallbackWaiter(lambda: calls.append(1))
    box._test_wait_for_room(waiter)
    box._test_wait_for_room(waiter)
    assert box._test_waiting() == 1
    box._test_pop()
    assert calls == [1]


def test_waiting_on_another_mailbox_withdraws_from_the_first():
    first, second = full_box(2), full_box(2)
    calls: list[str] = []
    waiter = _CallbackWaiter(lambda: calls.append("room"))
    first._test_wait_for_room(waiter)
    second._test_wait_for_room(waiter)
    assert first._test_waiting() == 0 and second._test_waiting() == 1
    # Withdrawing from a mailbox it no longer waits on leaves it waiting.
    first._test_withdraw(waiter)
    assert waiter.waiting
    first._test_pop()
    first._test_pop()
    assert calls == []
    second._test_pop()
    assert calls == ["room"]


def test_a_failing_waiter_does_not_stop_the_others(caplog):
    caplog.set_level(logging.ERROR, logger="wsrelay.runtime")
    box = full_box(4)
    calls: list[str] = []

    def fail():
        calls.append("failing")
        raise RuntimeError("waiter broke")

    waiters = [_CallbackWaiter(lambda: calls.append("before")), _CallbackWaiter(fail),
               _CallbackWaiter(lambda: calls.append("after"))]
    for waiter in waiters:
        box._test_wait_for_room(waiter)
    box._test_pop()
    box._test_pop()
    assert calls == ["before", "failing", "after"]
    assert not any(w.waiting for w in waiters)
    records = [r for r in caplog.records if r.name == "wsrelay.runtime"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert "room waiter failed" in records[0].getMessage()
    assert "RuntimeError('waiter broke')" in records[0].getMessage()


# -- 6. relay settings -----------------------------------------------------------------

PID_TEXT = "{h|0x0000a}"


class Meta(dict):
    pass


_REJECT = object()
_UNCHANGED = object()

# (field, value, what both parsers make of it, or _REJECT)
SETTINGS_TABLE: list[tuple[str, Any, Any]] = [
    ("metadata", None, {}),
    ("metadata", {}, {}),
    ("metadata", {"user": "ann", "n": [1, 2]}, {"user": "ann", "n": [1, 2]}),
    ("metadata", Meta(room="r1"), {"room": "r1"}),
    ("metadata", [], _REJECT),
    ("metadata", ["a"], _REJECT),
    ("metadata", "x", _REJECT),
    ("metadata", 3, _REJECT),
    ("message_topic", "ok", "ok"),
    ("message_topic", "chat.in", "chat.in"),
    ("message_topic", "", _REJECT),
    ("message_topic", "@x", _REJECT),
    ("message_topic", 3, _REJECT),
    ("message_topic", None, _REJECT),
    ("heartbeat_interval", None, 0.0),
    ("heartbeat_interval", "30s", 30.0),
    ("heartbeat_interval", "500ms", 0.5),
    ("heartbeat_interval", "1m", 60.0),
    ("heartbeat_interval", "10ms", 0.01),
    ("heartbeat_interval", 5, 5.0),
    ("heartbeat_interval", 0.01, 0.01),
    ("heartbeat_interval", 0.001, _REJECT),
    ("heartbeat_interval", "9ms", _REJECT),
    ("heartbeat_interval", 0, _REJECT),
    ("heartbeat_interval", -1, _REJECT),
    ("heartbeat_interval", True, _REJECT),
    ("heartbeat_interval", [1], _REJECT),
    ("heartbeat_interval", {"s": 1}, _REJECT),
    ("heartbeat_interval", "soon", _REJECT),
    ("heartbeat_interval", "", _REJECT),
    ("heartbeat_interval", 10**400, _REJECT),
    ("target_pid", PID_TEXT, wsrelay.Pid.parse(PID_TEXT)),
    ("target_pid", "{n@h|0x00005}", wsrelay.Pid("h", 5, "n")),
    ("target_pid", "{h|0x0000A}", _REJECT),
    ("target_pid", "h|0x0000a", _REJECT),
    ("target_pid", "", _REJECT),
    ("target_pid", 5, _REJECT),
    ("target_pid", ["{h|0x0000a}"], _REJECT),
]


def _header_text(fields: dict[str, Any]) -> str:
    # The stdlib encoder writes what orjson refuses to (integers past 64 bits),
    # as a handler's own JSON library might.
    return json.dumps(fields)


def _outcome(parse, arg, error: type[Exception]) -> tuple[str, Any]:
    try:
        return "ok", parse(arg)
    except error as exc:
        return "rejected", exc


@pytest.mark.parametrize("field, value, expected", SETTINGS_TABLE,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in SETTINGS_TABLE])
def test_header_and_control_apply_the_same_field_rules(field, value, expected):
    header_fields = {"target_pid": PID_TEXT, field: value}
    header = _outcome(parse_relay_header, _header_text(header_fields), wsrelay.RelayHeaderError)
    control = _outcome(parse_control_payload, {field: value}, wsrelay.RelaySettingsError)
    if expected is _REJECT:
        assert header[0] == "rejected", header
        assert control[0] == "rejected", control
        assert field in str(control[1])
        if isinstance(value, int) and abs(value) >= 1 << 64:
            # orjson refuses the whole document: the field cannot be reached.
            assert "not valid JSON" in str(header[1]), header
        else:
            assert field in str(header[1]), header
        assert type(control[1]) is wsrelay.RelaySettingsError
        return
    assert header[0] == "ok", header
    assert control[0] == "ok", control
    assert getattr(header[1], field) == expected
    assert control[1] == {field: expected}
    assert type(control[1][field]) is type(getattr(header[1], field)) or field == "metadata"


def test_header_defaults():
    spec = parse_relay_header(json.dumps({"target_pid": PID_TEXT}))
    assert spec.target_pid == wsrelay.Pid.parse(PID_TEXT)
    assert (spec.message_topic, spec.heartbeat_interval, spec.metadata) == ("ws.message", 0.0, {})


def test_header_requires_target_pid_and_control_does_not():
    with pytest.raises(wsrelay.RelayHeaderError, match="needs target_pid"):
        parse_relay_header(json.dumps({"message_topic": "x"}))
    with pytest.raises(wsrelay.RelayHeaderError, match="target_pid"):
        parse_relay_header(json.dumps({"target_pid": None}))
    assert parse_control_payload({}) == {}
    # In ws.control, None (like absence) leaves the target unchanged.
    assert parse_control_payload({"target_pid": None, "message_topic": "t"}) == {"message_topic": "t"}
    pid = wsrelay.Pid("h", 9)
    assert parse_control_payload({"target_pid": pid}) == {"target_pid": pid}


def test_control_payload_with_every_field():
    changes = parse_control_payload({"target_pid": PID_TEXT, "message_topic": "in", "heartbeat_interval": "2s",
                                     "metadata": {"k": 1}})
    assert changes == {"target_pid": wsrelay.Pid.parse(PID_TEXT), "message_topic": "in",
                       "heartbeat_interval": 2.0, "metadata": {"k": 1}}
    assert set(changes) == FIELDS


@pytest.mark.parametrize("unknown", ["bogus", "targetPid", "metadata "])
def test_unknown_fields_are_rejected_by_both_naming_the_field(unknown):
    with pytest.raises(wsrelay.RelayHeaderError, match=re.escape(repr(unknown))):
        parse_relay_header(json.dumps({"target_pid": PID_TEXT, unknown: 1}))
    with pytest.raises(wsrelay.RelaySettingsError, match=re.escape(repr(unknown))):
        parse_control_payload({unknown: 1})


@pytest.mark.parametrize("raw", ["", "{", "not json", "{'target_pid': 1}", "[]", "null", '"x"', "5"])
def test_header_that_is_not_a_json_object(raw):
    with pytest.raises(wsrelay.RelayHeaderError, match="X-WS-Relay"):
        parse_relay_header(raw)


@pytest.mark.parametrize("payload", [None, [], "x", 5, [("message_topic", "x")]])
def test_control_that_is_not_a_dict(payload):
    with pytest.raises(wsrelay.RelaySettingsError, match="ws.control must be a JSON object"):
        parse_control_payload(payload)


def test_settings_error_classes():
    assert issubclass(wsrelay.RelayHeaderError, wsrelay.RelaySettingsError)
    assert issubclass(wsrelay.RelaySettingsError, ValueError)
    assert not issubclass(wsrelay.RelaySettingsError, wsrelay.RelayHeaderError)


# -- 7. the counters table -------------------------------------------------------------


def test_every_counter_row_is_a_field_starting_at_zero():
    counters = Counters()
    fields = [row[0] for row in COUNTERS]
    assert len(fields) == len(set(fields))
    for field in fields:
        value = getattr(counters, field)
        assert type(value) is int and value == 0, field
        setattr(counters, field, 7)
        assert getattr(counters, field) == 7
    assert list(Counters().as_dict().items()) == [(field, 0) for field in fields]


def test_counter_families_are_well_formed():
    families: dict[str, list[tuple[str, Optional[tuple[str, str]], Optional[str]]]] = {}
    for field, family, label, help_text in COUNTERS:
        assert re.fullmatch(r"wsrelay_[a-z_]+", family), family
        families.setdefault(family, []).append((field, label, help_text))
    for family, rows in families.items():
        assert isinstance(rows[0][2], str) and rows[0][2].strip(), f"{family} has no help on its first row"
        assert all(help_text is None for _, _, help_text in rows[1:]), family
        labels = [label for _, label, _ in rows]
        if labels[0] is None:
            assert labels == [None], f"{family}: an unlabelled family has one row"
            continue
        assert all(label is not None for label in labels), family
        assert len({name for name, _ in labels}) == 1, f"{family} uses more than one label name"
        values = [value for _, value in labels]
        assert len(values) == len(set(values)), family


# -- 8. the rate-limited log -----------------------------------------------------------


def _wait_past(start: float, seconds: float) -> None:
    # The behaviour under test is the passing of time itself.
    while time.monotonic() - start <= seconds:
        time.sleep(0.01)


def test_limited_log_holds_back_repeats_and_says_how_many(caplog):
    name = "wsrelay.tests.core_units"
    caplog.set_level(logging.WARNING, logger=name)
    interval = 0.2
    log = LimitedLog(name, interval)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == name]

    log.warning("slow", "first")
    let_through = time.monotonic()
    log.warning("slow", "second")
    log.warning("slow", "third")
    log.error("other", "another kind")
    assert lines() == ["first", "another kind"]
    assert [r.levelname for r in caplog.records if r.name == name] == ["WARNING", "ERROR"]

    _wait_past(let_through, interval)
    log.warning("slow", "fourth")
    let_through = time.monotonic()
    assert lines()[-1] == "fourth (and 2 more like this since the last such line)"
    # The count starts again after the line that told it.
    log.warning("slow", "fifth")
    _wait_past(let_through, interval)
    log.warning("slow", "sixth")
    assert lines()[2:] == ["fourth (and 2 more like this since the last such line)",
                           "sixth (and 1 more like this since the last such line)"]
    _wait_past(time.monotonic(), interval)
    log.warning("slow", "seventh")
    assert lines()[-1] == "seventh"
