"""wsrelay.Group over real sockets: membership, and fan-outs larger than one
flush slice (the gateway writes big fan-outs in slices, polling for I/O in
between) arriving whole and in order while other clients keep being served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets

from tests.apps import relay_app
from tests.harness import expect, running
from tests.procs import relay_to
from wsrelay import process


def room_app(room_pid) -> Any:
    def handler(req: Any, res: Any) -> None:
        relay_to(res, room_pid)

    return relay_app(handler)


async def test_membership_follows_add_discard_and_the_end_of_a_connection():
    room_pid = process.spawn("relay:burst_room", None, process.self())
    async with running(room_app(room_pid)) as gw:
        async with websockets.connect(gw.url("/ws/chat")) as a, websockets.connect(gw.url("/ws/chat")) as b:
            pid_a, _ = await expect("joined")
            pid_b, size = await expect("joined")
            assert size == 2
            process.send(room_pid, "membership", [pid_a, pid_b, room_pid])
            assert await expect("membership") == (2, sorted([str(pid_a), str(pid_b)]), [True, True, False])

            # A process that is not a connection cannot be a member.
            process.send(room_pid, "add", room_pid)
            assert await expect("added") == f"{room_pid} is not a WebSocket connection; groups hold connections"

            process.send(room_pid, "discard", [pid_b, pid_b])
            assert await expect("discarded") == [True, False]
            process.send(room_pid, "burst", (1, 1))
            assert await expect("burst_done") == 1
            assert await a.recv() == "m0"

            await b.close()
            assert await expect("left") == (pid_b, 1)
            await a.close()
            # The connection ended: it left the group by itself.
            left_pid, size = await expect("left")
            assert left_pid == pid_a and size == 0

        # A connection that has ended cannot join.
        process.send(room_pid, "add", pid_a)
        assert await expect("added") is False
    process.send(room_pid, "stop")


@pytest.mark.timeout(120)
async def test_a_fan_out_larger_than_a_flush_slice_arrives_whole_and_in_order():
    members = 700  # several flush slices
    count, rounds = 10, 6
    room_pid = process.spawn("relay:burst_room", None, process.self())
    async with running(room_app(room_pid)) as gw:
        clients = []
        try:
            for _ in range(members):
                clients.append(await websockets.connect(gw.url("/ws/chat"), max_queue=None))
                await expect("joined")
            async with websockets.connect(gw.url("/ws/chat")) as outsider:
                await expect("joined")
                process.send(room_pid, "membership", [])
                size, _, _ = await expect("membership")
                assert size == members + 1

                process.send(room_pid, "burst", (count, rounds))
                # While the fan-out is being written, a client's own message is
                # served between the slices: its echo comes among the burst.
                await outsider.send("ping")
                replies = [await outsider.recv() for _ in range(count * rounds + 1)]
                assert "echo:ping" in replies
                assert [r for r in replies if r != "echo:ping"] == [f"m{i}" for i in range(count * rounds)]
                assert await expect("burst_done") == (members + 1) * count * rounds

            expected = [f"m{i}" for i in range(count * rounds)]

            async def receive_all(ws) -> list[str]:
                return [await ws.recv() for _ in range(count * rounds)]

            got = await asyncio.gather(*(receive_all(ws) for ws in clients))
            assert all(g == expected for g in got)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
        for _ in range(members + 1):
            await expect("left")
    process.send(room_pid, "stop")
