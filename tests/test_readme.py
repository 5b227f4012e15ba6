"""The README's example, run exactly as written: as a script and as a file."""

from __future__ import annotations

import re
import sys

import websockets

from tests.harness import REPO, WSRELAY, ServerProcess

README = (REPO / "README.md").read_text()
# The README's app binds a fixed port; the tests let the kernel pick one.
ADDR = {"WSRELAY_ADDR": "127.0.0.1:0"}


def _block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", README, re.S)
    assert match, f"README has no {language} block"
    return match.group(1)


async def _check_upper(server: ServerProcess) -> None:
    async with websockets.connect(server.url("/ws/chat?user_id=42")) as ws:
        await ws.send("hello relay")
        assert await ws.recv() == "HELLO RELAY"


async def test_readme_script_runs_as_written(tmp_path):
    (tmp_path / "echo_upper.py").write_text(_block("python"))
    async with ServerProcess([sys.executable, "echo_upper.py"], env=ADDR, cwd=tmp_path) as server:
        await _check_upper(server)
        status = await server.stopped()
    assert status == 0, server.output()
    out = "\n".join(server.stdout)
    assert "joined: {app:gateway|" in out and "left: {app:gateway|" in out, out


async def test_readme_yaml_runs_as_written(tmp_path):
    (tmp_path / "echo_upper.py").write_text(_block("python"))
    (tmp_path / "app.yaml").write_text(_block("yaml"))
    async with ServerProcess([WSRELAY, "serve", tmp_path / "app.yaml"], env=ADDR, cwd="/") as server:
        await _check_upper(server)
        status = await server.stopped()
    assert status == 0, server.output()
