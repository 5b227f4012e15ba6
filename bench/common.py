"""Small pieces every benchmark module shares: the progress log, splitting a
count over load generator processes, summing the workers' errors, the
progress line of a phase, and the command line's lists of numbers."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any, Callable, Optional


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by one at most."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def ms(ns: Optional[float]) -> Optional[float]:
    return None if ns is None else ns / 1e6


def per(amount: float, count: float, scale: float = 1.0) -> Optional[float]:
    """``amount * scale / count``; None when there is nothing to divide by."""
    return amount * scale / count if count else None


def sum_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    """The load generator workers' error counters, summed by kind."""
    total: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("errors") or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def status_rate(key: str, unit: str) -> Callable[[dict[str, Any], float], str]:
    """A progress line: connections, the rate of counter ``key`` since the
    last line, its total."""
    last: dict[str, int] = {}

    def status(totals: dict[str, Any], dt: float) -> str:
        value = totals["counters"].get(key, 0)
        rate = (value - last.get(key, 0)) / dt if dt > 0 else 0.0
        last[key] = value
        conns = totals["counters"].get("connected", 0)
        return f"conns={conns} {unit}={rate:,.0f}/s total={value:,}"

    return status


def parse_ints(text: str) -> list[int]:
    """``1,10,1k,64KiB``: a comma-separated list of counts or sizes."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1
        for suffix, m in (("kib", 1024), ("k", 1000), ("b", 1)):
            if part.endswith(suffix):
                part, mult = part[: -len(suffix)], m
                break
        out.append(int(float(part) * mult))
    if not out:
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers")
    return out


def stop_child(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM ``proc`` and wait ``grace`` seconds for it; then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def chosen(parser: argparse.ArgumentParser, asked: list[str], known: tuple[str, ...]) -> list[str]:
    """The scenarios of ``known`` that were ``asked`` for (all when none
    was), in ``known``'s order; an unknown one is the parser's error."""
    unknown = [s for s in asked if s not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [s for s in known if s in asked or not asked]
