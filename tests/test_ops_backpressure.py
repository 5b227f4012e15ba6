"""Bounded mailboxes (docs/guide.md section 3, "When the target falls
behind"): a relay target that stalls while its client floods. The
connection stops reading (TCP backpressure) instead of buffering: afterwards
every message has arrived once and in order, and the gateway's own RSS (a
``wsrelay serve`` subprocess) stayed under a stated bound the whole time."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import websockets

from tests.apps import write_app
from tests.harness import RssSampler, ServerProcess, scrape, serve_command

STALL = 2.0                 # seconds the target does not read
MESSAGE = 16 << 10          # bytes per client message
FLOOD = 128 << 20           # bytes the client sends in all
CAPACITY = 64               # WSRELAY_MAILBOX_CAPACITY: 64 x 16 KiB = 1 MiB queued at most
RSS_BOUND = 32 << 20        # allowed growth of the gateway's RSS over its warmed-up baseline
SENT_DURING_STALL = 48 << 20  # the client cannot get more than this past the gateway while the target stalls


def _message(seq: int, filler: bytes) -> bytes:
    return seq.to_bytes(8, "big") + filler


async def _run_check(url: str, count: int, filler: bytes, on_awake=None):
    """Flood ``url`` (a relay:check target) with ``count`` numbered messages,
    then ask for the target's summary. Returns (summary, sent bytes when the
    target woke up, seconds from the first send to the wake-up, sha256)."""
    digest = hashlib.sha256()
    state = {"sent": 0, "awake_at": None, "awake_sent": None}
    t0 = time.monotonic()
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        summary_future = asyncio.get_running_loop().create_future()

        async def read():
            async for text in ws:
                if text == "awake":
                    state["awake_at"] = time.monotonic() - t0
                    state["awake_sent"] = state["sent"]
                else:
                    summary_future.set_result(json.loads(text))
                    return

        reader = asyncio.ensure_future(read())
        try:
            for seq in range(count):
                data = _message(seq, filler)
                digest.update(data)
                await ws.send(data)
                state["sent"] += len(data)
                if seq % 16 == 15:
                    # ws.send() need not yield while the gateway reads fast:
                    # let the reader see 'awake' when it arrives.
                    await asyncio.sleep(0)
            await ws.send("done")
            summary = await asyncio.wait_for(summary_future, 120)
        finally:
            reader.cancel()
    return summary, state["awake_sent"], state["awake_at"], digest.hexdigest()


async def test_stalled_target_pauses_the_client_and_nothing_is_lost(tmp_path):
    env = {"WSRELAY_MAILBOX_CAPACITY": str(CAPACITY), "WSRELAY_MAX_MESSAGE_SIZE": "1MiB",
           "WSRELAY_LOG_LEVEL": "WARNING"}
    filler = bytes(range(256)) * ((MESSAGE - 8) // 256) + bytes((MESSAGE - 8) % 256)
    async with ServerProcess(serve_command(write_app(tmp_path)), env=env) as served:
        base_url = served.url("/ws/check")
        # Warm up the same path (first imports, allocator pools) without a stall.
        summary, _, _, sha = await _run_check(base_url + "?stall=0", 256, filler)
        assert summary == {"count": 256, "bytes": 256 * MESSAGE, "sha256": sha, "first_error": None}
        before = await scrape(served)
        baseline = served.rss()

        count = FLOOD // MESSAGE
        with RssSampler(served.pid) as sampler:
            summary, awake_sent, awake_at, sha = await _run_check(f"{base_url}?stall={STALL}", count, filler)
        peak = max(sampler.peak, served.peak_rss())
        after = await scrape(served)

    # Every message arrived exactly once, in order, intact.
    assert summary == {"count": count, "bytes": count * MESSAGE, "sha256": sha, "first_error": None}
    # The stall happened, and the client was held back while it lasted.
    assert awake_at is not None and awake_at >= STALL * 0.75, awake_at
    assert awake_sent <= SENT_DURING_STALL, f"{awake_sent / 2**20:.1f} MiB went in while the target stalled"
    # The gateway paused the connection and its memory stayed bounded.
    pauses = after("wsrelay_relay_backpressure_pauses_total") - before("wsrelay_relay_backpressure_pauses_total")
    assert pauses >= 1
    growth = peak - baseline
    print(f"\nbackpressure: baseline RSS {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
          f"(+{growth / 2**20:.1f} MiB, {sampler.samples} samples), flood {FLOOD >> 20} MiB, "
          f"{awake_sent / 2**20:.1f} MiB sent during the {STALL} s stall, {int(pauses)} pause(s)")
    assert growth <= RSS_BOUND, f"gateway RSS grew by {growth / 2**20:.1f} MiB (bound {RSS_BOUND >> 20} MiB)"
