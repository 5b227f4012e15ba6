"""Process functions and handlers of the operations tests (tests/test_ops_*.py).

Imported by the tests in-process and, through the YAML of
tests/ops_support.APP_YAML, by ``wsrelay serve`` subprocesses. A target that
runs in a subprocess reports what it saw by appending lines to the file named
by the environment variable OPS_REPORT_FILE (when set).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import wsrelay
from wsrelay import process

REPORT_ENV = "OPS_REPORT_FILE"


def _report(*words: object) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(" ".join(str(w) for w in words) + "\n")


@wsrelay.register("ops:echo")
async def echo(observer=None, block_seconds: float = 0.0) -> None:
    """A relay target: sends every client message back unchanged (same type).
    Tells ``observer`` of ws.join/ws.leave, writes ws.leave to OPS_REPORT_FILE
    and ends on ws.leave. With ``block_seconds``, blocks the whole event loop
    (time.sleep) that long before each echo."""
    async for msg in process.inbox():
        topic = msg.topic
        if topic == "ws.message":
            payload = msg.payload
            if block_seconds:
                time.sleep(block_seconds)
            process.send(payload["client_pid"], "ws.send", {"type": payload["type"], "data": payload["data"]})
        elif topic in ("ws.join", "ws.leave"):
            if observer is not None:
                process.send(observer, topic, msg.payload)
            if topic == "ws.leave":
                p = msg.payload
                _report("ws.leave", p["reason"], p["code"], p["client_pid"])
                return


@wsrelay.register("ops:check")
async def check(stall: float = 2.0) -> None:
    """A relay target that stalls ``stall`` seconds before reading anything,
    then checks the binary messages carry consecutive sequence numbers (first
    8 bytes, big-endian). Says 'awake' to the client when it starts reading and
    answers the text message 'done' with a JSON summary."""
    await asyncio.sleep(stall)  # the stall under test: the mailbox fills up meanwhile
    client = None
    count = 0
    size = 0
    digest = hashlib.sha256()
    first_error = None
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            client = msg.payload["client_pid"]
            process.send(client, "ws.send", {"type": "text", "data": "awake"})
        elif msg.topic == "ws.message":
            payload = msg.payload
            if payload["type"] == "text":
                summary = {"count": count, "bytes": size, "sha256": digest.hexdigest(), "first_error": first_error}
                process.send(client, "ws.send", {"type": "text", "data": json.dumps(summary)})
                continue
            data = payload["data"]
            seq = int.from_bytes(data[:8], "big")
            if seq != count and first_error is None:
                first_error = [count, seq]
            count += 1
            size += len(data)
            digest.update(data)
        elif msg.topic == "ws.leave":
            return


@wsrelay.register("ops:recorder")
async def recorder(observer) -> None:
    """A relay target that forwards to ``observer`` every message it gets,
    as (topic, payload); ends on ws.leave."""
    async for msg in process.inbox():
        process.send(observer, "seen", (msg.topic, msg.payload))
        if msg.topic == "ws.leave":
            return


@wsrelay.register("ops:flooder")
async def flooder(observer, chunk: int = 65536, limit: int = 256 << 20) -> None:
    """A relay target that sends its client ``chunk``-byte binary frames
    until a ws.send is refused because the connection is closing (or
    ``limit`` bytes went out). Tells ``observer`` 'stopped' with the bytes
    sent, then forwards ws.leave."""
    inbox = process.inbox()
    join = await inbox.receive()
    assert join.topic == "ws.join", join.topic
    client = join.payload["client_pid"]
    data = bytes(chunk)
    sent = 0
    refused = False
    process.send(observer, "flooding", client)
    while sent < limit:
        if not process.send(client, "ws.send", {"type": "binary", "data": data}):
            refused = True
            break
        sent += chunk
        await asyncio.sleep(0)  # let the loop write (and notice the client is not reading)
    process.send(observer, "stopped", (sent, refused))
    async for msg in inbox:
        if msg.topic == "ws.leave":
            process.send(observer, "ws.leave", msg.payload)
            return


@wsrelay.register("ops:sizer")
async def sizer() -> None:
    """A relay target that answers each client message with its type and
    length ("text 5"), so a test can send big messages without getting them
    back; ends on ws.leave."""
    async for msg in process.inbox():
        if msg.topic == "ws.message":
            payload = msg.payload
            process.send(payload["client_pid"], "ws.send",
                         {"type": "text", "data": f"{payload['type']} {len(payload['data'])}"})
        elif msg.topic == "ws.leave":
            return


@wsrelay.register("ops:stuck")
async def stuck() -> None:
    """A relay target that never reads its inbox (a dead-locked process)."""
    await asyncio.get_running_loop().create_future()


@wsrelay.register("ops:raiser")
async def raiser(observer) -> None:
    """A relay target that raises on the first client message."""
    async for msg in process.inbox():
        if msg.topic == "ws.join":
            process.send(observer, "ws.join", msg.payload)
        elif msg.topic == "ws.message":
            raise RuntimeError("ops:raiser fails on purpose")


@wsrelay.register("ops:mailbox_flooder")
async def mailbox_flooder(observer, victim) -> None:
    """Send to ``victim`` (a process that never reads) until MailboxFull,
    tell ``observer`` how many went in, and let MailboxFull end this process."""
    sent = 0
    try:
        while True:
            process.send(victim, "junk", sent)
            sent += 1
    except wsrelay.MailboxFull:
        process.send(observer, "full", sent)
        raise


# -- handlers of the YAML app (tests/ops_support.APP_YAML) -------------------------------


def echo_endpoint(req, res) -> None:
    pid = process.spawn("ops:echo")
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))


def sizer_endpoint(req, res) -> None:
    pid = process.spawn("ops:sizer")
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))


def stuck_endpoint(req, res) -> None:
    """Every client of /ws/stuck relays to one target that never reads."""
    pid = process.whereis("ops:stuck")
    if pid is None:
        pid = process.spawn("ops:stuck")
        process.register("ops:stuck", pid)
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))


def check_endpoint(req, res) -> None:
    pid = process.spawn("ops:check", None, float(req.query("stall", "2")))
    res.header("X-WS-Relay", json.dumps({"target_pid": str(pid)}))
