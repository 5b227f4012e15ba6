"""Settings (docs/configuration.md): every WSRELAY_* variable is read and validated in one place at
start; a bad value makes ``wsrelay serve`` exit non-zero naming the variable,
before it binds anything. Real subprocesses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import subprocess

import pytest
import websockets

from tests.apps import write_app
from tests.harness import REPO, SERVING, WSRELAY, ServerProcess, run_to_exit, serve_command
from tests.wsclient import HandshakeRefused, RawWebSocket, http_request
from wsrelay.settings import VARIABLES, load_settings

# (variable, bad value): at least one per variable, and the values that once
# passed validation only to fail later (a C integer overflow at start, an
# allocation failure on every connection).
BAD = [
    ("WSRELAY_ADDR", "nowhere"),
    ("WSRELAY_ADDR", "127.0.0.1:70000"),
    ("WSRELAY_MAX_MESSAGE_SIZE", "0"),
    ("WSRELAY_MAX_MESSAGE_SIZE", "1.5MiB"),
    ("WSRELAY_MAX_MESSAGE_SIZE", "99999999999999999999999"),
    ("WSRELAY_MAILBOX_CAPACITY", "0"),
    ("WSRELAY_MAILBOX_CAPACITY", "lots"),
    ("WSRELAY_MAILBOX_CAPACITY", "99999999999999999999999"),
    ("WSRELAY_WRITE_BUFFER_LIMIT", "-1"),
    ("WSRELAY_WRITE_BUFFER_LIMIT", "99999999999999999999"),
    ("WSRELAY_PING_INTERVAL", "soon"),
    ("WSRELAY_PING_INTERVAL", "-5s"),
    ("WSRELAY_PING_TIMEOUT", "5 minutes"),
    ("WSRELAY_PING_TIMEOUT", "40s"),  # longer than the 30 s default interval
    ("WSRELAY_HANDSHAKE_TIMEOUT", "0"),
    ("WSRELAY_HANDSHAKE_TIMEOUT", "ten"),
    ("WSRELAY_HANDLER_TIMEOUT", "0"),
    ("WSRELAY_HANDLER_TIMEOUT", "-1s"),
    ("WSRELAY_MAX_CONNECTIONS", "-1"),
    ("WSRELAY_MAX_CONNECTIONS", "1e3"),
    ("WSRELAY_DRAIN_TIMEOUT", "forever"),
    ("WSRELAY_DRAIN_TIMEOUT", "1d"),
    ("WSRELAY_READ_BUFFER_SIZE", "0"),
    ("WSRELAY_READ_BUFFER_SIZE", "1024"),
    ("WSRELAY_READ_BUFFER_SIZE", "999999999999"),
    ("WSRELAY_LOG_LEVEL", "LOUD"),
    ("WSRELAY_CLOSE_TIMEOUT", "0"),
    ("WSRELAY_SOCKET_RECEIVE_BUFFER", "1KiB"),
    ("WSRELAY_SOCKET_RECEIVE_BUFFER", "1GiB"),
    ("WSRELAY_STALL_TIMEOUT", "never"),
    ("WSRELAY_STALL_TIMEOUT", "-1s"),
    ("WSRELAY_CLOSE_TIMEOUT", "5 s s"),
    ("WSRELAY_NODE", "gw|1"),
    ("WSRELAY_GC_THRESHOLD", "-3"),
    ("WSRELAY_GC_THRESHOLD", "often"),
    ("WSRELAY_COMPRESSION", "yes"),
    ("WSRELAY_COMPRESSION", "deflate"),
    ("WSRELAY_COMPRESSION_MIN_SIZE", "-1"),
    ("WSRELAY_COMPRESSION_MIN_SIZE", "small"),
    ("WSRELAY_COMPRESSION_MIN_SIZE", "2GiB"),
    ("WSRELAY_MAX_CHANNELS_PER_CONNECTION", "0"),
    ("WSRELAY_MAX_CHANNELS_PER_CONNECTION", "many"),
    ("WSRELAY_HISTORY_MAX_BYTES", "0"),
    ("WSRELAY_HISTORY_MAX_BYTES", "lots"),
    ("WSRELAY_RECOVERY_MAX", "-1"),
    ("WSRELAY_RECOVERY_MAX", "all"),
    ("WSRELAY_API_KEY", "two words"),
    ("WSRELAY_API_ADDR", "nowhere"),
    ("WSRELAY_API_MAX_BODY", "0"),
    ("WSRELAY_API_MAX_BODY", "1.5MiB"),
    ("WSRELAY_WORKERS", "0"),
    ("WSRELAY_WORKERS", "many"),
    ("WSRELAY_CLUSTER_URL", "http://127.0.0.1:4222"),
    ("WSRELAY_CLUSTER_URL", "nats://127.0.0.1:99999"),
    ("WSRELAY_CLUSTER_TOKEN", "two words"),
    ("WSRELAY_CLUSTER_CREDS", "/nonexistent/user.creds"),
    ("WSRELAY_CLUSTER_DOWN_AFTER", "0"),
    ("WSRELAY_CLUSTER_DOWN_AFTER", "later"),
    ("WSRELAY_NATS_SERVER", "nats\tserver"),
    ("WSRELAY_CLUSTER_DATA", "/etc/hostname"),
]

EXTRA = [
    # A timeout without an interval to time out of: refused, naming the timeout.
    ({"WSRELAY_PING_INTERVAL": "10s", "WSRELAY_PING_TIMEOUT": "0"}, "WSRELAY_PING_TIMEOUT"),
    ({"WSRELAY_PING_INTERVAL": "1s", "WSRELAY_PING_TIMEOUT": "2s"}, "WSRELAY_PING_TIMEOUT"),
    # An API listener without a key would serve nothing.
    ({"WSRELAY_API_ADDR": "127.0.0.1:0"}, "WSRELAY_API_ADDR"),
    # Each worker would bind a port of its own.
    ({"WSRELAY_API_KEY": "k", "WSRELAY_API_ADDR": "127.0.0.1:0", "WSRELAY_WORKERS": "2"}, "WSRELAY_API_ADDR"),
]


@pytest.fixture(scope="module")
def held_port():
    """A port something else is listening on: a server that tried to bind it
    would fail with 'cannot listen' (exit 1) instead of exiting 2 first."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, held_port):
    """Run `wsrelay serve` once per bad case, a few at a time; the results
    by case index."""
    folder = tmp_path_factory.mktemp("settings")
    app = write_app(folder, f"127.0.0.1:{held_port}")
    cases = [{var: value} for var, value in BAD] + [env for env, _ in EXTRA]

    def run(env):
        return run_to_exit(serve_command(app), env=env)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(run, cases))


