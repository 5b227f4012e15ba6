"""What a developer meets in a first hour with wsrelay, next to an existing
web application: the messages of a bad setting or file, the request and
response helpers, the command's workers, calls from another thread. Real
sockets, real ``wsrelay`` subprocesses where it is about the wire or the
command."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import wsrelay
from tests.apps import relay_app, write_app
from tests.harness import REPO, WSRELAY, ServerProcess, clean_env, expect, running
from tests.wsclient import RawWebSocket, _read_response_head, build_request, http_request
from wsrelay import Pid, process
from wsrelay.config import build_app
from wsrelay.errors import ConfigError, RelayHeaderError, SettingsError
from wsrelay.http import Response
from wsrelay.settings import load_settings

PATH = "/ws/chat"


def wsrelay_command(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The console script, run to its end."""
    return subprocess.run([str(WSRELAY), *args], env=clean_env(**env), cwd=str(cwd),
                          capture_output=True, text=True, timeout=60)


# -- settings: each kind of value is refused in its own words ------------------------

COUNT_REFUSALS = [
    # (variable, value, words the message has)
    ("WSRELAY_WORKERS", "-1", ["positive integer", "'auto'"]),
    ("WSRELAY_WORKERS", "0", ["positive integer", "'auto'"]),
    ("WSRELAY_WORKERS", "many", ["positive integer", "'auto'"]),
    ("WSRELAY_MAILBOX_CAPACITY", "lots", ["number of messages"]),
    ("WSRELAY_MAX_CONNECTIONS", "-1", ["number of connections"]),
    ("WSRELAY_GC_THRESHOLD", "often", ["number of allocations"]),
]


