"""The publisher side of ``python -m bench publish``: one driver that every
server's publisher script runs in a process of its own
(bench/servers/wsrelay_publish.py, bench/servers/django_channels/publish.py,
bench/servers/socketio_publish.py), each giving it a ``Sender`` that
publishes one text message to the room its own way.

Talk with the bench (bench/publish.py) goes over stdin and stdout, one JSON
object a line. Until told ``{"cmd": "hold"}`` the driver publishes probes
(the subscribers' sign that they are in the room): another one only when the
last has not reached every subscriber ``REPROBE_S`` after it (one joined the
room late), so that a slow server has few probes queued when the run
starts. ``{"cmd": "go", "t_end": ns, "rate": r, "window": w}`` starts the run: publications
numbered from 0 until the instant ``t_end`` (CLOCK_MONOTONIC, which the
load generator's processes share), ``rate`` a second (None: as fast as the
window lets), at most ``window`` of them not yet received by every
subscriber (None: no limit). What the subscribers received is read from a
small file every load generator worker writes its progress to (``Shared``).
The last line on stdout is the result.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import select
import sys
import time
from typing import Any, Callable, Optional

Sender = Callable[[str], None]
now_ns = time.monotonic_ns

# A publication is text: a stamp, '~' then the send time in ns (20 digits)
# and the sequence number (signed, 20 characters), then a filler. Every
# server wraps it its own way (a channel envelope, a Socket.IO event); the
# subscriber finds the stamp by its '~', which none of the wrappings use.
STAMP = "~"
STAMP_LEN = 41
# Probes are numbered from PROBE_FIRST up, below 0 (the first publication):
# the subscribers' progress through them is tracked as through publications.
PROBE_FIRST = -(1 << 40)
REPROBE_S = 5.0
NOTHING = -(1 << 62)  # a slot before anything was received
FILLER_WORDS = "the room meeting at ten see you there ok thanks lunch build deploy green review "


def filler(size: int) -> str:
    """The part after the stamp of a ``size``-character message (letters and
    spaces: the same length once JSON-encoded)."""
    n = max(0, size - STAMP_LEN)
    return (FILLER_WORDS * (n // len(FILLER_WORDS) + 1))[:n]


def message(ts: int, seq: int, tail: str) -> str:
    return f"{STAMP}{ts:020d}{seq:+020d}{tail}"


class Shared:
    """The file the load generator workers and the publisher share (int64
    slots, mapped): slot 0 the last sequence number published (a probe's
    before the run), slot 1 + i the highest one every subscriber of worker
    i has received."""

    def __init__(self, path: str, workers: int, create: bool = False) -> None:
        size = 8 * (1 + workers)
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.slots = memoryview(self._map).cast("q")
        if create:
            for i in range(len(self.slots)):
                self.slots[i] = NOTHING

    def slowest(self) -> int:
        return min(self.slots[1:])

    def quiet(self) -> bool:
        """Every subscriber has the last thing published: nothing is queued."""
        return self.slowest() >= self.slots[0]

    def close(self) -> None:
        self.slots.release()
        self._map.close()


class Orders:
    """The bench's lines on stdin, read without Python's buffering (a
    buffered read may take two lines at once, and select() would not say
    the second one is there)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.buf = b""

    def next(self, timeout: float) -> Optional[dict[str, Any]]:
        """The next order, if one comes within ``timeout`` s."""
        if b"\n" not in self.buf:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise EOFError("the bench closed the publisher's stdin before go")
            self.buf += chunk
            if b"\n" not in self.buf:
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def drive(publish: Sender, shared: Shared, size: int) -> dict[str, Any]:
    """Probe until told to start, then publish as told; what it did."""
    tail = filler(size)
    errors: dict[str, int] = {}

    def send(seq: int) -> bool:
        try:
            publish(message(now_ns(), seq, tail))
        except Exception as exc:  # counted by kind and reported: the run goes on, as a server's user's would
            kind = f"publish:{type(exc).__name__}"
            errors[kind] = errors.get(kind, 0) + 1
            return False
        return True

    slots = shared.slots
    orders = Orders()
    probe = PROBE_FIRST - 1
    probing = True
    reprobe = 0
    while True:
        # Another probe when the last is still on its way REPROBE_S after it
        # (a subscriber may have joined the room after it), until told to hold.
        if probing and now_ns() >= reprobe and (probe < PROBE_FIRST or not shared.quiet()):
            probe += 1
            send(probe)
            slots[0] = probe
            reprobe = now_ns() + int(REPROBE_S * 1e9)
        order = orders.next(0.02)
        if order is None:
            continue
        if order["cmd"] == "go":
            break
        probing = False  # "hold": every subscriber is in the room
    t_end, rate, window = order["t_end"], order.get("rate"), order.get("window")
    seq = published = 0
    held = 0  # ns the window held the publisher back: the subscribers were behind
    cpu0 = time.process_time()
    t0 = now_ns()
    latest = 0  # how far behind its schedule a steady publisher fell, at most (ns)
    while True:
        now = now_ns()
        if now >= t_end:
            break
        if window is not None and seq - max(-1, shared.slowest()) > window:
            time.sleep(0.0002)
            held += now_ns() - now
            continue
        if rate:
            due = t0 + int(seq * 1e9 / rate)
            if due > now:
                time.sleep(min(due - now, t_end - now) / 1e9)
                continue
            latest = max(latest, now - due)
        if send(seq):
            published += 1
        slots[0] = seq
        seq += 1
    return {"published": published, "elapsed_s": (now_ns() - t0) / 1e9, "cpu_s": time.process_time() - cpu0,
            "held_s": held / 1e9, "behind_ms": latest / 1e6, "errors": errors}


def run(ways: dict[str, Callable[[str], Sender]]) -> None:
    """The command line of every publisher script: ``--target`` (its
    server's URL or Redis), ``--via`` (one of the script's ``ways`` to
    publish, the first by default), ``--shared`` and ``--workers`` (the file
    of ``Shared``), ``--size``; the result as the last line of stdout."""
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--via", choices=list(ways), default=next(iter(ways)))
    p.add_argument("--shared", required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    shared = Shared(args.shared, args.workers)
    try:
        result = drive(ways[args.via](args.target), shared, args.size)
    finally:
        shared.close()
    print(json.dumps(result), flush=True)
