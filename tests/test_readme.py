"""The README's example, run exactly as written: as a script and as a file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import websockets

from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", README, re.S)
    assert match, f"README has no {language} block"
    return match.group(1)


async def _check_upper(url: str) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws/chat?user_id=42"
    async with websockets.connect(ws_url) as ws:
        await ws.send("hello relay")
        assert await ws.recv() == "HELLO RELAY"


async def test_readme_script_runs_as_written(tmp_path):
    (tmp_path / "echo_upper.py").write_text(_block("python"))
    server = ServerProcess([sys.executable, "echo_upper.py"], cwd=str(tmp_path))
    url = server.wait_ready()
    try:
        await _check_upper(url)
    finally:
        status, out, err = server.stop()
    assert status == 0, err
    assert "joined: {app:gateway|" in out and "left: {app:gateway|" in out, out


async def test_readme_yaml_runs_as_written(tmp_path):
    (tmp_path / "echo_upper.py").write_text(_block("python"))
    (tmp_path / "app.yaml").write_text(_block("yaml"))
    wsrelay_cmd = str(Path(sys.executable).parent / "wsrelay")
    server = ServerProcess([wsrelay_cmd, "serve", str(tmp_path / "app.yaml")], cwd="/")
    url = server.wait_ready()
    try:
        await _check_upper(url)
    finally:
        status, _, err = server.stop()
    assert status == 0, err
