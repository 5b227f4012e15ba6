"""``WSRELAY_WORKERS``: ``wsrelay serve`` as a supervisor of worker processes
sharing one port, with a private nats-server. Real processes, real sockets."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Optional

import nats
import psutil
import pytest
import websockets

from tests.apps import write_app
from tests.cluster_support import Recorder, last
from tests.harness import SERVING, ServerProcess, clean_env, health, run_to_exit, serve_command
from wsrelay.cluster import wire
from wsrelay.cluster.broker import Broker
from wsrelay.cluster.transport import Transport


def supervised_server(app: Path, **env: str) -> ServerProcess:
    """``wsrelay serve`` with WSRELAY_WORKERS (or any cluster setting): the
    one subprocess harness of the suite (tests/harness.py)."""
    return ServerProcess(serve_command(app), env={"WSRELAY_ADDR": "127.0.0.1:0",
                                                   "WSRELAY_CLUSTER_DOWN_AFTER": "2s", **env})


def children(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.pid).children()


def worker(server: ServerProcess, index: int) -> psutil.Process:
    for child in children(server):
        if child.cmdline()[-2:] == ["--worker", str(index)]:
            return child
    raise AssertionError(f"no worker {index} among {[c.cmdline() for c in children(server)]}")


def kill_worker(server: ServerProcess, index: int) -> psutil.Process:
    """SIGKILL worker ``index`` of ``server``; the process it was."""
    victim = worker(server, index)
    victim.send_signal(signal.SIGKILL)
    return victim


def restart_announced(server: ServerProcess, index: int, victim: psutil.Process, start: int = 0) -> re.Match[str]:
    """The supervisor's line, from character ``start`` of its stderr on, saying
    worker ``index`` (``victim``) died of SIGKILL and when it restarts it
    (group 1: the back-off, in seconds)."""
    return server.wait_text(rf"worker {index} \(pid {victim.pid}\) exited with signal SIGKILL after [\d.]+ s: "
                            r"restarting in ([\d.]+) s", start=start)


def gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Of ``pids``, those still running (not exited, not a zombie) after ``timeout``."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue

    def running(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        _, still = psutil.wait_procs(alive, timeout=0.2)
        alive = [p for p in still if running(p)]
    return [p.pid for p in alive]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return write_app(tmp_path)


@pytest.fixture
def supervised(app: Path) -> Any:
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = supervised_server(app, **env)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.mark.timeout(90)
async def test_workers_share_one_port_and_name_their_nodes(supervised: Any) -> None:
    s = supervised(WSRELAY_WORKERS="2", WSRELAY_NODE="web")
    assert len(re.findall(SERVING, s.text("stdout"))) == 1
    # The kernel spreads connections over both workers on the one port; each
    # names itself and, once their session is open (a few ms after both
    # serve), sees the other up. Polled: /health is the only view of it.
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = await health(s)
        seen[body["node"]] = body
        if set(seen) == {"web-0", "web-1"} and all(b["peers"] == {({"web-0", "web-1"} - {n}).pop(): "up"}
                                                    for n, b in seen.items()):
            break
    assert set(seen) == {"web-0", "web-1"}
    assert seen["web-0"]["peers"] == {"web-1": "up"} and seen["web-1"]["peers"] == {"web-0": "up"}
    assert all(isinstance(b["incarnation"], int) and b["incarnation"] > 0 for b in seen.values())
    host, port = s.address()
    for index in (0, 1):
        listening = {c.laddr.port for c in worker(s, index).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert port in listening
    # Each worker answers a metrics request on the bus with its own exposition.
    env = worker(s, 0).environ()
    nc = await nats.connect(env["WSRELAY_CLUSTER_URL"], token=env["WSRELAY_CLUSTER_TOKEN"])
    try:
        for node in ("web-0", "web-1"):
            reply = await nc.request(wire.rpc_subject(node), wire.rpc_request(wire.METRICS), timeout=5)
            name, _, body = wire.parse_rpc_reply(reply.data)
            assert name == node and b"# TYPE wsrelay_connections_total counter" in body
    finally:
        await nc.close()
    assert s.stop() == 0


@pytest.mark.timeout(120)
async def test_a_killed_worker_is_restarted_with_back_off(supervised: Any) -> None:
    s = supervised(WSRELAY_WORKERS="2")
    delays = []
    mark = 0
    for _ in range(3):
        victim = kill_worker(s, 1)
        exited = restart_announced(s, 1, victim, start=mark)
        delays.append(float(exited.group(1)))
        ready = s.wait_text(r"worker 1 \(pid (\d+)\) ready", start=exited.end())
        mark = ready.end()
        assert int(ready.group(1)) != victim.pid
        assert gone([victim.pid]) == []
    assert delays == [0.1, 0.2, 0.4]
    # The other worker never stopped, and the service answers throughout.
    await health(s)
    # Up for longer than STABLE_AFTER (10 s): the back-off starts again.
    time.sleep(10.5)
    exited = restart_announced(s, 1, kill_worker(s, 1), start=mark)
    assert float(exited.group(1)) == 0.1
    assert s.stop() == 0


@pytest.mark.timeout(90)
async def test_a_dead_worker_is_announced_at_once(supervised: Any) -> None:
    # Silence alone would take 30 s to notice.
    s = supervised(WSRELAY_WORKERS="2", WSRELAY_NODE="ann", WSRELAY_CLUSTER_DOWN_AFTER="30s")
    env = worker(s, 0).environ()
    hooks = Recorder()
    observer = Transport("observer", env["WSRELAY_CLUSTER_URL"], token=env["WSRELAY_CLUSTER_TOKEN"], hooks=hooks,
                         down_after=30.0)
    await observer.start()
    try:
        first = await hooks.wait_for(last("up", "ann-1"))
        kill_worker(s, 1)
        killed = time.monotonic()
        assert await hooks.wait_for(last("down", "ann-1"), timeout=10) == ("down", "ann-1", first[2], "noconnection")
        # Announced by the supervisor when it reaped the worker: before its
        # successor (0.1 s of back-off, then a Python start, about 0.3 s
        # here) could show up as a new incarnation.
        assert time.monotonic() - killed < 0.3
        again = await hooks.wait_for(lambda ev: [e for e in ev if e[:2] == ("up", "ann-1") and e[2] != first[2]])
        assert again[0][2] > first[2]
        s.wait_text(r"worker 1 \(pid \d+\) exited with signal SIGKILL")
        err = s.text()
        assert err.index("exited with signal SIGKILL") < err.index("worker 1 (ann-1) started", err.index("exited"))
    finally:
        await observer.stop()
    assert s.stop() == 0


@pytest.mark.timeout(90)
async def test_sigterm_drains_every_worker_and_leaves_no_process(supervised: Any) -> None:
    s = supervised(WSRELAY_WORKERS="2")
    host, port = s.address()
    clients = [await websockets.connect(f"ws://{host}:{port}/ws/echo") for _ in range(6)]
    for ws in clients:
        await ws.send("hi")
        assert await ws.recv() == "hi"
    pids = [c.pid for c in children(s)]
    assert len(pids) == 3  # two workers and the broker
    s.signal(signal.SIGTERM)
    for ws in clients:
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1001
    assert s.wait() == 0
    assert gone(pids, timeout=1.0) == []
    assert "stopped" in s.text()


@pytest.mark.timeout(90)
async def test_sigkill_of_the_supervisor_takes_its_children(supervised: Any) -> None:
    s = supervised(WSRELAY_WORKERS="2")
    pids = [c.pid for c in children(s)]
    assert len(pids) == 3
    s.kill()
    assert gone(pids, timeout=10.0) == []


@pytest.mark.timeout(90)
async def test_the_token_is_never_printed(supervised: Any) -> None:
    s = supervised(WSRELAY_WORKERS="2", WSRELAY_LOG_LEVEL="DEBUG")
    token = worker(s, 0).environ()["WSRELAY_CLUSTER_TOKEN"]
    assert len(token) >= 32
    for child in children(s):
        assert token not in " ".join(child.cmdline())
    assert s.stop() == 0
    assert token not in s.output()


@pytest.mark.parametrize("workers", [None, "2"])
def test_a_refused_token_exits_non_zero_naming_the_url(app: Path, broker: Broker, workers: Optional[str]) -> None:
    env = {"WSRELAY_ADDR": "127.0.0.1:0", "WSRELAY_CLUSTER_URL": broker.url,
           "WSRELAY_CLUSTER_TOKEN": "wrong-token-123"}
    if workers:
        env["WSRELAY_WORKERS"] = workers
    result = run_to_exit(serve_command(app), env=env)
    assert result.returncode == 1, result.stderr
    assert f"cannot join the cluster at {broker.url}" in result.stderr
    assert "wrong-token-123" not in result.stdout + result.stderr
    assert not re.search(SERVING, result.stdout), result.stdout


def test_a_single_node_joins_an_existing_cluster(app: Path, broker: Broker) -> None:
    with ServerProcess(serve_command(app), env={"WSRELAY_ADDR": "127.0.0.1:0", "WSRELAY_CLUSTER_URL": broker.url,
                                                "WSRELAY_CLUSTER_TOKEN": broker.token, "WSRELAY_NODE": "solo"}) as node:
        assert node.stop() == 0, node.output()
    err = node.text()
    assert "node solo (incarnation " in err and f"joined {broker.url}" in err
    assert broker.token not in node.output()


@pytest.mark.parametrize("binary", ["/nonexistent/nats-server", "no-such-nats-server"])
def test_a_missing_nats_server_exits_non_zero_with_the_install_hint(app: Path, binary: str) -> None:
    result = run_to_exit(serve_command(app), env={"WSRELAY_ADDR": "127.0.0.1:0", "WSRELAY_WORKERS": "2",
                                                  "WSRELAY_NATS_SERVER": binary})
    assert result.returncode == 1, result.stderr
    assert "nats-server not found" in result.stderr
    assert "apt-get install nats-server" in result.stderr
    assert "github.com/nats-io/nats-server/releases" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("variable, value", [("WSRELAY_WORKERS", "2"), ("WSRELAY_CLUSTER_URL", "nats://127.0.0.1:1")])
def test_without_the_cluster_extra_exits_2_saying_how_to_install_it(app: Path, tmp_path: Path, variable: str,
                                                                     value: str) -> None:
    # A nats package that cannot be imported, first on the path: as if nats-py
    # were not installed.
    blocked = tmp_path / "blocked" / "nats"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed', name='nats')\n")
    env = {"WSRELAY_ADDR": "127.0.0.1:0", variable: value,
           "PYTHONPATH": f"{blocked.parent}{os.pathsep}{clean_env()['PYTHONPATH']}"}
    result = run_to_exit(serve_command(app), env=env)
    assert result.returncode == 2, result.stderr
    assert f"{variable} needs the cluster extra (nats is missing): pip install 'wsrelay[cluster]'" in result.stderr
    assert "Traceback" not in result.stderr