def _assert_refused(result: subprocess.CompletedProcess, variable: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}:\n{out}"
    assert variable in result.stderr, out
    assert "wsrelay: bad environment variable" in result.stderr, out
    assert "Traceback" not in out, out
    assert "cannot listen" not in out and not re.search(SERVING, out), out


@pytest.mark.parametrize("index", range(len(BAD)), ids=[f"{v}={x}" for v, x in BAD])
def test_bad_value_exits_2_naming_the_variable_before_binding(refusals, index):
    _assert_refused(refusals[index], BAD[index][0])


@pytest.mark.parametrize("index", range(len(EXTRA)), ids=[EXTRA[i][1] + f"#{i}" for i in range(len(EXTRA))])
def test_inconsistent_settings_are_refused(refusals, index):
    _assert_refused(refusals[len(BAD) + index], EXTRA[index][1])


def test_every_variable_has_a_bad_value_case():
    assert {var for var, _ in BAD} == set(VARIABLES)
    assert set(VARIABLES) >= {
        "WSRELAY_ADDR", "WSRELAY_MAX_MESSAGE_SIZE", "WSRELAY_MAILBOX_CAPACITY", "WSRELAY_WRITE_BUFFER_LIMIT",
        "WSRELAY_PING_INTERVAL", "WSRELAY_PING_TIMEOUT", "WSRELAY_HANDSHAKE_TIMEOUT", "WSRELAY_MAX_CONNECTIONS",
        "WSRELAY_DRAIN_TIMEOUT", "WSRELAY_READ_BUFFER_SIZE", "WSRELAY_LOG_LEVEL",
    }


def test_configuration_doc_covers_every_variable():
    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = [var for var in VARIABLES if f"`{var}`" not in doc]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_configuration_doc_lists_every_metric():
    from wsrelay._core.stats import COUNTERS

    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = sorted({metric for _, metric, _, _ in COUNTERS if f"`{metric}_total" not in doc})
    assert not missing, f"docs/configuration.md does not list {missing}"


