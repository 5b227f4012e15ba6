"""Fuzzing with hypothesis.

(a) The message layer through a real gateway: random sequences of frames
    (fragmented text and binary, valid and invalid UTF-8, interleaved control
    frames, close frames with random codes and reasons, reserved bits, bad
    opcodes, unmasked and oversized frames) from a raw socket client. The
    gateway never crashes or hangs, every valid message reaches the target
    exactly once and intact, every ping before the end is answered, and
    invalid input closes the connection with the RFC 6455 code.
(b) ``wsrelay.relay.parse_relay_header`` with arbitrary text and JSON: it
    returns a RelaySpec or raises RelayHeaderError, nothing else.

The run is bounded: WSRELAY_FUZZ_EXAMPLES (default 600) examples for (a),
500 for (b), no per-example deadline (the machine is shared), a hard
timeout per example. Crashes found are kept as explicit tests at the end.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import os
from typing import Optional

import pytest
import uvloop
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import wsrelay
from tests.apps import relay_app
from tests.harness import end_loop, leaked_processes, running
from tests.procs import relay_to
from tests.wsclient import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    apply_mask,
    close_payload,
    encode_frame,
    http_request,
)
from wsrelay import Pid, RelayHeaderError, process
from wsrelay.relay import RelaySpec, parse_relay_header

MAX_MESSAGE = 1024  # WSRELAY_MAX_MESSAGE_SIZE of the fuzzed gateway
EXAMPLES = int(os.environ.get("WSRELAY_FUZZ_EXAMPLES", "600"))
CASE_TIMEOUT = 30.0  # a whole example, at most
STEP_TIMEOUT = float(os.environ.get("WSRELAY_FUZZ_STEP_TIMEOUT", "5"))  # one answer from the gateway
# Close codes a client may send (RFC 6455 §7.4 and the IANA registry: 1012-1014
# too); 1004-1006, 1015 and anything else below 3000 or above 4999 are refused.
VALID_CLOSE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))

# Shrinking a hang costs STEP_TIMEOUT per attempt: it is off unless asked for
# (WSRELAY_FUZZ_SHRINK=1), so a failure is reported within the time bound.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
if os.environ.get("WSRELAY_FUZZ_SHRINK"):
    _PHASES.append(Phase.shrink)
settings.register_profile(
    "wsrelay-ops", deadline=None, database=None, print_blob=True, phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)


# -- frames and the model of what the gateway must do with them ------------------------------


@dataclasses.dataclass
class F:
    """A frame to send, as bytes, and what it is."""
    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    overlong: bool = False  # a 16-bit length for a payload under 126 bytes

    def encode(self) -> bytes:
        if not self.overlong:
            return encode_frame(self.opcode, self.payload, fin=self.fin, rsv=self.rsv, mask=self.masked)
        key = b"\x01\x02\x03\x04"
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        return bytes([first, 0x80 | 126]) + len(self.payload).to_bytes(2, "big") + key + apply_mask(self.payload, key)


@dataclasses.dataclass
class Outcome:
    """What the gateway must do with a sequence of frames."""
    delivered: list            # (type, data) in order
    pongs: list                # ping payloads answered, in order
    end: int                   # index of the frame that ends the connection
    codes: set                 # acceptable close codes from the server
    leave_reason: str          # "client_closed", or "failed": the reason follows the close code
    leave_code: object         # the ws.leave code (a set of acceptable ones for failures)


def _utf8_ok(data: bytes, decoder, final: bool) -> bool:
    """Whether the text so far is valid UTF-8 or a prefix of it. Python's
    incremental decoder waits for more bytes after a cut sequence that can
    never be completed (``ED A0`` opens a surrogate); the relay fails it at
    once, at the first byte that makes it invalid (fail-fast, as Autobahn's
    6.4.x cases expect), so the model does too."""
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        return False
    pending = decoder.getstate()[0]
    if not pending:
        return True
    # A cut sequence is a valid prefix when some continuation completes it:
    # only the byte after the lead byte has a range of its own.
    size = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}.get(pending[0] >> 4, 0)
    if size <= len(pending):
        return False
    if len(pending) > 1:
        return _valid(pending + b"\x80" * (size - len(pending)))
    return any(_valid(pending + bytes([second]) + b"\x80" * (size - 2)) for second in range(0x80, 0xC0))


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def model(frames: list[F]) -> Outcome:
    """RFC 6455 as wsrelay applies it (docs/guide.md section 3, "Close codes"). A frame with more than one
    defect may be refused for any of them."""
    delivered: list = []
    pongs: list = []
    frag_op: Optional[int] = None
    parts: list[bytes] = []
    size = 0
    decoder = None
    for index, f in enumerate(frames):
        defects: set[int] = set()
        control = f.opcode >= 0x8
        if f.opcode not in (CONT, TEXT, BINARY, CLOSE, PING, PONG):
            defects.add(1002)
        if control and not f.fin:
            defects.add(1002)
        if not f.masked or f.overlong or f.rsv:
            defects.add(1002)
        if control and len(f.payload) > 125:
            defects.add(1002)
        if f.opcode == CLOSE and not defects:
            if len(f.payload) == 1:
                defects.add(1002)
            elif len(f.payload) >= 2:
                code = int.from_bytes(f.payload[:2], "big")
                if code not in VALID_CLOSE:
                    defects.add(1002)
                try:
                    f.payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    defects.add(1007)
        data_frame = f.opcode in (TEXT, BINARY, CONT)
        if data_frame and len(f.payload) > MAX_MESSAGE:
            defects.add(1009)  # a single frame over the bound: refused as it is read
        if (f.opcode == CONT and frag_op is None) or (f.opcode in (TEXT, BINARY) and frag_op is not None):
            defects.add(1002)
        if data_frame and not defects:
            op = frag_op if f.opcode == CONT else f.opcode
            if f.opcode != CONT:
                size = 0
                parts = []
                decoder = codecs.getincrementaldecoder("utf-8")()
            size += len(f.payload)
            if size > MAX_MESSAGE:
                defects.add(1009)
            elif op == TEXT and not _utf8_ok(f.payload, decoder, f.fin):
                defects.add(1007)
            else:
                parts.append(f.payload)
                if f.fin:
                    data = b"".join(parts)
                    delivered.append(("text", data.decode()) if op == TEXT else ("binary", data))
                    frag_op = None
                else:
                    frag_op = op
        if defects:
            return Outcome(delivered, pongs, index, defects, "failed", defects)
        if f.opcode == PING:
            pongs.append(f.payload)
        elif f.opcode == CLOSE:
            code = int.from_bytes(f.payload[:2], "big") if len(f.payload) >= 2 else None
            return Outcome(delivered, pongs, index, {code if code is not None else 1000}, "client_closed", code)
    raise AssertionError("the sequence must end with a close or a defect")


# -- strategies ------------------------------------------------------------------------------

control_frames = st.builds(F, st.sampled_from([PING, PONG]), st.binary(max_size=125))
text_payloads = st.one_of(
    st.text(max_size=120).map(str.encode),
    st.text(min_size=200, max_size=500).map(str.encode),  # multi-byte text may pass the 1 KiB bound
    st.binary(max_size=120),                               # mostly invalid UTF-8
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=20).map(str.encode),
              st.sampled_from([b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xff", b"\xc0\xaf"]),
              st.text(max_size=20).map(str.encode)),
)
binary_payloads = st.one_of(st.binary(max_size=200), st.binary(min_size=900, max_size=1200))


@st.composite
def messages(draw) -> list[F]:
    """One data message, maybe fragmented, with control frames between fragments."""
    opcode = draw(st.sampled_from([TEXT, BINARY]))
    payload = draw(text_payloads if opcode == TEXT else binary_payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    frames: list[F] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        frames.append(F(opcode if i == 0 else CONT, piece, fin=last))
        if not last:
            frames.extend(draw(st.lists(control_frames, max_size=2)))
    return frames


def _close_frame(code: Optional[int], reason: bytes) -> F:
    return F(CLOSE, close_payload(code, reason))


close_frames = st.one_of(
    st.builds(_close_frame, st.one_of(st.none(), st.sampled_from(sorted(VALID_CLOSE)[:16]),
                                      st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]),
                                      st.integers(0, 65535)),
              st.one_of(st.just(b""), st.text(max_size=40).map(str.encode), st.binary(max_size=20))),
    st.just(F(CLOSE, b"\x03")),  # a 1-byte close payload
)

bad_frames = st.one_of(
    st.builds(F, st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), st.binary(max_size=20)),  # opcodes
    # reserved bits (not on a PING: test_fuzz_regression[ping_with_reserved_bits])
    st.builds(F, st.sampled_from([TEXT, BINARY, PONG, CONT]), st.text(max_size=10).map(str.encode),
              st.just(True), st.integers(1, 7)),
    st.builds(F, st.sampled_from([PING, PONG]), st.binary(max_size=10), st.just(False)),     # fragmented control
    st.builds(F, st.sampled_from([PING, PONG, CLOSE]), st.binary(min_size=126, max_size=200)),  # long control
    st.builds(F, st.sampled_from([TEXT, BINARY]), st.just(b"unmasked"), st.just(True), st.just(0),
              st.just(False)),                                                              # unmasked
    st.builds(F, st.sampled_from([TEXT, BINARY]), st.just(b"overlong"), st.just(True), st.just(0),
              st.just(True), st.just(True)),                                                # non-minimal length
    st.builds(F, st.just(CONT), st.just(b"orphan")),                                        # continuation alone
    st.builds(F, st.just(BINARY), st.binary(min_size=MAX_MESSAGE + 1, max_size=MAX_MESSAGE + 100)),  # too big
)


@st.composite
def cases(draw):
    """(frames, byte offsets to split the writes of the prefix at)."""
    frames: list[F] = []
    for item in draw(st.lists(st.one_of(messages(), control_frames.map(lambda f: [f])), max_size=6)):
        frames.extend(item)
    # What ends it: nothing more (the client closes with 1000), a close, or
    # a bad frame, possibly in the middle of a fragmented message.
    ending = draw(st.sampled_from(["close", "random_close", "bad", "bad_mid_message"]))
    if ending == "close":
        frames.append(_close_frame(1000, b""))
    elif ending == "random_close":
        frames.append(draw(close_frames))
    elif ending == "bad":
        frames.append(draw(bad_frames))
    else:
        message = draw(messages())
        cut = draw(st.integers(0, len(message)))
        frames.extend(message[:cut])
        frames.append(draw(st.one_of(bad_frames, st.builds(F, st.just(TEXT), st.just(b"interloper")))))
    try:
        end = model(frames).end
    except AssertionError:  # the "bad" frame turned out valid: close normally
        frames.append(_close_frame(1000, b""))
        end = len(frames) - 1
    # Only well-formed frames after the end (picows reads one frame ahead: a
    # malformed one right after the end would be reported instead of it).
    del frames[end + 1:]
    # Frames after the end must be ignored.
    frames.extend(draw(st.lists(st.one_of(control_frames, st.builds(F, st.just(TEXT), st.just(b"after the end"))),
                                max_size=3)))
    splits = draw(st.lists(st.integers(0, 10_000), max_size=6))
    return frames, splits


# -- (a) the message layer through a gateway -------------------------------------------------


class FuzzGateway:
    """A gateway on its own loop for the whole module: hypothesis runs plain
    functions, so each example runs on this loop with run_until_complete."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.observer = wsrelay.node().system.pid

        def handler(req, res):
            pid = process.spawn("relay:forward", None, self.observer)
            relay_to(res, pid)

        self._running = running(relay_app(handler), max_message_size=MAX_MESSAGE, ping_interval=0,
                                close_timeout=5.0)
        self.gateway = self.loop.run_until_complete(self._running.__aenter__())

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, CASE_TIMEOUT))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self._running.__aexit__(None, None, None))
            leaked = leaked_processes()
        finally:
            end_loop(self.loop)
        assert not leaked, f"fuzzing left processes running: {leaked}"