@pytest.mark.parametrize("variable,value,words", COUNT_REFUSALS, ids=[f"{v}={x}" for v, x, _ in COUNT_REFUSALS])
def test_a_count_is_refused_as_a_count_not_as_a_size(variable, value, words):
    with pytest.raises(SettingsError) as refused:
        load_settings({variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable}={value!r}: "), message
    for word in words:
        assert word in message, message
    assert "size" not in message and "bytes" not in message, message


@pytest.mark.parametrize("variable", ["WSRELAY_MAX_MESSAGE_SIZE", "WSRELAY_WRITE_BUFFER_LIMIT",
                                      "WSRELAY_READ_BUFFER_SIZE", "WSRELAY_COMPRESSION_MIN_SIZE"])
def test_a_size_is_still_refused_as_a_size(variable):
    with pytest.raises(SettingsError, match="bytes"):
        load_settings({variable: "lots"})


@pytest.mark.parametrize("variable,value,words", [
    ("WSRELAY_PING_INTERVAL", "-5s", "must not be negative"),
    ("WSRELAY_HANDSHAKE_TIMEOUT", "-2", "must not be negative"),
    ("WSRELAY_WRITE_BUFFER_LIMIT", "-1", "must not be negative"),
    ("WSRELAY_SOCKET_RECEIVE_BUFFER", "-1", "must not be negative"),
    ("WSRELAY_NODE", "gw|1", "must be a node name, without '{', '}', '|', '@' or white space"),
])
def test_a_sign_or_a_character_is_named_as_the_problem(variable, value, words):
    with pytest.raises(SettingsError) as refused:
        load_settings({variable: value})
    assert str(refused.value) == f"{variable}={value!r}: {words}"


def test_a_refusal_quotes_the_duration_as_it_was_written():
    with pytest.raises(SettingsError) as refused:
        load_settings({"WSRELAY_PING_TIMEOUT": "40s"})
    assert str(refused.value).startswith("WSRELAY_PING_TIMEOUT='40s': must not exceed WSRELAY_PING_INTERVAL=30s")
    assert "40.0" not in str(refused.value)
    with pytest.raises(SettingsError) as refused:
        load_settings({"WSRELAY_PING_INTERVAL": "1m", "WSRELAY_PING_TIMEOUT": "90000ms"})
    assert "'90000ms'" in str(refused.value) and "=1m" in str(refused.value), refused.value


def test_the_command_says_what_workers_accepts(tmp_path):
    result = wsrelay_command("check", str(write_app(tmp_path)), env={"WSRELAY_WORKERS": "-1"})
    assert result.returncode == 2, result.stderr
    assert "WSRELAY_WORKERS='-1': must be a positive integer" in result.stderr, result.stderr
    assert "invalid size" not in result.stderr


# -- the configuration file: a typo gets a suggestion ---------------------------------

def test_an_unknown_field_of_the_file_gets_a_did_you_mean(tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text(textwrap.dedent("""\
        version: "1.0"
        entries:
          - name: gateway
            kind: http.service
            adress: "127.0.0.1:0"
    """))
    result = wsrelay_command("check", str(app), env={})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "entry 'app:gateway', field 'adress': unknown field for kind http.service; did you mean addr?" \
        in result.stderr, result.stderr


@pytest.mark.parametrize("document,words", [
    ({"version": "1.0", "entries": [], "namespaces": "x"},
     "unknown top-level field 'namespaces'; did you mean namespace?"),
    ({"version": "1.0", "entries": [{"name": "g", "kind": "http.servce"}]},
     "unknown kind 'http.servce'; did you mean http.service?"),
    ({"version": "1.0", "entries": [{"name": "g", "kind": "http.service", "colour": "red"}]},
     "unknown field for kind http.service; known: addr, kind, meta, name, namespace"),
])
def test_unknown_names_in_the_file_name_the_closest_known_one(document, words):
    with pytest.raises(ConfigError) as refused:
        build_app(document)
    assert words in str(refused.value)


def test_the_file_and_the_environment_share_one_suggestion_helper():
    from wsrelay import config, settings

    assert config.did_you_mean is settings.did_you_mean


# -- a service that cannot listen names its address -------------------------------------

def test_a_host_that_does_not_resolve_is_named(tmp_path):
    result = wsrelay_command("serve", str(write_app(tmp_path, "nowhere.invalid:8080")), env={})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot listen: nowhere.invalid:8080 (ops:gateway): " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        result = wsrelay_command("serve", str(write_app(tmp_path, f"127.0.0.1:{port}")), env={})
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot listen: 127.0.0.1:{port} (ops:gateway): [Errno 98]" in result.stderr, result.stderr


# -- a Pid where a str belongs --------------------------------------------------------------

async def test_a_pid_in_the_relay_header_says_what_to_write_instead(caplog):
    caplog.set_level(logging.ERROR, logger="wsrelay")
    observer = process.self()

    def handler(req: Any, res: Any) -> None:
        pid = process.spawn("relay:recorder", None, observer)
        res.header("X-WS-Relay", pid)

    async with running(relay_app(handler)) as gw:
        res = await http_request(gw, PATH, upgrade=True)
        assert res.status == 500
    logged = "\n".join(r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records)
    assert "header 'X-WS-Relay': a header value must be a str, got Pid" in logged, logged
    assert "res.relay(pid)" in logged and 'json.dumps({"target_pid": str(pid)})' in logged, logged


def test_a_pid_in_another_header_suggests_str():
    with pytest.raises(TypeError, match=r"header 'X-Room': a header value must be a str, got Pid: use str\(pid\)"):
        Response().header("X-Room", Pid("app:processes", 1))


# -- req.client and req.cookie ----------------------------------------------------------------

async def test_request_knows_its_peer_and_reads_one_cookie():
    seen: dict[str, Any] = {}

    def handler(req: Any, res: Any) -> None:
        seen.update(client=req.client, session=req.cookie("session"), theme=req.cookie("theme"),
                    after_a_bad_one=req.cookie("after"), missing=req.cookie("missing", "none"))
        res.write("ok")

    async with running(relay_app(handler)) as gw:
        host, port = gw.address()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request, _ = build_request(host, port, PATH, [
                ("Cookie", 'theme=dark; session="abc 1"; {bad}=x; after=yes'), ("Cookie", "theme=light")])
            writer.write(request)
            status, _, _ = await _read_response_head(reader, 30)
            local = writer.get_extra_info("sockname")[:2]
        finally:
            writer.transport.abort()
    assert status == 200
    assert seen == {"client": local, "session": "abc 1", "theme": "dark", "after_a_bad_one": "yes",
                    "missing": "none"}


# -- res.relay --------------------------------------------------------------------------------

async def test_res_relay_builds_the_header_from_python_values():
    observer = process.self()

    def handler(req: Any, res: Any) -> None:
        pid = process.spawn("relay:recorder", None, observer)
        res.relay(pid, metadata={"room": "lobby"}, message_topic="chat.message", heartbeat_interval=0.05)

    async with running(relay_app(handler)) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        topic, payload, _ = await expect("target")
        assert topic == "ws.join" and payload["metadata"] == {"room": "lobby"}
        ws.send_text("hi")
        topics = set()
        while "chat.message" not in topics or "ws.heartbeat" not in topics:
            topic, payload, _ = await expect("target")
            topics.add(topic)
            if topic == "chat.message":
                assert payload["data"] == "hi" and payload["metadata"] == {"room": "lobby"}
        assert "x-ws-relay" not in {name.lower() for name in ws.response.headers}
        await ws.close_handshake()
        while (await expect("target"))[0] != "ws.leave":
            pass


@pytest.mark.parametrize("kwargs,error,words", [
    ({"target": 12}, TypeError, "res.relay(): target must be a Pid or its text form, got int"),
    ({"target": "{a|0x00001}", "metadata": [1]}, TypeError, "metadata must be a dict, got list"),
    ({"target": "{a|0x00001}", "message_topic": 5}, TypeError, "message_topic must be a str, got int"),
    ({"target": "{a|0x00001}", "heartbeat_interval": True}, TypeError, "heartbeat_interval must be seconds"),
    ({"target": "{a|0x00001}", "metadata": {"x": object()}}, TypeError, "metadata must be JSON-serialisable"),
    ({"target": "nope"}, RelayHeaderError, "target_pid"),
    ({"target": "{a|0x00001}", "heartbeat_interval": "soon"}, RelayHeaderError, "heartbeat_interval"),
    ({"target": "{a|0x00001}", "message_topic": "@exit"}, RelayHeaderError, "message_topic"),
])
def test_res_relay_refuses_a_bad_argument_at_the_call(kwargs, error, words):
    res = Response()
    target = kwargs.pop("target")
    with pytest.raises(error) as refused:
        res.relay(target, **kwargs)
    assert words in str(refused.value)
    assert "X-WS-Relay" not in res.headers


def test_res_relay_takes_a_pid_or_its_text_and_seconds_or_a_duration():
    pid = Pid("app:processes", 7)
    assert json.loads(Response().relay(pid).headers["X-WS-Relay"]) == {"target_pid": str(pid)}
    raw = Response().relay(str(pid), heartbeat_interval="30s").headers["X-WS-Relay"]
    assert json.loads(raw) == {"target_pid": str(pid), "heartbeat_interval": "30s"}


# -- endpoints checked at load ------------------------------------------------------------------

ENDPOINT_APP = """\
version: "1.0"
namespace: app
entries:
  - name: gateway
    kind: http.service
    addr: "127.0.0.1:{port}"
  - name: ws_router
    kind: http.router
    meta: {{server: gateway}}
    prefix: /ws
    post_middleware: [websocket_relay]
  - name: chat_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /chat
    func: {func}
  - name: handler
    namespace: app.ws
    kind: process.function
    func: endpoints_mod:room
"""

ENDPOINTS_MODULE = """\
async def room(*args):
    pass


def one_argument(req):
    pass


def keyword_only(req, *, res):
    pass


def endpoint(req, res):
    pass


async def async_endpoint(req, res):
    pass
"""


@pytest.fixture
def endpoint_app(tmp_path):
    (tmp_path / "endpoints_mod.py").write_text(ENDPOINTS_MODULE)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)

    def write(func: str) -> Path:
        path = tmp_path / "app.yaml"
        path.write_text(ENDPOINT_APP.format(port=held.getsockname()[1], func=func))
        return path

    yield write
    held.close()


@pytest.mark.parametrize("func,words", [
    ("endpoints_mod:room", "is the process function 'app.ws:handler', not a handler"),
    ("endpoints_mod:one_argument", "cannot be called as func(req, res)"),
    ("endpoints_mod:keyword_only", "cannot be called as func(req, res)"),
])
@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_endpoint_that_is_not_a_handler_is_refused_before_binding(endpoint_app, command, func, words):
    result = wsrelay_command(command, str(endpoint_app(func)), env={})
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "entry 'app:chat_endpoint', field 'func': " in result.stderr, out
    assert words in result.stderr, out
    assert "cannot listen" not in out and "serving" not in out and "Traceback" not in out, out


@pytest.mark.parametrize("func", ["endpoints_mod:endpoint", "endpoints_mod:async_endpoint"])
def test_a_handler_of_req_and_res_passes_the_check(endpoint_app, func):
    result = wsrelay_command("check", str(endpoint_app(func)), env={})
    assert result.returncode == 0, result.stdout + result.stderr


async def test_the_python_api_refuses_the_same_endpoints():
    async def room(*args: Any) -> None:
        pass

    app = relay_app(lambda req, res: None)
    router = app.routers["test:ws"]
    with pytest.raises(ConfigError, match=r"field 'func': .*cannot be called as func\(req, res\)"):
        router.endpoint("GET", "/one", lambda req: None)
    router.endpoint("GET", "/room", room)
    app.process_function("room", room)
    gateway = wsrelay.Gateway(app)
    with pytest.raises(ConfigError, match="is the process function 'test:room', not a handler"):
        await gateway.start()
    assert not gateway.services  # refused before anything listens


# -- workers run the supervisor's wsrelay -----------------------------------------------------

WORKER_APP = """\
version: "1.0"
namespace: app
entries:
  - name: gateway
    kind: http.service
    addr: "127.0.0.1:0"
  - name: plain
    kind: http.router
    meta: {server: gateway}
  - name: from_the_app_folder
    kind: http.endpoint
    meta: {router: plain}
    path: /app
    func: app_mod:hello
  - name: ws_router
    kind: http.router
    meta: {server: gateway}
    prefix: /ws
    post_middleware: [websocket_relay]
    post_options: {wsrelay.allowed.origins: "*"}
  - name: echo_endpoint
    kind: http.endpoint
    meta: {router: ws_router}
    path: /echo
    func: tests.procs:echo_endpoint
"""


async def test_workers_ignore_a_wsrelay_folder_in_the_current_directory(tmp_path):
    """Run from a directory holding a folder named wsrelay (the project's
    own checkout is one), the workers import the supervisor's wsrelay, and
    the YAML file's folder stays importable."""
    decoy = tmp_path / "wsrelay"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy wsrelay of the current directory')\n")
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "app_mod.py").write_text("def hello(req, res):\n    res.write('from the app folder')\n")
    (folder / "app.yaml").write_text(WORKER_APP)
    env = {"WSRELAY_WORKERS": "2", "WSRELAY_ADDR": "127.0.0.1:0", "WSRELAY_CLUSTER_DOWN_AFTER": "2s"}
    async with ServerProcess([WSRELAY, "serve", "app/app.yaml"], env=env, cwd=tmp_path) as server:
        health = await http_request(server, "/health")
        assert health.status == 200, health.body
        assert (await http_request(server, "/app")).text == "from the app folder"
        ws = await RawWebSocket.connect(server, "/ws/echo")
        ws.send_text("through a worker")
        assert await ws.recv_text() == "through a worker"
        await ws.close_handshake()
        assert await server.stopped() == 0, server.output()
    assert "decoy" not in server.output()


