"""``python -m bench.deflate``: permessage-deflate's compressors side by side.

One run measures, on the same deterministic JSON messages (chat, presence and
dashboard-like objects of 256 B to 64 KiB), per message as RFC 7692 does it
with no context takeover (a fresh raw DEFLATE stream, sync-flushed):

- compression: wsrelay's core (zlib's C API, one stream reset per message) at
  level 1 and zlib's default (6); Python's ``zlib`` module (the baseline) at
  the same levels; ``isal.isal_zlib`` (Intel ISA-L) at its levels 0..3, when
  installed. Time per message, MB/s of input, and compressed/original size.
- decompression of the same streams (compressed by zlib's default level, as
  browsers send them), bounded by a size limit as the gateway inflates: the
  core, Python's ``zlib`` and ``isal_zlib``.

Each figure is the median of ``--rounds`` rounds, the implementations
interleaved within a round. See docs/performance.md (permessage-deflate).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
import zlib
from typing import Any, Callable, Optional, Sequence

from wsrelay._core import deflate as core

SIZES = (256, 1024, 4096, 16384, 65536)
VARIANTS = 8
TAIL = b"\x00\x00\xff\xff"
MAX_SIZE = 1 << 20

_WORDS = (
    "the deploy finished ok can you check dashboard latency spike on eu west looks like cache warmup "
    "thanks merged PR rollback not needed anymore lunch at noon meeting moved to three see logs for "
    "details ping me when ready build green tests pass release notes draft review please great job"
).split()
_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar")
_STATUSES = ("online", "away", "busy", "offline")
_METRICS = ("cpu.user", "cpu.system", "mem.rss", "net.rx", "net.tx", "disk.read", "disk.write", "http.p99")


def _chat(rng: random.Random, i: int) -> dict[str, Any]:
    user = rng.choice(_NAMES)
    return {
        "type": "message",
        "id": f"msg-{rng.getrandbits(48):012x}",
        "room": f"room-{rng.randrange(100)}",
        "user": {"id": f"u{rng.randrange(10000)}", "name": user, "avatar": f"https://cdn.example.com/a/{user}.png"},
        "text": " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 24))),
        "ts": 1718000000 + i * 7 + rng.random(),
        "reactions": {e: rng.randrange(1, 9) for e in rng.sample(["+1", "heart", "laugh", "eyes"], rng.randrange(3))},
    }


def _chat_message(rng: random.Random, size: int) -> bytes:
    """One chat message whose text is as long as fits in ``size`` bytes."""
    message = _chat(rng, 0)
    words: list[str] = []
    encoded = b""
    while True:
        message["text"] = " ".join(words)
        candidate = json.dumps(message, separators=(",", ":")).encode()
        if len(candidate) > size and encoded:
            return encoded
        encoded = candidate
        words.append(rng.choice(_WORDS))


def _member(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "id": f"u{rng.randrange(100000)}",
        "name": f"{rng.choice(_NAMES)}{rng.randrange(100)}",
        "status": rng.choice(_STATUSES),
        "last_seen": 1718000000 + rng.randrange(86400),
        "typing": rng.random() < 0.1,
        "device": rng.choice(("web", "ios", "android")),
    }


def _series(rng: random.Random, i: int) -> dict[str, Any]:
    base = rng.uniform(1, 1000)
    return {
        "name": rng.choice(_METRICS),
        "host": f"web-{rng.randrange(32)}",
        "unit": rng.choice(("percent", "bytes", "ms")),
        "points": [[1718000000 + 10 * k, round(base * rng.uniform(0.9, 1.1), 3)] for k in range(rng.randrange(4, 16))],
    }


def _fill(envelope: dict[str, Any], key: str, make: Callable[[random.Random, int], Any], rng: random.Random,
          size: int) -> bytes:
    """The envelope with as many items under ``key`` as fit in ``size`` bytes; an
    item that does not fit is replaced by another, a few times, before it stops."""
    items: list[Any] = []
    encoded = json.dumps({**envelope, key: items}, separators=(",", ":")).encode()
    misses = 0
    while misses < 20:
        items.append(make(rng, len(items)))
        candidate = json.dumps({**envelope, key: items}, separators=(",", ":")).encode()
        if len(candidate) <= size:
            encoded = candidate
        else:
            items.pop()
            misses += 1
    return encoded


def messages(size: int, variants: int = VARIANTS) -> list[bytes]:
    """Deterministic JSON messages of at most ``size`` bytes: chat, presence, dashboard."""
    out = []
    for v in range(variants):
        rng = random.Random(size * 1000 + v)
        kind = v % 3
        if kind == 0 and size < 1024:
            out.append(_chat_message(rng, size))
        elif kind == 0:
            out.append(_fill({"type": "history", "room": f"room-{v}"}, "messages", _chat, rng, size))
        elif kind == 1:
            out.append(_fill({"type": "presence", "room": f"room-{v}", "count": 0}, "members", _member, rng, size))
        else:
            out.append(_fill({"type": "dashboard", "panel": f"panel-{v}", "range": "1h"}, "series", _series, rng, size))
    return out


# -- the implementations ---------------------------------------------------------------

Compress = Callable[[bytes], bytes]
Inflate = Callable[[bytes], bytes]


def _python_zlib_compress(level: int) -> Compress:
    def compress(data: bytes) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    return compress


def _python_zlib_inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + TAIL, MAX_SIZE + 1)


def _isal() -> Optional[Any]:
    try:
        from isal import isal_zlib
    except ImportError:  # optional peer: its rows are left out and the run says so
        return None
    return isal_zlib


def _isal_compress(isal_zlib: Any, level: int) -> Compress:
    def compress(data: bytes) -> bytes:
        c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
        return (c.compress(data) + c.flush(isal_zlib.Z_SYNC_FLUSH))[:-4]
    return compress


def _isal_inflate(isal_zlib: Any) -> Inflate:
    def inflate(data: bytes) -> bytes:
        return isal_zlib.decompressobj(-15).decompress(data + TAIL, MAX_SIZE + 1)
    return inflate


def _core_inflate(data: bytes) -> bytes:
    return core.inflate(data, MAX_SIZE)


def compressors() -> dict[str, Compress]:
    out: dict[str, Compress] = {
        "wsrelay core (zlib C API) level 1": core.Deflater(15, 1).compress,
        "wsrelay core (zlib C API) level 6": core.Deflater(15, 6).compress,
        "Python zlib level 1": _python_zlib_compress(1),
        "Python zlib level 6 (baseline)": _python_zlib_compress(6),
    }
    isal_zlib = _isal()
    if isal_zlib is not None:
        for level in range(isal_zlib.ISAL_BEST_SPEED, isal_zlib.ISAL_BEST_COMPRESSION + 1):
            out[f"isal_zlib level {level}"] = _isal_compress(isal_zlib, level)
    return out


def inflaters() -> dict[str, Inflate]:
    out: dict[str, Inflate] = {
        "wsrelay core (zlib C API)": _core_inflate,
        "Python zlib (baseline)": _python_zlib_inflate,
    }
    isal_zlib = _isal()
    if isal_zlib is not None:
        out["isal_zlib"] = _isal_inflate(isal_zlib)
    return out


# -- measurement -----------------------------------------------------------------------


def _seconds_per_message(fn: Callable[[bytes], bytes], corpus: Sequence[bytes], budget: float) -> float:
    """Seconds per call of fn over the corpus, run for about ``budget`` seconds."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            for m in corpus:
                fn(m)
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / (loops * len(corpus))
        loops = max(loops * 2, int(loops * budget / max(elapsed, 1e-6) * 1.1))