@pytest.fixture(scope="module")
def fuzz_gateway():
    gw = FuzzGateway()
    yield gw
    gw.close()


async def _next_seen(inbox, client_pid):
    """The next (topic, payload) the recorder of ``client_pid`` forwarded;
    leftovers of earlier examples are skipped."""
    while True:
        msg = await inbox.receive(timeout=STEP_TIMEOUT)
        topic, payload = msg.payload
        if client_pid is None or payload.get("client_pid") == client_pid:
            return topic, payload


async def _joined(inbox):
    """The ws.join payload of the connection just opened; anything the
    recorders forwarded before it is skipped."""
    while True:
        topic, join = await _next_seen(inbox, None)
        if topic == "ws.join":
            return join


async def run_case(gw: FuzzGateway, frames: list[F], splits: list[int]) -> None:
    expected = model(frames)
    inbox = process.inbox()
    client = await RawWebSocket.connect(gw.gateway, "/ws/chat")
    try:
        join = await _joined(inbox)
        me = join["client_pid"]

        # 1. Everything before the end, written in arbitrary pieces (frame
        # headers cut anywhere), then confirmed: every message at the target,
        # every pong back. (picows does not deliver a frame when the frame
        # after it in the same read is malformed; see the regression tests.)
        prefix = b"".join(f.encode() for f in frames[:expected.end])
        cuts = sorted({s % (len(prefix) + 1) for s in splits})
        for a, b in zip([0, *cuts], [*cuts, len(prefix)]):
            if b > a:
                client.send_raw(prefix[a:b])
                await client.drain()
        delivered: list = []
        while len(delivered) < len(expected.delivered):
            topic, payload = await _next_seen(inbox, me)
            assert topic == "ws.message", (topic, payload)
            delivered.append((payload["type"], payload["data"]))
        assert delivered == expected.delivered
        pongs: list = []
        while len(pongs) < len(expected.pongs):
            frame = await client.recv_frame(STEP_TIMEOUT)
            assert frame.opcode == PONG, frame
            pongs.append(frame.payload)
        assert pongs == expected.pongs

        # 2. The frame that ends it and whatever follows, in one write.
        try:
            client.send_raw(b"".join(f.encode() for f in frames[expected.end:]))
            await client.drain()
        except ConnectionError:
            pass
        try:
            rest, close = await client.recv_until_close(STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"no close within {STEP_TIMEOUT} s: frame {frames[expected.end]} "
                                 f"did not end the connection") from None
        assert rest == [], f"frames after the end: {rest}"
        assert close is not None, "the connection ended without a close frame"
        assert close.close_code in expected.codes, (close.close_code, expected.codes, close.close_reason)
        # The server closes the TCP connection. (After a protocol error the
        # client does not answer the close here: see
        # test_answering_the_close_of_a_protocol_error_keeps_the_reason.)
        await client.expect_end(STEP_TIMEOUT)

        # 3. The target: nothing more, then ws.leave with the reason.
        topic, payload = await _next_seen(inbox, me)
        assert topic == "ws.leave", (topic, payload, "a message after the end was delivered")
        if expected.leave_reason == "client_closed":
            assert (payload["reason"], payload["code"]) == ("client_closed", expected.leave_code)
        else:
            assert payload["code"] == close.close_code
            reason = "message_too_big" if close.close_code == 1009 else "protocol_error"
            assert payload["reason"] == reason, payload
    finally:
        client.abort()


