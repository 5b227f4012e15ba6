"""The cluster codec's candidates on the records the transport carries:
ormsgpack and msgpack (both carry bytes and a Pid as an extension type),
and orjson for reference (it cannot carry bytes: its rows use text payloads).

    python -m bench.cluster_codec [--quick]

A record is what one cross-node send becomes: [kind, destination id,
destination host, sender, topic, payload]. Each record is encoded on its own
(a send must raise TypeError at the call, so it cannot wait for the batch);
a batch is the records joined under one array header and decoded in one call,
as the transport does. Payload shapes: 256 B of bytes, 256 B of text, and a
small dict holding a Pid, a 256 B text and a nested dict. Figures are the best
of several rounds, in nanoseconds per record.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import msgpack
import orjson
import ormsgpack

from wsrelay import Pid
from wsrelay.cluster import codec
from wsrelay.cluster.wire import array_header

BATCH = 64
SENDER = Pid("app:gateway", (7 << 32) | 0x1234, "web1-2")
DEST_ID = (9 << 32) | 0x4321


def _shapes() -> dict[str, Any]:
    text = ("x" * 255) + "é"
    return {
        "bytes256": bytes(range(256)),
        "text256": text[:255],
        "dict+pid": {"conn": SENDER, "text": text[:255], "seq": 12345, "meta": {"room": "lobby", "n": 3}},
    }


# -- the candidates: (encode one record, decode one batch) ------------------------

_ORMSGPACK_OPTS = (ormsgpack.OPT_PASSTHROUGH_BIG_INT | ormsgpack.OPT_PASSTHROUGH_DATACLASS
                   | ormsgpack.OPT_PASSTHROUGH_DATETIME | ormsgpack.OPT_PASSTHROUGH_ENUM
                   | ormsgpack.OPT_PASSTHROUGH_UUID)


def _ormsgpack_default(obj: Any) -> Any:
    if type(obj) is Pid:
        return ormsgpack.Ext(1, str(obj).encode())
    raise TypeError(type(obj).__name__)


_pids: dict[bytes, Pid] = {}


def _ext_pid(code: int, data: bytes) -> Any:
    # The same cache as wsrelay.cluster.codec's, so the rows compare the libraries.
    pid = _pids.get(data)
    if pid is None:
        pid = _pids[data] = Pid.parse(data.decode())
    return pid


def _ormsgpack() -> tuple[Callable[[list], bytes], Callable[[bytes], list]]:
    packb, unpackb = ormsgpack.packb, ormsgpack.unpackb
    opts, default = _ORMSGPACK_OPTS, _ormsgpack_default

    def encode(rec: list) -> bytes:
        return packb(rec, default=default, option=opts)

    def decode(data: bytes) -> list:
        return unpackb(data, ext_hook=_ext_pid)

    return encode, decode


def _msgpack() -> tuple[Callable[[list], bytes], Callable[[bytes], list]]:
    def default(obj: Any) -> Any:
        if type(obj) is Pid:
            return msgpack.ExtType(1, str(obj).encode())
        raise TypeError(type(obj).__name__)

    packer = msgpack.Packer(default=default, use_bin_type=True)

    def decode(data: bytes) -> list:
        return msgpack.unpackb(data, ext_hook=_ext_pid, raw=False)

    return packer.pack, decode


def _orjson() -> tuple[Callable[[list], bytes], Callable[[bytes], list]]:
    def default(obj: Any) -> Any:
        if type(obj) is Pid:
            return str(obj)
        raise TypeError(type(obj).__name__)

    dumps, loads = orjson.dumps, orjson.loads

    def encode(rec: list) -> bytes:
        return dumps(rec, default=default)

    def decode(data: bytes) -> list:
        # Text records joined with commas under brackets: one parse per batch.
        return loads(data)

    return encode, decode


def _ours() -> tuple[Callable[[list], bytes], Callable[[bytes], list]]:
    return codec.encode, codec.decode


CANDIDATES = {"wsrelay.cluster.codec": _ours, "ormsgpack": _ormsgpack, "msgpack": _msgpack, "orjson": _orjson}


def _measure(encode: Callable[[list], bytes], decode: Callable[[bytes], list], payload: Any,
             json_batch: bool, rounds: int, batches: int) -> tuple[float, float, int]:
    records = [[0, DEST_ID + i, "app:gateway", str(SENDER), "ws.msg", payload] for i in range(BATCH)]
    best_enc = best_dec = float("inf")
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(batches):
            parts = [encode(rec) for rec in records]
            if json_batch:
                data = b"[" + b",".join(parts) + b"]"
            else:
                data = array_header(len(parts)) + b"".join(parts)
        t1 = time.perf_counter()
        for _ in range(batches):
            out = decode(data)
        t2 = time.perf_counter()
        assert len(out) == BATCH
        best_enc = min(best_enc, (t1 - t0) / (batches * BATCH))
        best_dec = min(best_dec, (t2 - t1) / (batches * BATCH))
        size = len(data)
    return best_enc * 1e9, best_dec * 1e9, size // BATCH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds, batches = (3, 200) if args.quick else (7, 1000)
    print(f"{'shape':10} {'codec':22} {'encode ns':>10} {'decode ns':>10} {'bytes':>6}"
          f"  (per record, batches of {BATCH})")
    for shape, payload in _shapes().items():
        baseline = None
        for name, make in CANDIDATES.items():
            if name == "orjson" and shape == "bytes256":
                print(f"{shape:10} {name:22} {'cannot carry bytes':>28}")
                continue
            encode, decode = make()
            enc, dec, size = _measure(encode, decode, payload, name == "orjson", rounds, batches)
            if baseline is None:
                baseline = enc + dec
            ratio = (enc + dec) / baseline
            print(f"{shape:10} {name:22} {enc:10.0f} {dec:10.0f} {size:6d}  x{ratio:.2f} of the first row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