def _measure(fns: dict[str, Callable[[bytes], bytes]], corpus: Sequence[bytes], budget: float,
             rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_seconds_per_message(fn, corpus, budget))
    return {name: statistics.median(s) for name, s in samples.items()}


def _check(compress: dict[str, Compress], corpus: Sequence[bytes]) -> None:
    """Every compressor's output inflates back to its message, or the run stops."""
    for name, fn in compress.items():
        for m in corpus:
            if _python_zlib_inflate(fn(m)) != m:
                raise SystemExit(f"bench.deflate: {name} does not round-trip")
    streams = [_python_zlib_compress(6)(m) for m in corpus]
    for name, inflate_fn in inflaters().items():
        for m, s in zip(corpus, streams):
            if inflate_fn(s) != m:
                raise SystemExit(f"bench.deflate: {name} does not inflate zlib's stream")


def run(sizes: Sequence[int], budget: float, rounds: int) -> dict[str, Any]:
    comp = compressors()
    infl = inflaters()
    result: dict[str, Any] = {"sizes": list(sizes), "compress": {}, "inflate": {}, "ratio": {}, "bytes": {}}
    for size in sizes:
        corpus = messages(size)
        _check(comp, corpus)
        total = sum(len(m) for m in corpus)
        result["bytes"][size] = total / len(corpus)
        for name, fn in comp.items():
            result["ratio"].setdefault(name, {})[size] = sum(len(fn(m)) for m in corpus) / total
        for name, t in _measure(comp, corpus, budget, rounds).items():
            result["compress"].setdefault(name, {})[size] = t
        streams = [_python_zlib_compress(6)(m) for m in corpus]
        for name, t in _measure(infl, streams, budget, rounds).items():
            result["inflate"].setdefault(name, {})[size] = t
        print(f"bench.deflate: {size} B done", file=sys.stderr)
    return result