# -- calls from another thread --------------------------------------------------------------------

async def test_another_thread_reaches_the_runtime_through_wsrelay_threads():
    observer = process.self()
    clients: list[Pid] = []

    def handler(req: Any, res: Any) -> None:
        res.relay(process.spawn("relay:recorder", None, observer))

    async with running(relay_app(handler)) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        _, _, client = await expect("target")  # ws.join, from the connection's PID
        clients.append(client)

        def in_a_pool_thread() -> Any:
            # What a FastAPI `def` endpoint does, in its thread pool.
            assert threading.current_thread() is not threading.main_thread()
            with pytest.raises(wsrelay.WrongThread, match=r"wsrelay\.threads\.send"):
                process.send(client, "ws.send", {"type": "text", "data": "direct"})
            sent = wsrelay.threads.send(client, "ws.send", {"type": "text", "data": "from a thread"})
            echo = wsrelay.threads.call(process.spawn, "test:echo")
            slept = wsrelay.threads.call(asyncio.sleep, 0, "awaited on the loop")
            with pytest.raises(ValueError, match="reserved"):
                wsrelay.threads.send(echo, "@exit")
            with pytest.raises(TimeoutError):
                wsrelay.threads.call(asyncio.sleep, 30, timeout=0.1)
            later = wsrelay.threads.call_soon(process.send, echo, "stop")
            return sent, echo, slept, later.result(10)

        sent, echo, slept, stopped = await asyncio.to_thread(in_a_pool_thread)
        assert sent is True and stopped is True and slept == "awaited on the loop"
        assert isinstance(echo, Pid)
        assert await ws.recv_text() == "from a thread"
        await ws.close_handshake()
        while (await expect("target"))[0] != "ws.leave":
            pass