@settings(settings.get_profile("wsrelay-ops"), max_examples=EXAMPLES)
@given(case=cases())
def test_fuzz_frames_through_the_gateway(fuzz_gateway, case):
    frames, splits = case
    fuzz_gateway.run(run_case(fuzz_gateway, frames, splits))


def test_the_gateway_survived_the_fuzzing(fuzz_gateway):
    async def check():
        res = await http_request(fuzz_gateway.gateway, "/health")
        assert res.status == 200, res.body
        assert json.loads(res.body)["connections"] == 0
        await run_case(fuzz_gateway, [F(TEXT, b"still fine"), _close_frame(1000, b"")], [])

    fuzz_gateway.run(check())


# -- regressions found by the fuzzer (explicit, always run) ----------------------------------

REGRESSIONS = {
    # A PING with a reserved bit set must fail the connection (1002) like any
    # other frame; picows answers it with a PONG before wsrelay sees it, and
    # the connection stays open.
    "ping_with_reserved_bits": ([F(PING, b"", rsv=1)], []),
    "ping_with_reserved_bits_after_a_message": ([F(TEXT, b"hi"), F(PING, b"x", rsv=4)], [3]),
    # Close with a 1-byte payload, with an invalid code, with a bad reason.
    "close_with_one_byte": ([F(CLOSE, b"\x03")], []),
    "close_with_code_1005": ([_close_frame(1005, b"")], []),
    "close_with_code_1012": ([_close_frame(1012, b"restart")], []),
    "close_with_code_1015": ([_close_frame(1015, b"")], []),
    "close_with_code_0": ([_close_frame(0, b"")], []),
    "close_with_code_5000": ([_close_frame(5000, b"")], []),
    "close_with_invalid_utf8_reason": ([_close_frame(1000, b"\xff")], []),
    # Fragmented text cut inside a UTF-8 sequence, and one ending inside one.
    "text_split_inside_a_character": ([F(TEXT, "é".encode()[:1], fin=False), F(CONT, "é".encode()[1:])], [1, 7]),
    "text_ending_inside_a_character": ([F(TEXT, b"ok\xc3", fin=False), F(CONT, b"")], []),
    # Messages exactly at and just over WSRELAY_MAX_MESSAGE_SIZE, in fragments.
    "message_at_the_limit": ([F(BINARY, b"a" * 1000, fin=False), F(CONT, b"b" * 24), _close_frame(1000, b"")], []),
    "message_over_the_limit": ([F(BINARY, b"a" * 1000, fin=False), F(CONT, b"b" * 25)], []),
}


