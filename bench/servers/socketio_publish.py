"""The Socket.IO publisher of the publish scenario, a process of its own: a
write-only ``AsyncRedisManager`` emitting event ``bench`` to room ``bench``
(python-socketio's way to emit from outside the server processes).
The pacing and the talk with the bench are bench/publisher.py's."""

from __future__ import annotations

import asyncio

import socketio

from ..publisher import Sender, run

EVENT = "bench"
ROOM = "bench"


def sender(target: str) -> Sender:
    loop = asyncio.new_event_loop()
    manager = socketio.AsyncRedisManager(target, write_only=True)

    def publish(text: str) -> None:
        loop.run_until_complete(manager.emit(EVENT, text, room=ROOM, namespace="/"))

    return publish


if __name__ == "__main__":
    run({"room": sender})
