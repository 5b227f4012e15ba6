"""permessage-deflate pieces of the core (RFC 7692), without sockets: the
negotiation of Sec-WebSocket-Extensions, compression checked against Python's
zlib, and bounded inflation, whole or fragment by fragment."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay._core import deflate as d

TAIL = b"\x00\x00\xff\xff"
BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
WINDOW_BITS = range(9, 16)


# -- negotiation ------------------------------------------------------------------------

# offer -> (server_max_window_bits, client_max_window_bits, response), or None
# when no offer can be honoured.
NEGOTIATION = [
    ("permessage-deflate", (15, 15, BASE)),
    # What browsers send.
    ("permessage-deflate; client_max_window_bits", (15, 15, BASE)),
    ("permessage-deflate; client_max_window_bits=10", (15, 10, BASE + "; client_max_window_bits=10")),
    ("permessage-deflate; client_max_window_bits=8", (15, 8, BASE + "; client_max_window_bits=8")),
    ("permessage-deflate; server_max_window_bits=12", (12, 15, BASE + "; server_max_window_bits=12")),
    ("permessage-deflate; server_max_window_bits=9", (9, 15, BASE + "; server_max_window_bits=9")),
    ("permessage-deflate; server_no_context_takeover", (15, 15, BASE)),
    ("permessage-deflate; client_no_context_takeover", (15, 15, BASE)),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; "
     "client_max_window_bits=12", (10, 12, BASE + "; server_max_window_bits=10; client_max_window_bits=12")),
    # zlib cannot compress with an 8-bit window: that offer is skipped for the next.
    ("permessage-deflate; server_max_window_bits=8", None),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
     (15, 15, BASE)),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=11",
     (11, 15, BASE + "; server_max_window_bits=11")),
    # Out of range or malformed values.
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits=7", None),
    ("permessage-deflate; server_max_window_bits=010", None),
    ("permessage-deflate; server_max_window_bits=+10", None),
    ("permessage-deflate; server_max_window_bits=", None),
    ("permessage-deflate; client_max_window_bits=16", None),
    ("permessage-deflate; client_max_window_bits=0", None),
    ("permessage-deflate; client_max_window_bits=ten", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ("permessage-deflate; client_no_context_takeover=", None),
    # Duplicated parameters.
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("permessage-deflate; client_max_window_bits; client_max_window_bits=10", None),
    ("permessage-deflate; server_max_window_bits=10; SERVER_MAX_WINDOW_BITS=10", None),
    # Unknown parameters; the next offer is taken.
    ("permessage-deflate; foo", None),
    ("permessage-deflate; mux=1, permessage-deflate", (15, 15, BASE)),
    # Malformed offers.
    ("permessage-deflate;", None),
    ("permessage-deflate; ; client_max_window_bits", None),
    ("permessage-deflate; =10", None),
    ("permessage-deflate; client max window bits", None),
    ("permessage-deflate x", None),
    # Quoted values (RFC 7692 §7.1: a quoted value is a token once unquoted).
    ('permessage-deflate; client_max_window_bits="10"', (15, 10, BASE + "; client_max_window_bits=10")),
    ('permessage-deflate; server_max_window_bits="1\\1"', (11, 15, BASE + "; server_max_window_bits=11")),
    ('permessage-deflate; server_max_window_bits="10', None),
    ('permessage-deflate; server_max_window_bits=""', None),
    ('permessage-deflate; server_max_window_bits="1 0"', None),
    ('permessage-deflate; server_max_window_bits=1"0"', None),
    # A ',' or ';' inside quotes separates nothing: one malformed offer, then the next.
    ('permessage-deflate; client_max_window_bits="1,0", permessage-deflate; server_max_window_bits=13',
     (13, 15, BASE + "; server_max_window_bits=13")),
    ('permessage-deflate; client_max_window_bits="1;0"', None),
    # Whitespace and case.
    ("  PerMessage-Deflate ;  Server_Max_Window_Bits = 11 ;\tclient_max_window_bits\t",
     (11, 15, BASE + "; server_max_window_bits=11")),
    ("permessage-deflate;server_max_window_bits=14;client_max_window_bits=9",
     (14, 9, BASE + "; server_max_window_bits=14; client_max_window_bits=9")),
    # Other extensions, empty list elements.
    ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", (15, 15, BASE)),
    ('foo; a="b,c; d", permessage-deflate', (15, 15, BASE)),
    ("foo; bar=1", None),
    (", ,permessage-deflate,", (15, 15, BASE)),
    ("", None),
    ('"', None),
    ("\x00\xff;;,,=", None),
]


@pytest.mark.parametrize(("offers", "expected"), NEGOTIATION)
def test_negotiate(offers: str, expected: tuple[int, int, str] | None) -> None:
    params, response = d.negotiate(offers, True)
    if expected is None:
        assert (params, response) == (None, None)
        return
    assert params is not None
    assert (params.server_max_window_bits, params.client_max_window_bits, response) == expected
    assert params.response == response


def test_negotiate_off_or_absent() -> None:
    assert d.negotiate("permessage-deflate; client_max_window_bits", False) == (None, None)
    assert d.negotiate(None, True) == (None, None)


def test_connections_that_agree_the_same_share_one_params_object() -> None:
    a, _ = d.negotiate("permessage-deflate; client_max_window_bits", True)
    b, _ = d.negotiate("PERMESSAGE-DEFLATE; server_no_context_takeover", True)
    c, _ = d.negotiate("permessage-deflate; server_max_window_bits=10", True)
    assert a is b
    assert c is not a


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(' \t,;="\\abcdeflmnoprstvwx_-0123456789')), max_size=80))
def test_negotiate_never_raises_and_its_answer_is_an_offer_it_accepts(offers: str) -> None:
    params, response = d.negotiate("permessage-deflate; " + offers, True)
    if params is None:
        assert response is None
        return
    assert d.MIN_SERVER_WINDOW_BITS <= params.server_max_window_bits <= 15
    assert d.negotiate(response, True) == (params, response)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_negotiate_never_raises_on_any_text(offers: str) -> None:
    params, response = d.negotiate(offers, True)
    assert (params is None) == (response is None)


# -- compression ------------------------------------------------------------------------


def _json_like(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = ["user", "online", "away", "room", "message", "hello", "status", "ts", "value", "ok"]
    parts = []
    length = 0
    while length < n:
        parts.append(f'{{"{rng.choice(words)}":"{rng.choice(words)}","n":{rng.randrange(1000)}}},')
        length += len(parts[-1])
    return "".join(parts).encode()[:n]


def _far_matches(size: int = 60000) -> bytes:
    """Random data repeated 20000 bytes later: only a window over 2**14 finds the matches."""
    rng = random.Random(7)
    block = rng.randbytes(20000)
    return (block * (size // len(block) + 1))[:size]


def _python_inflate(payload: bytes, window_bits: int = 15) -> bytes:
    return zlib.decompressobj(-window_bits).decompress(payload + TAIL)


MESSAGES = [b"", b"x", b"Hello", _json_like(256), _json_like(4096), _json_like(70000), random.Random(3).randbytes(5000)]


@pytest.mark.parametrize("window_bits", WINDOW_BITS)
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{len(m)}B")
def test_compress_inflates_with_python_zlib(message: bytes, window_bits: int) -> None:
    payload = d.compress(message, window_bits)
    assert not payload.endswith(TAIL)
    assert _python_inflate(payload, window_bits) == message


@pytest.mark.parametrize("window_bits", WINDOW_BITS)
def test_compress_keeps_to_the_window(window_bits: int) -> None:
    data = _far_matches()
    payload = d.compress(data, window_bits)
    # A stream that used a larger window than agreed fails to inflate with it.
    assert _python_inflate(payload, window_bits) == data
    if window_bits == 15:
        assert len(payload) < len(data) // 2


def test_compress_resets_between_messages() -> None:
    used = d.Deflater(15, 1)
    first = _json_like(3000, seed=1)
    second = _json_like(3000, seed=2)
    used.compress(first)
    # With context takeover the second message would refer back to the first.
    assert used.compress(second) == d.Deflater(15, 1).compress(second)
    assert _python_inflate(used.compress(second)) == second


def test_compress_empty_message_is_one_empty_block() -> None:
    # RFC 7692 §7.2.3.6
    assert d.compress(b"") == b"\x00"
    assert d.Deflater(9, 6).compress(b"") == b"\x00"


def test_compress_str_is_its_utf8() -> None:
    text = "héllo wörld ☃ " * 50
    assert d.compress(text) == d.compress(text.encode())
    assert _python_inflate(d.compress(text)).decode() == text


def test_compress_accepts_buffers() -> None:
    data = _json_like(2000)
    assert d.compress(bytearray(data)) == d.compress(memoryview(data)) == d.compress(data)


@pytest.mark.parametrize("size", [300_000, 2_000_000])
def test_compress_large_and_incompressible(size: int) -> None:
    data = random.Random(size).randbytes(size)
    payload = d.compress(data)
    assert _python_inflate(payload) == data
    # Then a small one with the same compressor (its output space was released).
    assert _python_inflate(d.compress(b"after")) == b"after"


@pytest.mark.parametrize("window_bits", [0, 8, 16, -15])
def test_window_bits_out_of_range(window_bits: int) -> None:
    with pytest.raises(ValueError):
        d.compress(b"x", window_bits)
    with pytest.raises(ValueError):
        d.Deflater(window_bits)


def test_deflater_level_checked() -> None:
    assert d.Deflater(15, 9).level == 9
    with pytest.raises(ValueError):
        d.Deflater(15, 10)


# -- decompression ----------------------------------------------------------------------


def _python_compress(message: bytes, window_bits: int = 15, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    out = c.compress(message) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


@pytest.mark.parametrize("window_bits", WINDOW_BITS)
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{len(m)}B")
def test_inflate_python_zlib_streams(message: bytes, window_bits: int) -> None:
    assert d.inflate(_python_compress(message, window_bits), 1 << 20) == message
    assert d.inflate(_python_compress(message, window_bits, level=1), 1 << 20) == message


@pytest.mark.parametrize(("payload", "why"), [
    ("f248cdc9c90700", "§7.2.3.1 one compressed block"),
    ("000500faff48656c6c6f00", "§7.2.3.3 a block with no compression"),
    ("f348cdc9c9070000", "§7.2.3.4 a block with BFINAL set"),
    ("f24805000000ffffcac9c90700", "§7.2.3.5 two blocks in one message"),
])
def test_inflate_rfc7692_examples(payload: str, why: str) -> None:
    assert d.inflate(bytes.fromhex(payload), 100) == b"Hello", why


def test_inflate_ignores_what_follows_the_final_block() -> None:
    assert d.inflate(bytes.fromhex("f348cdc9c90700") + b"\xff\xff\xff", 100) == b"Hello"
    out = bytearray()
    inflater = d.acquire_inflater()
    try:
        inflater.feed(bytes.fromhex("f348cdc9c90700"), out, 100, False)
        inflater.feed(b"\xff\xff\xff", out, 100, False)
        inflater.feed(_python_compress(b"more"), out, 100, True)
    finally:
        d.release_inflater(inflater)
    assert out == b"Hello"


def test_inflate_empty_messages() -> None:
    assert d.inflate(b"\x00", 0) == b""
    assert d.inflate(bytes.fromhex("0200"), 0) == b""  # fixed-Huffman empty block, as Python's zlib writes
    assert d.inflate(b"", 0) == b""


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x00\x05\x00\x00\x00hello", b"\x06" + b"\xff" * 10])
def test_inflate_corrupt(payload: bytes) -> None:
    with pytest.raises(d.CorruptMessage):
        d.inflate(payload, 1 << 20)
    # The worker's inflater serves the next message as if nothing happened.
    assert d.inflate(_python_compress(b"next"), 100) == b"next"


def test_inflate_limit_is_inclusive() -> None:
    message = _json_like(5000)
    payload = _python_compress(message)
    assert d.inflate(payload, len(message)) == message
    with pytest.raises(d.MessageTooBig):
        d.inflate(payload, len(message) - 1)
    with pytest.raises(d.MessageTooBig):
        d.inflate(_python_compress(b"x"), 0)
    with pytest.raises(ValueError):
        d.inflate(payload, -1)


def _zeros_bomb(mib: int) -> bytes:
    """A DEFLATE stream of ``mib`` MiB of zeros, built from its period instead of
    compressing it all: zlib writes every sync-flushed MiB of zeros after the
    second one as the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunks = [c.compress(bytes(1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH) for _ in range(4)]
    assert chunks[1] == chunks[2] == chunks[3]
    return (chunks[0] + chunks[1] * (mib - 1))[:-4]


def test_zeros_bomb_is_what_it_says() -> None:
    bomb = _zeros_bomb(8)
    assert _python_inflate(bomb) == bytes(8 << 20)


def test_inflate_stops_at_the_limit() -> None:
    bomb = _zeros_bomb(1024)
    limit = 1 << 20
    assert len(bomb) < 1100 * 1024
    # 1 GiB as Python's zlib sees it, bounded to what the check needs.
    assert len(zlib.decompressobj(-15).decompress(bomb + TAIL, 2 * limit)) == 2 * limit
    inflater = d.acquire_inflater()
    out = bytearray()
    try:
        with pytest.raises(d.MessageTooBig):
            inflater.feed(bomb, out, limit, True)
        assert len(out) <= limit
        assert inflater.produced <= limit
    finally:
        d.release_inflater(inflater)


def test_inflate_stops_at_the_limit_fragment_by_fragment() -> None:
    bomb = _zeros_bomb(1024)
    limit = 1 << 20
    inflater = d.acquire_inflater()
    out = bytearray()
    fed = 0
    try:
        with pytest.raises(d.MessageTooBig):
            for at in range(0, len(bomb), 1024):
                fed += 1
                inflater.feed(bomb[at:at + 1024], out, limit, at + 1024 >= len(bomb))
        assert len(out) <= limit
        # A MiB of zeros compresses to about 1 KiB: the limit is passed within
        # the first few fragments of the thousand.
        assert fed <= 4
    finally:
        d.release_inflater(inflater)


def test_inflate_limit_counts_the_whole_message() -> None:
    part = _json_like(600 * 1024)
    payload = _python_compress(part * 3)
    third = len(payload) // 3
    inflater = d.acquire_inflater()
    out = bytearray()
    try:
        inflater.feed(payload[:third], out, 1 << 20, False)
        assert 0 < len(out) < 1 << 20
        with pytest.raises(d.MessageTooBig):
            inflater.feed(payload[third:2 * third], out, 1 << 20, False)
        assert len(out) <= 1 << 20
    finally:
        d.release_inflater(inflater)


def _split(payload: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(payload)) for c in cuts})
    bounds = [0, *points, len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("window_bits", [9, 12, 15])
@pytest.mark.parametrize("seed", range(4))
def test_inflate_fragments(window_bits: int, seed: int) -> None:
    message = _json_like(50000, seed) + _far_matches(40000)
    payload = _python_compress(message, window_bits)
    rng = random.Random(seed)
    fragments = _split(payload, [rng.randrange(len(payload)) for _ in range(rng.randrange(1, 40))])
    fragments.insert(rng.randrange(len(fragments)), b"")  # an empty continuation frame
    prefix = b"kept:"
    out = bytearray(prefix)
    inflater = d.acquire_inflater()
    try:
        for i, fragment in enumerate(fragments):
            inflater.feed(fragment, out, len(message), i == len(fragments) - 1)
    finally:
        d.release_inflater(inflater)
    assert bytes(out) == prefix + message


def test_inflate_rfc7692_fragmented_example() -> None:
    # §7.2.3.1: "Hello" compressed and sent in two frames.
    out = bytearray()
    inflater = d.acquire_inflater()
    try:
        inflater.feed(bytes.fromhex("f248cd"), out, 100, False)
        inflater.feed(bytes.fromhex("c9c90700"), out, 100, True)
    finally:
        d.release_inflater(inflater)
    assert out == b"Hello"


def test_fragmented_messages_of_two_connections_interleave() -> None:
    a_msg, b_msg = _json_like(20000, seed=11), _json_like(20000, seed=12)
    a_pay, b_pay = _python_compress(a_msg), _python_compress(b_msg)
    a, b = d.acquire_inflater(), d.acquire_inflater()
    assert a is not b
    a_out, b_out = bytearray(), bytearray()
    try:
        a.feed(a_pay[:100], a_out, 1 << 20, False)
        b.feed(b_pay[:50], b_out, 1 << 20, False)
        # A whole message of a third connection in between uses another inflater.
        assert d.inflate(_python_compress(b"third"), 100) == b"third"
        a.feed(a_pay[100:], a_out, 1 << 20, True)
        b.feed(b_pay[50:], b_out, 1 << 20, True)
    finally:
        d.release_inflater(a)
        d.release_inflater(b)
    assert (a_out, b_out) == (a_msg, b_msg)


def test_inflater_feeds_only_inside_a_message() -> None:
    inflater = d.Inflater()
    with pytest.raises(RuntimeError):
        inflater.feed(b"\x00", bytearray(), 10, True)
    inflater.begin()
    out = bytearray()
    inflater.feed(_python_compress(b"one"), out, 10, True)
    assert out == b"one"
    with pytest.raises(RuntimeError):
        inflater.feed(b"\x00", bytearray(), 10, True)
    # begin() forgets a message left half-way.
    inflater.begin()
    inflater.feed(_python_compress(b"abandoned")[:3], bytearray(), 100, False)
    inflater.begin()
    out = bytearray()
    inflater.feed(_python_compress(b"two"), out, 10, True)
    assert out == b"two"


def test_inflater_pool_reuses_and_refuses_double_release() -> None:
    first = d.acquire_inflater()
    assert d.release_inflater(first) is True
    again = d.acquire_inflater()
    assert again is first
    # An inflater given back in the middle of a message starts the next one clean.
    again.feed(_python_compress(b"half")[:2], bytearray(), 100, False)
    d.release_inflater(again)
    with pytest.raises(RuntimeError):
        d.release_inflater(again)
    reused = d.acquire_inflater()
    try:
        out = bytearray()
        reused.feed(_python_compress(b"whole"), out, 100, True)
        assert out == b"whole"
    finally:
        d.release_inflater(reused)