def test_the_console_script_refuses_too(tmp_path, held_port):
    result = run_to_exit([WSRELAY, "serve", write_app(tmp_path, f"127.0.0.1:{held_port}")],
                         env={"WSRELAY_MAILBOX_CAPACITY": "none"})
    _assert_refused(result, "WSRELAY_MAILBOX_CAPACITY")


def test_units_and_defaults_parse():
    s = load_settings({
        "WSRELAY_MAX_MESSAGE_SIZE": "64KiB", "WSRELAY_WRITE_BUFFER_LIMIT": "2M", "WSRELAY_PING_INTERVAL": "500ms",
        "WSRELAY_PING_TIMEOUT": "0.25", "WSRELAY_DRAIN_TIMEOUT": "1m", "WSRELAY_LOG_LEVEL": "warning",
        "WSRELAY_MAX_CONNECTIONS": "0", "WSRELAY_HANDSHAKE_TIMEOUT": " 3s ", "WSRELAY_HANDLER_TIMEOUT": "250ms",
    })
    assert s.handler_timeout == 0.25
    assert (s.max_message_size, s.write_buffer_limit) == (65536, 2 << 20)
    assert (s.ping_interval, s.ping_timeout, s.drain_timeout, s.handshake_timeout) == (0.5, 0.25, 60.0, 3.0)
    assert (s.log_level, s.max_connections) == ("WARNING", 0)
    default = load_settings({})
    assert default == load_settings({var: "" for var in VARIABLES})  # empty means unset


async def test_valid_values_reach_the_running_server(tmp_path):
    """Every variable set to a valid, non-default value: the server starts,
    on WSRELAY_ADDR (not the file's address), and the limits it was given
    are the ones it enforces."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {
        "WSRELAY_ADDR": f"127.0.0.1:{port}", "WSRELAY_MAX_MESSAGE_SIZE": "1KiB", "WSRELAY_MAILBOX_CAPACITY": "16",
        "WSRELAY_WRITE_BUFFER_LIMIT": "512KiB", "WSRELAY_PING_INTERVAL": "20s", "WSRELAY_PING_TIMEOUT": "10s",
        "WSRELAY_HANDSHAKE_TIMEOUT": "5s", "WSRELAY_MAX_CONNECTIONS": "1", "WSRELAY_DRAIN_TIMEOUT": "5s",
        "WSRELAY_READ_BUFFER_SIZE": "16KiB", "WSRELAY_LOG_LEVEL": "WARNING", "WSRELAY_CLOSE_TIMEOUT": "2s",
        "WSRELAY_NODE": "opsnode", "WSRELAY_COMPRESSION": "on", "WSRELAY_COMPRESSION_MIN_SIZE": "64",
    }
    async with ServerProcess(serve_command(write_app(tmp_path, "127.0.0.1:1")), env=env) as served:
        assert served.port == port
        res = await http_request(served, "/health")
        assert res.status == 200, res.body
        async with websockets.connect(served.url("/ws/echo"), max_size=None) as ws:
            # WSRELAY_COMPRESSION=on: the client's permessage-deflate offer is accepted.
            assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate;")
            # WSRELAY_MAX_CONNECTIONS=1: a second connection is refused with 503.
            with pytest.raises(HandshakeRefused) as refused:
                await RawWebSocket.connect(served, "/ws/echo")
            assert refused.value.response.status == 503
            await ws.send("x" * 1024)
            assert await ws.recv() == "x" * 1024
            await ws.send("x" * 1025)  # WSRELAY_MAX_MESSAGE_SIZE=1KiB
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009
        assert await served.stopped(timeout=15) == 0, served.output()


def test_a_misspelt_variable_is_named_with_the_closest_known_one(tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text('version: "1.0"\nnamespace: t\nentries:\n  - {name: gw, kind: http.service, addr: ":0"}\n')
    with ServerProcess([WSRELAY, "check", app], env={"WSRELAY_MAX_CONECTIONS": "5"}, ready=None) as checked:
        assert checked.wait() == 0
    warning = "unknown environment variable WSRELAY_MAX_CONECTIONS is ignored; did you mean WSRELAY_MAX_CONNECTIONS?"
    assert any(warning in line for line in checked.stderr), checked.output()
