"""The seam from the transport to the node's core: what it calls when records
arrive and when peers come and go (wsrelay._core.remote.Cluster implements it;
the tests' recorder stands in for it)."""

from __future__ import annotations

from typing import Any, Protocol

from .._core.pid import Pid


class Hooks(Protocol):
    """What the transport calls on the node's core, on the loop's thread."""

    def on_send(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Pid) -> None: ...
    def on_call(self, dest_id: int, dest_host: str, topic: Any, payload: Any, sender: Pid,
                reply_to: Pid) -> None: ...
    def on_signal(self, kind: int, dest: Pid, src: Pid, reason: Any) -> None: ...
    def on_frames(self, conn_ids: list[int], frame: bytes) -> None: ...
    def on_node_up(self, node: str, incarnation: int) -> None: ...
    def on_node_down(self, node: str, incarnation: int, reason: str) -> None: ...