def _with_close(frames):
    try:
        model(frames)
    except AssertionError:
        frames = [*frames, _close_frame(1000, b"")]
    return frames


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzz_regression(fuzz_gateway, name):
    frames, splits = REGRESSIONS[name]
    fuzz_gateway.run(run_case(fuzz_gateway, _with_close(frames), splits))


@pytest.mark.parametrize("bad,code", [
    (F(3, b""), 1002), (F(CLOSE, b"\x03"), 1002), (_close_frame(1004, b""), 1002), (_close_frame(1000, b"\xff"), 1007),
    (F(CONT, b"orphan"), 1002), (F(TEXT, b"x", rsv=2), 1002), (F(TEXT, b"\xff"), 1007),
], ids=["bad-opcode", "one-byte-close", "close-code-1004", "close-reason-not-utf8", "orphan-continuation",
        "reserved-bits", "text-not-utf8"])
def test_answering_the_close_of_a_protocol_error_keeps_the_reason(fuzz_gateway, bad, code):
    """A client that answers the gateway's 1002 close with a close of its own,
    as browsers do: its target's ws.leave still says protocol_error with the
    code the gateway sent, not client_closed. (The fuzzer's client does not answer; this one does.)"""

    async def check():
        inbox = process.inbox()
        client = await RawWebSocket.connect(fuzz_gateway.gateway, "/ws/chat")
        try:
            join = await _joined(inbox)
            client.send_raw(bad.encode())
            await client.drain()
            close = await client.recv_frame(STEP_TIMEOUT)
            assert close.opcode == CLOSE and close.close_code == code, close
            with contextlib.suppress(ConnectionError):
                client.send_frame(CLOSE, close.payload[:2])
                await client.drain()
            await client.expect_end(STEP_TIMEOUT)
            topic, leave = await _next_seen(inbox, join["client_pid"])
            assert topic == "ws.leave"
            assert (leave["reason"], leave["code"]) == ("protocol_error", code), leave
        finally:
            client.abort()

    fuzz_gateway.run(check())