def _label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def _table(title: str, rows: dict[str, dict[int, float]], result: dict[str, Any], baseline: str) -> list[str]:
    sizes = result["sizes"]
    lines = [f"### {title}", "",
             "µs per message, MB/s of uncompressed data, and speed relative to " + baseline + ".", "",
             "| implementation | " + " | ".join(_label(s) for s in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    for name, per_size in rows.items():
        cells = []
        for s in sizes:
            t = per_size[s]
            mbps = result["bytes"][s] / t / 1e6
            cells.append(f"{t * 1e6:.1f} µs · {mbps:.0f} MB/s · {rows[baseline][s] / t:.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    lines = [
        f"Python {platform.python_version()}, zlib {core.ZLIB_VERSION} (the core's, linked), "
        f"{zlib.ZLIB_RUNTIME_VERSION} (Python's), isal {_isal_version()}; {platform.machine()}, "
        f"{platform.processor() or platform.platform()}.",
        "Messages: " + ", ".join(f"{_label(s)} (mean {result['bytes'][s]:.0f} B)" for s in sizes) + ", "
        f"{VARIANTS} per size.",
        "",
    ]
    lines += _table("Compression", result["compress"], result, "Python zlib level 6 (baseline)")
    lines += ["### Compressed size / original size", "",
              "| implementation | " + " | ".join(_label(s) for s in sizes) + " |",
              "| --- |" + " ---: |" * len(sizes)]
    for name, per_size in result["ratio"].items():
        lines.append(f"| {name} | " + " | ".join(f"{per_size[s]:.3f}" for s in sizes) + " |")
    lines.append("")
    lines += _table("Decompression (bounded, of zlib level 6 streams)", result["inflate"], result,
                    "Python zlib (baseline)")
    return "\n".join(lines)


def _isal_version() -> str:
    try:
        import isal
    except ImportError:  # optional peer: reported as absent
        return "not installed (pip install isal)"
    return str(getattr(isal, "__version__", "?"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deflate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=0.2, help="time per implementation, size and round (default 0.2)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; each figure is their median (default 5)")
    p.add_argument("--quick", action="store_true", help="a check that everything works, not a measurement")
    args = p.parse_args(argv)
    budget, rounds = (0.01, 1) if args.quick else (args.seconds, max(1, args.rounds))
    if _isal() is None:
        print("bench.deflate: isal is not installed (pip install isal): its rows are left out", file=sys.stderr)
    print(markdown(run(SIZES, budget, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
