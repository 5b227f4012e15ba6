"""The apps the tests serve, and where their handlers are: every handler
and process function they name is in tests/procs.py.

- relay_app(): an App in Python, one relay route, for a gateway in the
  test's own process (tests/harness.running).
- ops_app_yaml() (write_app()): the YAML app of ``wsrelay serve`` subprocesses
  (tests/harness.ServerProcess): echo, sizer, stuck and sequence-check routes.
- CLUSTER_APP_YAML (write_cluster_app()): the YAML app the cluster nodes run
  (tests/cluster_support.py). ``/ws/control``: the connection's target is a
  control process (tests/procs.py ``relay:control``) that runs the process
  API calls the test sends. ``/ws/relay?to=PID`` relays to any PID, of any
  node. ``/ws/room`` relays to the process named ``room`` cluster-wide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from tests.procs import relay_to
from wsrelay import App, process


def relay_handler(process_id: str, *args: Any, **fields: Any) -> Callable[[Any, Any], None]:
    """A handler that spawns ``process_id(*args)`` and relays to it; extra
    ``fields`` go into X-WS-Relay (metadata, message_topic, heartbeat_interval)."""

    def handler(req: Any, res: Any) -> None:
        pid = process.spawn(process_id, None, *args)
        relay_to(res, pid, **fields)

    return handler


def relay_app(handler: Callable[[Any, Any], None], origins: Optional[str] = None,
              path: str = "/chat") -> App:
    """An app with one service on an ephemeral port and one relay route /ws<path>."""
    app = App("test")
    app.service("gateway", "127.0.0.1:0")
    options = {} if origins is None else {"wsrelay.allowed.origins": origins}
    router = app.router("ws", "gateway", "/ws", post_middleware=["websocket_relay"], post_options=options)
    router.endpoint("GET", path, handler)
    return app


# Each route of the operations app: (path, handler in tests/procs.py).
OPS_ROUTES = (("/echo", "echo_endpoint"), ("/sizer", "sizer_endpoint"), ("/stuck", "stuck_endpoint"),
              ("/check", "check_endpoint"), ("/async_echo", "async_echo_endpoint"), ("/slow", "slow_endpoint"))

def _ws_app(namespace: str, *entries: str, addr: str = "127.0.0.1:0", router: str = "ws") -> str:
    """A YAML app of one service on ``addr`` and one relay router /ws open to
    every origin, with ``entries`` (one flow-style line each)."""
    return f"""\
version: "1.0"
namespace: {namespace}
entries:
  - {{name: gateway, kind: http.service, addr: "{addr}"}}
  - name: {router}
    kind: http.router
    meta: {{server: gateway}}
    prefix: /ws
    post_middleware: [websocket_relay]
    post_options: {{wsrelay.allowed.origins: "*"}}
""" + "".join(f"  - {entry}\n" for entry in entries)


def ops_app_yaml(addr: str = "127.0.0.1:0") -> str:
    """The operations app: a relay route per OPS_ROUTES, on ``addr``."""
    return _ws_app("ops", *(f'{{name: {func}, kind: http.endpoint, meta: {{router: ws_router}}, path: {path}, '
                            f'func: "tests.procs:{func}"}}' for path, func in OPS_ROUTES),
                   addr=addr, router="ws_router")


CLUSTER_APP_YAML = _ws_app(
    "cl",
    '{name: control, kind: http.endpoint, meta: {router: ws}, path: /control, func: "tests.procs:control_endpoint"}',
    '{name: relay, kind: http.endpoint, meta: {router: ws}, path: /relay, func: "tests.procs:relay_endpoint"}',
    '{name: room, kind: http.endpoint, meta: {router: ws}, path: /room, func: "tests.procs:room_endpoint"}',
    '{name: member, kind: http.endpoint, meta: {router: ws}, path: /member, func: "tests.procs:member_endpoint"}',
    '{name: call, kind: http.endpoint, meta: {router: ws}, path: /call, func: "tests.procs:call_then_wait_endpoint"}',
)

CHANNELS_APP_YAML = _ws_app(
    "ch",
    '{name: chat, kind: http.endpoint, meta: {router: ws}, path: /chat, func: "tests.procs:channels_endpoint"}',
    '{name: member, kind: http.endpoint, meta: {router: ws}, path: /member, func: "tests.procs:member_endpoint"}',
    '{name: rooms, kind: channel.namespace, pattern: "room:*", history_size: 10, history_ttl: 1m, presence: true}',
)


# The browser client's app (tests/test_wsrelay_js.py): /ws/chat and /ws/member
# as in the channels app, its rooms with history enough to recover a
# reconnection while publications go on, its lounges with join and leave events.
JS_APP_YAML = _ws_app(
    "js",
    '{name: chat, kind: http.endpoint, meta: {router: ws}, path: /chat, func: "tests.procs:channels_endpoint"}',
    '{name: member, kind: http.endpoint, meta: {router: ws}, path: /member, func: "tests.procs:member_endpoint"}',
    '{name: rooms, kind: channel.namespace, pattern: "room:*", history_size: 1000, history_ttl: 5m}',
    '{name: lounges, kind: channel.namespace, pattern: "lounge:*", presence: true, join_leave: true}',
)


def write_channels_app(folder: Path, text: str = CHANNELS_APP_YAML) -> Path:
    """The channels app (CHANNELS_APP_YAML, or ``text``) as a YAML file in ``folder``."""
    path = folder / "channels_app.yaml"
    path.write_text(text)
    return path


def write_app(folder: Path, addr: str = "127.0.0.1:0") -> Path:
    """The operations app (ops_app_yaml()) as a YAML file in ``folder``."""
    path = folder / "app.yaml"
    path.write_text(ops_app_yaml(addr))
    return path


def write_cluster_app(folder: Path) -> Path:
    """The cluster nodes' app (CLUSTER_APP_YAML) as a YAML file in ``folder``."""
    path = folder / "cluster_app.yaml"
    path.write_text(CLUSTER_APP_YAML)
    return path


def read_report(path: Path) -> list[list[str]]:
    """Lines written by the relay targets of tests/procs.py to the file named
    by its REPORT_ENV, split on spaces."""
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines() if line]
