"""The wsrelay publisher of the publish scenario, a process of its own: the
synchronous ``wsrelay.client.Client`` over one keep-alive connection to the
server API (``WSRELAY_API_KEY``), as a Django view or a Celery task would
use it. Two ways (``--via``):

- ``channel``: ``client.publish("room:bench", text)``; the subscribers'
  upgrade granted them the channel (bench_relay.channel_sub_endpoint);
- ``group``: ``client.send("room:load", "pub", ...)``: the room process of
  bench_relay holds a ``wsrelay.Group`` of the same subscribers and sends
  each message to it (the broadcast scenario's fan-out), for the CPU of a
  channel's fan-out next to a group's. It sends the text of the channel's
  envelope, so that both ways put the same bytes on every socket.

The pacing and the talk with the bench are bench/publisher.py's.
"""

from __future__ import annotations

import os

import orjson

from wsrelay.client import Client

from ..publisher import Sender, run

CHANNEL = "room:bench"
ROOM = "room:load"


def _client(url: str) -> Client:
    return Client(url, os.environ["WSRELAY_API_KEY"])


def channel(url: str) -> Sender:
    client = _client(url)

    def publish(text: str) -> None:
        client.publish(CHANNEL, text)

    return publish


def group(url: str) -> Sender:
    client = _client(url)

    def publish(text: str) -> None:
        envelope = orjson.dumps({"channel": CHANNEL, "event": "publication", "data": text}).decode()
        client.send(ROOM, "pub", {"type": "text", "data": envelope})

    return publish


if __name__ == "__main__":
    run({"channel": channel, "group": group})