async def test_threads_call_on_the_loop_itself_is_refused():
    async with running(relay_app(lambda req, res: None)):
        with pytest.raises(RuntimeError, match="call the function directly"):
            wsrelay.threads.call(process.self)


# -- docs: the cluster caveat of local names, and how to install today -------------------------------

def test_the_guide_says_what_workers_change_for_local_names():
    guide = (REPO / "docs" / "guide.md").read_text()
    names = guide[guide.index("### Names"):guide.index("### Monitors and EXIT")]
    assert "WSRELAY_WORKERS" in names and "register_global" in names and "cluster.md" in names, names


def test_the_install_docs_say_how_to_install_before_anything_is_published():
    readme = (REPO / "README.md").read_text()
    install = (REPO / "docs" / "install.md").read_text()
    for text in (readme, install):
        assert "pip install ." in text and "make wheel" in text and "wheelhouse/" in text
        assert "not published" in text


def test_the_python_versions_agree():
    """requires-python, the classifiers and the wheels cibuildwheel builds:
    CPython 3.10 to 3.14."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.10"$', pyproject, re.M), "requires-python"
    classifiers = set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject))
    build = re.search(r'^build = "([^"]*)"$', pyproject, re.M)
    assert build, "no [tool.cibuildwheel] build selection"
    built = {f"3.{tag[3:-2]}" for tag in build.group(1).split()}
    assert classifiers == built == {"3.10", "3.11", "3.12", "3.13", "3.14"}
