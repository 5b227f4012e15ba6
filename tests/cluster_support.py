"""The cluster tests' nodes, each a child process started through
tests/harness.ServerProcess, and what the tests observe of them.

- Gateway nodes: ``wsrelay serve`` of tests/apps.CLUSTER_APP_YAML joined to
  the test's broker (node_process(), cluster()), driven through a control
  connection (Control) that runs process API calls in the node.
- Transport nodes: a cluster transport alone in a child process (ChildNode):
  this file run as ``python -m tests.cluster_support NODE URL DOWN_AFTER
  MACHINE`` (the token in WSRELAY_CLUSTER_TOKEN) prints one JSON line per
  event (``ready``, ``up``, ``down``, ``send``, ``signal``) and obeys JSON
  commands on stdin (``send``, ``echo``, ``register``, ``stop``).
- Recorder: a recording stand-in for the core's hooks of a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from tests.harness import Metrics, ServerProcess, health, scrape, serve_command
from tests.wsclient import RawWebSocket
from wsrelay.cluster.broker import Broker

# WSRELAY_CLUSTER_DOWN_AFTER of the tests' nodes: short, so a lost node is noticed soon.
DOWN_AFTER = 1.0


# -- gateway nodes ------------------------------------------------------------------------


def node_process(app: Path, broker: Broker, name: str, **env: str) -> ServerProcess:
    """Node ``name``: ``wsrelay serve APP`` joined to ``broker``, not started yet."""
    return ServerProcess(serve_command(app), env={
        "WSRELAY_CLUSTER_URL": broker.url, "WSRELAY_CLUSTER_TOKEN": broker.token, "WSRELAY_NODE": name,
        "WSRELAY_CLUSTER_DOWN_AFTER": f"{DOWN_AFTER}s", "WSRELAY_ADDR": "127.0.0.1:0", **env})


async def local_metrics(node: ServerProcess) -> Metrics:
    """The node's own /metrics (without ``?local=1`` a node answers for
    every node of its machine, each series labelled with its node)."""
    return await scrape(node, "/metrics?local=1")


async def all_up(nodes: list[ServerProcess], timeout: float = 20.0) -> None:
    """Until every node sees every other up (polled: /health is the view)."""
    names = {(await health(n))["node"] for n in nodes}
    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            body = await health(node)
            if all(body["peers"].get(other) == "up" for other in names - {body["node"]}):
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def cluster(app: Path, broker: Broker, *names: str, **env: str) -> AsyncIterator[list[ServerProcess]]:
    nodes = [node_process(app, broker, name, **env) for name in names]
    try:
        for node in nodes:
            await asyncio.to_thread(node.start)
        await all_up(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@contextlib.asynccontextmanager
async def controlled_cluster(app: Path, broker: Broker, *names: str,
                             **env: str) -> AsyncIterator[list[tuple[ServerProcess, Control]]]:
    """cluster(), and a control connection to each node: (node, control) pairs."""
    async with cluster(app, broker, *names, **env) as nodes:
        yield [(node, await Control.open(node)) for node in nodes]


class Control:
    """A control connection: runs process API calls in its node."""

    def __init__(self, ws: RawWebSocket, pid: str) -> None:
        self.ws = ws
        self.pid = pid
        self.events: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, node: ServerProcess) -> Control:
        ws = await RawWebSocket.connect(node, "/ws/control")
        ready = json.loads(await ws.recv_text(timeout=10))
        assert ready["event"] == "ready", ready
        return cls(ws, ready["self"])

    async def _next(self, timeout: float) -> None:
        text = await self.ws.recv_text(timeout=timeout)
        try:
            message = json.loads(text)
        except ValueError:
            self.texts.append(text)  # a ws.send some process made to this client
            return
        self.events.append(message)

    async def call(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        ident = next(self._ids)
        self.ws.send_text(json.dumps({"id": ident, "op": op, **args}))
        deadline = time.monotonic() + timeout
        while True:
            for message in self.events:
                if message.get("reply") == ident:
                    self.events.remove(message)
                    if "error" in message:
                        raise CallError(message["error"])
                    return message["result"]
            await self._next(max(0.0, deadline - time.monotonic()))

    async def event(self, topic: str, timeout: float = 10.0,
                    where: Optional[Callable[[dict[str, Any]], bool]] = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.events:
                if message.get("event") == topic and (where is None or where(message)):
                    self.events.remove(message)
                    return message
            await self._next(max(0.0, deadline - time.monotonic()))

    async def text(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.texts:
            await self._next(max(0.0, deadline - time.monotonic()))
        return self.texts.pop(0)


class CallError(Exception):
    """A process API call that raised in the node (its message: the exception's type and text)."""


# -- transport nodes ----------------------------------------------------------------------


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


class ChildNode(ServerProcess):
    """A transport in a child process (this file run as a module), started
    at once and ready (connected to the broker) when constructed."""

    def __init__(self, node: str, url: str, token: str, down_after: float = DOWN_AFTER, machine: str = "") -> None:
        super().__init__([sys.executable, "-m", "tests.cluster_support", node, url, str(down_after), machine],
                         env={"WSRELAY_CLUSTER_TOKEN": token}, ready=None, stdin=True)
        self.node = node
        self._read = 0  # stdout lines read as events so far
        try:
            self.incarnation = self.wait_event("ready", timeout=20)["incarnation"]
        except BaseException:
            self.kill()
            raise

    def command(self, **cmd: Any) -> None:
        self.write_line(json.dumps(cmd))

    def read_event(self, timeout: float) -> dict[str, Any]:
        """The next event line (blocking: call from a thread in async tests)."""
        line = self.next_line(self._read, timeout)
        self._read += 1
        return json.loads(line)

    def wait_event(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.read_event(max(0.0, deadline - time.monotonic()))
            if event["event"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event

    async def await_event(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.wait_event, kind, timeout, **fields)


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
