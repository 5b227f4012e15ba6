"""The cross-node codec (wsrelay/cluster/codec.py): what crosses, what is
refused at the call, and what is refused on arrival."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import uuid

import ormsgpack
import pytest

from wsrelay._core.pid import Pid
from wsrelay.cluster import codec, wire

PID = Pid("app:gateway", (3 << 32) | 10, "web1-2")


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int = 1


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2 ** 64 - 1, -(2 ** 63), 1.5, "", "é€", b"", b"\x00\xff",
    [], [1, "a", None], {"a": {"b": [PID, b"x"]}}, PID, Pid("h", 1),
])
def test_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value


def test_tuples_arrive_as_lists_and_bytes_likes_as_bytes() -> None:
    assert codec.decode(codec.encode((1, (2, 3)))) == [1, [2, 3]]
    assert codec.decode(codec.encode(bytearray(b"ab"))) == b"ab"
    assert codec.decode(codec.encode(memoryview(b"cd"))) == b"cd"
    assert codec.decode(codec.encode(Level.HIGH)) == 3 and type(codec.decode(codec.encode(Level.HIGH))) is int


def test_a_decoded_pid_is_a_pid() -> None:
    out = codec.decode(codec.encode({"p": PID}))["p"]
    assert type(out) is Pid and out.node == "web1-2" and out.host == "app:gateway" and out.id == PID.id


@pytest.mark.parametrize("value", [
    {1, 2}, frozenset(), object(), 1j, datetime.datetime.now(), datetime.date.today(), uuid.uuid4(),
    Point(), Colour.RED, 2 ** 64, -(2 ** 63) - 1, {1: "int key"}, {"a": {(1,): 2}}, [1, [object()]],
    ValueError("x"), print,
])
def test_refused_with_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="cluster codec"):
        codec.encode(value)


def test_no_pickle_on_arrival() -> None:
    with pytest.raises(ValueError):
        codec.decode(ormsgpack.packb(ormsgpack.Ext(9, b"cos\nsystem\n")))
    with pytest.raises(ValueError):
        codec.decode(ormsgpack.packb(ormsgpack.Ext(codec.PID_EXT, b"not a pid")))


def test_batch_layout() -> None:
    header = wire.Header("a", 1, "b", 2, 3, 4, 5, 0)
    records = [wire.record_send(7, "h", str(PID), "t", i) for i in range(40)]
    parsed, items = wire.parse_batch(wire.batch(header, records))
    assert parsed == header
    assert items[1:] == [[wire.SEND, 7, "h", str(PID), "t", i] for i in range(40)]
    big = wire.record_send(7, "h", str(PID), "t", b"x" * 100_000)
    pieces = wire.fragments(big, 30_000)
    assert len(pieces) == 4
    chunks = [codec.decode(p) for p in pieces]
    assert [c[2] for c in chunks] == [False, False, False, True]
    assert b"".join(c[1] for c in chunks) == big
