"""The app of the operations tests (tests/test_ops_*.py) that run ``wsrelay
serve`` as a subprocess (tests/harness.py), and the report its targets write."""

from __future__ import annotations

import textwrap
from pathlib import Path

APP_YAML = """\
version: "1.0"
namespace: ops
entries:
  - name: gateway
    kind: http.service
    addr: "{addr}"
  - name: ws_router
    kind: http.router
    meta: {{server: gateway}}
    prefix: /ws
    post_middleware: [websocket_relay]
    post_options: {{wsrelay.allowed.origins: "*"}}
  - name: echo_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /echo
    func: tests.ops_procs:echo_endpoint
  - name: sizer_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /sizer
    func: tests.ops_procs:sizer_endpoint
  - name: stuck_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /stuck
    func: tests.ops_procs:stuck_endpoint
  - name: check_endpoint
    kind: http.endpoint
    meta: {{router: ws_router}}
    path: /check
    func: tests.ops_procs:check_endpoint
"""


def write_app(folder: Path, addr: str = "127.0.0.1:0") -> Path:
    """The operations test app (echo and sequence-check routes) as a YAML file."""
    path = folder / "app.yaml"
    path.write_text(textwrap.dedent(APP_YAML.format(addr=addr)))
    return path


def read_report(path: Path) -> list[list[str]]:
    """Lines written by ops_procs' targets to OPS_REPORT_FILE, split on spaces."""
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines() if line]
