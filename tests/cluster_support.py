"""Helpers of the cluster tests: a recording stand-in for the core's hooks, a
transport in a child process driven over stdin/stdout, and waiting on events.

Run as a script, it is that child: ``python tests/cluster_support.py NODE URL
DOWN_AFTER MACHINE`` (the token in WSRELAY_CLUSTER_TOKEN) prints one JSON line per
event (``ready``, ``up``, ``down``, ``send``, ``signal``) and obeys JSON
commands on stdin (``send``, ``echo``, ``register``, ``stop``).
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder:
    """The hooks of a transport, recording every call in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed: Optional[asyncio.Event] = None

    def _add(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()

    def on_send(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Any) -> None:
        self._add(("send", dest_id, dest_host, topic, payload, sender))

    def on_call(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Any, reply_to: Any) -> None:
        self._add(("call", dest_id, dest_host, topic, payload, sender, reply_to))

    def on_signal(self, kind: int, dest: Any, src: Any, reason: Any) -> None:
        self._add(("signal", kind, dest, src, reason))

    def on_frames(self, conn_ids: list[int], frame: bytes) -> None:
        self._add(("frames", conn_ids, frame))

    def on_node_up(self, node: str, incarnation: int) -> None:
        self._add(("up", node, incarnation))

    def on_node_down(self, node: str, incarnation: int, reason: str) -> None:
        self._add(("down", node, incarnation, reason))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]

    async def wait_for(self, predicate: Callable[[list[tuple[Any, ...]]], Any], timeout: float = 10.0) -> Any:
        """Until ``predicate(events)`` is truthy (re-checked at each event);
        its value."""
        if self._changed is None:
            self._changed = asyncio.Event()

        async def wait() -> Any:
            assert self._changed is not None
            while True:
                value = predicate(self.events)
                if value:
                    return value
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout} s; events: {self.events[-20:]}") from None


def last(kind: str, node: str) -> Callable[[list[tuple[Any, ...]]], Any]:
    """A predicate: the latest ``kind`` ("up" or "down") event about ``node``."""

    def find(events: list[tuple[Any, ...]]) -> Any:
        for event in reversed(events):
            if event[0] == kind and event[1] == node:
                return event
        return None

    return find


class ChildNode:
    """A transport in a child process (this file run as a script)."""

    def __init__(self, node: str, url: str, token: str, down_after: float = 1.0, machine: str = "") -> None:
        env = {**os.environ, "WSRELAY_CLUSTER_TOKEN": token, "PYTHONPATH": ROOT}
        self.node = node
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), node, url, str(down_after), machine],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        # Lines are cut from the raw pipe here: a buffered reader would hide
        # lines it has read ahead from the selector.
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout.fileno(), selectors.EVENT_READ)
        self.incarnation = self.wait_event("ready", timeout=20)["incarnation"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read_event(self, timeout: float) -> dict[str, Any]:
        """The next event line (blocking: call from a thread in async tests)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if not self._selector.select(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"{self.node}: no event within {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self.proc.wait()
                raise AssertionError(f"{self.node} exited ({self.proc.returncode}): {self.proc.stderr.read()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def wait_event(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.read_event(max(0.0, deadline - time.monotonic()))
            if event["event"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event

    async def await_event(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.wait_event(kind, timeout,
                                                                                               **fields))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# -- the child ------------------------------------------------------------------------


class _PrintingRecorder(Recorder):
    def __init__(self, transport: Any) -> None:
        super().__init__()
        self.transport = transport
        self.echo = False

    def _add(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "send" and self.echo:
            _, dest_id, dest_host, topic, payload, sender = event
            from wsrelay._core.pid import Pid

            self.transport.send(sender, topic, payload, Pid(dest_host, dest_id, self.transport.node))
            return
        out: dict[str, Any] = {"event": kind}
        if kind in ("up", "down"):
            out.update(node=event[1], incarnation=event[2])
        elif kind == "send":
            out.update(dest_id=event[1], topic=event[3], payload=_jsonable(event[4]), sender=str(event[5]))
        elif kind == "signal":
            out.update(kind=event[1], dest=str(event[2]), src=str(event[3]), reason=event[4])
        print(json.dumps(out), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


async def _child(node: str, url: str, down_after: float, machine: str) -> None:
    from wsrelay._core.pid import Pid
    from wsrelay.cluster.transport import Transport

    transport = Transport(node, url, token=os.environ["WSRELAY_CLUSTER_TOKEN"], down_after=down_after,
                          machine=machine or None, metrics=lambda: f"{node}_up 1\n".encode())
    hooks = _PrintingRecorder(transport)
    transport.attach(hooks)
    await transport.start()
    print(json.dumps({"event": "ready", "incarnation": transport.incarnation}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "send":
            dest, sender = Pid.parse(cmd["dest"]), Pid.parse(cmd["sender"])
            for i in range(cmd["count"]):
                transport.send(dest, cmd.get("topic", "t"), i, sender)
                if i % cmd.get("per_iteration", 100) == 0:
                    await asyncio.sleep(0)
            print(json.dumps({"event": "sent"}), flush=True)
        elif op == "echo":
            hooks.echo = True
        elif op == "register":
            ok = await transport.register_global(cmd["name"], Pid.parse(cmd["pid"]))
            print(json.dumps({"event": "registered", "ok": ok}), flush=True)
        elif op == "stop":
            break
    await transport.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_child(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]))