# -- (b) parse_relay_header ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
_names = st.text(st.characters(blacklist_characters="{}|@ \t\r\n"), min_size=1, max_size=12)
pid_texts = st.one_of(
    st.builds(lambda host, ident, node: str(Pid(host, ident, node)),
              _names, st.integers(0, 2**64 - 1), st.none() | _names),
    st.text(max_size=40),
    st.builds(lambda h, d: "{" + h + "|0x" + d + "}", st.text(max_size=8),
              st.text("0123456789abcdefABCDEF", max_size=30)),
)
durations = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.one_of(st.integers(0, 10**30), st.floats(0, 1e30)),
              st.sampled_from(["", "ms", "s", "m", "h", "d", " s"])),
    st.integers(-10, 10**30), st.floats(allow_nan=False), st.text(max_size=10), json_values,
)
relay_objects = st.fixed_dictionaries(
    {},
    optional={
        "target_pid": st.one_of(pid_texts, json_values),
        "message_topic": st.one_of(st.text(max_size=10), json_values),
        "heartbeat_interval": durations,
        "metadata": json_values,
        "extra": json_values,
    },
)


def _check_header(raw: str) -> None:
    try:
        spec = parse_relay_header(raw)
    except RelayHeaderError:
        return
    assert isinstance(spec, RelaySpec)
    assert isinstance(spec.target_pid, Pid)
    assert isinstance(spec.message_topic, str) and spec.message_topic and spec.message_topic[0] != "@"
    assert isinstance(spec.metadata, dict)
    assert spec.heartbeat_interval == 0 or 0.01 <= spec.heartbeat_interval < float("inf")


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=True)


@settings(settings.get_profile("wsrelay-ops"), max_examples=500)
@given(raw=st.one_of(st.text(), json_values.map(_dumps), relay_objects.map(_dumps),
                     relay_objects.map(lambda o: _dumps(o)[:-1] if len(_dumps(o)) > 2 else "")))
def test_fuzz_parse_relay_header(raw):
    _check_header(raw)


@pytest.mark.parametrize("raw", [
    '{"target_pid": "{a|0x00001}", "heartbeat_interval": 1e308}',
    '{"target_pid": "{a|0x00001}", "heartbeat_interval": "99999999999999999999999h"}',
    '{"target_pid": "{a|0x' + "f" * 17 + '}"}',
    '{"target_pid": "{a|0x00001}", "metadata": null}',
    '{"target_pid": "{a|0x00001}", "heartbeat_interval": 1e400}',
    '{"target_pid": "{a|0x00001}", "heartbeat_interval": true}',
    '{"target_pid": "{a|0x00001}"} trailing',
    '{"target_pid": "\\ud800"}',
    "\ud800",
    '{"target_pid": 12345678901234567890123}',
])
def test_parse_relay_header_edge_cases(raw):
    _check_header(raw)


@pytest.mark.parametrize("bad", [F(3, b""), F(BINARY, b"x" * (MAX_MESSAGE + 1)), F(TEXT, b"unmasked", masked=False)],
                         ids=["bad-opcode", "frame-too-big", "unmasked"])
def test_a_message_read_together_with_a_malformed_frame_is_delivered(fuzz_gateway, bad):
    """Messages complete before a protocol error reach the target even when
    the malformed frame arrives in the same read. (The fuzzer confirms each
    message before sending the bad frame, so it does not cover this.)"""
    frames = [F(TEXT, b"first"), F(BINARY, b"second"), bad]

    async def check():
        inbox = process.inbox()
        client = await RawWebSocket.connect(fuzz_gateway.gateway, "/ws/chat")
        try:
            join = await _joined(inbox)
            client.send_raw(b"".join(f.encode() for f in frames))  # one write, one read
            await client.drain()
            _, close = await client.recv_until_close(STEP_TIMEOUT)
            assert close is not None and close.close_code in model(frames).codes
            seen = []
            while True:
                topic, payload = await _next_seen(inbox, join["client_pid"])
                if topic == "ws.leave":
                    break
                seen.append((payload["type"], payload["data"]))
            assert seen == [("text", "first"), ("binary", b"second")]
        finally:
            client.abort()

    fuzz_gateway.run(check())
