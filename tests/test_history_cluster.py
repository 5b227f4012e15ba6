"""History across nodes (docs/cluster.md, "History"): real nodes (``wsrelay
serve`` children) on a real nats-server with JetStream, driven by their
control connections (tests/cluster_support.py), and WebSocket clients of
/ws/member on each; then WSRELAY_WORKERS=2 under one supervisor.

One node keeps each channel (the first to need it claims the lease):
offsets are contiguous whoever publishes, every subscriber sees them in
order, a client recovers on another node than the one it was on, and a
keeper killed is succeeded by one that continues the offsets.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import pytest

from tests.apps import _ws_app
from tests.cluster_support import DOWN_AFTER, controlled_cluster
from tests.test_cluster_supervisor import supervised_server, worker
from tests.wsclient import RawWebSocket
from wsrelay.cluster.broker import Broker

pytestmark = pytest.mark.timeout(120)

ROOM = "room:h"

HISTORY_APP_YAML = _ws_app(
    "hc",
    '{name: control, kind: http.endpoint, meta: {router: ws}, path: /control, func: "tests.procs:control_endpoint"}',
    '{name: member, kind: http.endpoint, meta: {router: ws}, path: /member, func: "tests.procs:member_endpoint"}',
    '{name: chat, kind: http.endpoint, meta: {router: ws}, path: /chat, func: "tests.procs:channels_endpoint"}',
    '{name: rooms, kind: channel.namespace, pattern: "room:*", history_size: 1000, history_ttl: 5m}',
)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "history_app.yaml"
    path.write_text(HISTORY_APP_YAML)
    return path


class Client:
    """A client of /ws/member granted ``channels``: its PID, and each
    channel's ``subscribed`` event, whichever of the two comes first."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.me: Optional[str] = None
        self.subscribed: dict[str, dict[str, Any]] = {}
        self.early: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, node: Any, *channels: str, recover: Optional[dict[str, Any]] = None,
                   path: str = "/ws/member") -> Client:
        query = "&".join(f"ch={name}" for name in channels)
        if recover is not None:
            query += "&recover=" + quote(json.dumps(recover))
        client = cls(await RawWebSocket.connect(node, f"{path}?{query}"))
        while len(client.subscribed) < len(channels) or (client.me is None and path == "/ws/member"):
            message = json.loads(await client.ws.recv_text(timeout=20))
            if "me" in message:
                client.me = message["me"]
            elif message.get("event") == "subscribed":
                client.subscribed[message["channel"]] = message
            else:
                client.early.append(message)
        return client

    async def publications(self, count: int) -> list[dict[str, Any]]:
        out = self.early[:count]
        self.early = self.early[count:]
        while len(out) < count:
            message = json.loads(await self.ws.recv_text(timeout=20))
            assert message["event"] == "publication", message
            out.append(message)
        return out


def contiguous(publications: list[dict[str, Any]], after: int, epoch: str) -> None:
    offsets = [p["offset"] for p in publications]
    assert offsets == list(range(after + 1, after + 1 + len(publications))), offsets
    assert {p["epoch"] for p in publications} == {epoch}


async def test_offsets_are_contiguous_whoever_publishes_and_every_subscriber_sees_them_in_order(
        app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", "c") as ((a, ca), (b, cb), (c, cc)):
        clients = [await Client.open(node, ROOM) for node in (a, b, c, b)]
        start = clients[0].subscribed[ROOM]
        count = 150
        await asyncio.gather(ca.call("publish_many", channel=ROOM, tag="a", count=count),
                             cb.call("publish_many", channel=ROOM, tag="b", count=count),
                             cc.call("publish_many", channel=ROOM, tag="c", count=count))
        for client in clients:
            seen = await client.publications(3 * count)
            first = client.subscribed[ROOM]
            assert first["epoch"] == start["epoch"] and first["recovered"] is False
            contiguous(seen, first["offset"], start["epoch"])
            for tag in "abc":
                # From one publisher, in the order it published.
                assert [p["data"]["n"] for p in seen if p["data"]["from"] == tag] == list(range(count))
        result = await cc.call("publish_numbered", channel=ROOM, data="numbered")
        assert result == {"offset": start["offset"] + 3 * count + 1, "epoch": start["epoch"]}
        history = await ca.call("history", channel=ROOM, since=start["offset"] + 3 * count - 1)
        assert [p["offset"] for p in history["publications"]] == [result["offset"] - 1, result["offset"]]
        assert history["publications"][-1]["data"] == "numbered"


async def test_a_client_recovers_on_another_node_than_the_one_it_was_on(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        first = await Client.open(a, ROOM)
        epoch = first.subscribed[ROOM]["epoch"]
        await cb.call("publish_many", channel=ROOM, tag="before", count=3)
        seen = await first.publications(3)
        last = seen[-1]["offset"]
        await first.ws.close_handshake()
        await ca.call("publish_many", channel=ROOM, tag="missed", count=5)
        await cb.call("publish_many", channel=ROOM, tag="missed-b", count=5)
        # Publications keep coming while the client recovers: none lost or twice at the seam.
        publishing = asyncio.ensure_future(ca.call("publish_many", channel=ROOM, tag="live", count=200))
        again = await Client.open(b, ROOM, recover={ROOM: {"epoch": epoch, "offset": last}})
        await publishing
        subscribed = again.subscribed[ROOM]
        assert subscribed["recovered"] is True and subscribed["epoch"] == epoch
        seen = await again.publications(210)
        contiguous(seen, last, epoch)
        for tag, count in (("missed", 5), ("missed-b", 5), ("live", 200)):
            assert [p["data"]["n"] for p in seen if p["data"]["from"] == tag] == list(range(count))
        # Another epoch: not recovered, live only.
        other = await Client.open(a, ROOM, recover={ROOM: {"epoch": "another", "offset": last}})
        assert other.subscribed[ROOM]["recovered"] is False
        assert other.subscribed[ROOM]["offset"] == last + 210
        await cb.call("publish_many", channel=ROOM, tag="after", count=1)
        assert (await other.publications(1))[0]["offset"] == last + 211
        # b has it too (its subscriber saw it): a subscription beginning there now begins after it.
        assert (await again.publications(1))[0]["offset"] == last + 211
        # channels.subscribe on a node that does not keep the channel: its position, once the keeper answered.
        later = await Client.open(b)
        assert await cb.call("subscribe_position", pid=later.me, channel=ROOM) == [False, last + 211, epoch]
        subscribed = json.loads(await later.ws.recv_text(timeout=20))
        assert (subscribed["event"], subscribed["offset"]) == ("subscribed", last + 211)


async def test_a_killed_keeper_is_succeeded_by_one_that_continues_the_offsets(app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", "c") as ((a, ca), (b, cb), (c, cc)):
        numbered = [await ca.call("publish_numbered", channel=ROOM, data=n) for n in range(1, 6)]
        epoch = numbered[0]["epoch"]
        assert [r["offset"] for r in numbered] == [1, 2, 3, 4, 5]
        watcher = await Client.open(c, ROOM)
        assert watcher.subscribed[ROOM]["offset"] == 5
        a.kill()  # a published first: it keeps the channel
        after = await cb.call("publish_numbered", channel=ROOM, data=6, timeout=DOWN_AFTER * 20)
        assert after == {"offset": 6, "epoch": epoch}
        assert (await cc.call("publish_numbered", channel=ROOM, data=7)) == {"offset": 7, "epoch": epoch}
        seen = await watcher.publications(2)
        contiguous(seen, 5, epoch)
        history = await cc.call("history", channel=ROOM)
        assert [(p["offset"], p["data"]) for p in history["publications"]] == [(n, n) for n in range(1, 8)]
        # A client of the lost node recovers on another.
        back = await Client.open(b, ROOM, recover={ROOM: {"epoch": epoch, "offset": 3}})
        assert back.subscribed[ROOM]["recovered"] is True
        assert [p["offset"] for p in await back.publications(4)] == [4, 5, 6, 7]


async def stored(broker: Broker, channel: str) -> list[list[dict[str, Any]]]:
    """The channel's messages in the stream, oldest first: each the
    envelopes it holds (a batch of one or more, joined by newlines)."""
    import nats
    from nats.js.errors import NotFoundError

    from wsrelay.cluster.history import STREAM, subject

    nc = await nats.connect(broker.url, token=broker.token)
    messages = []
    try:
        js = nc.jetstream()
        seq = 1
        while True:
            try:
                msg = await js.get_msg(STREAM, seq, subject=subject(channel), next=True)
            except NotFoundError:
                return messages
            messages.append([json.loads(line) for line in msg.data.split(b"\n")])
            seq = msg.seq + 1
    finally:
        await nc.close()


async def test_a_burst_is_stored_in_batches_and_a_successor_recovers_from_inside_one(
        app: Path, broker: Broker) -> None:
    async with controlled_cluster(app, broker, "a", "b", WSRELAY_RECOVERY_MAX="1000") as ((a, ca), (b, cb)):
        first = await ca.call("publish_numbered", channel=ROOM, data="first")  # a keeps the channel
        epoch = first["epoch"]
        watcher = await Client.open(b, ROOM)
        count = 300
        await asyncio.gather(ca.call("publish_many", channel=ROOM, tag="a", count=count),
                             cb.call("publish_many", channel=ROOM, tag="b", count=count))
        seen = await watcher.publications(2 * count)  # delivered: every batch is stored
        contiguous(seen, 1, epoch)
        batches = await stored(broker, ROOM)
        offsets = [envelope["offset"] for batch in batches for envelope in batch]
        assert offsets == list(range(1, 2 * count + 2)), "every publication stored once, in order"
        assert all(envelope["epoch"] == epoch for batch in batches for envelope in batch)
        assert len(batches) < len(offsets), "a burst is written in batches, not a message each"
        # From inside a batch: the first publication missed is its second.
        inside = next(batch for batch in reversed(batches) if len(batch) > 1)[0]["offset"]
        a.kill()
        after = await cb.call("publish_numbered", channel=ROOM, data="after", timeout=DOWN_AFTER * 20)
        assert after == {"offset": 2 * count + 2, "epoch": epoch}
        back = await Client.open(b, ROOM, recover={ROOM: {"epoch": epoch, "offset": inside}})
        assert back.subscribed[ROOM]["recovered"] is True
        missed = await back.publications(2 * count + 2 - inside)
        contiguous(missed, inside, epoch)
        by_offset = {p["offset"]: p["data"] for p in seen}
        assert [p["data"] for p in missed[:-1]] == [by_offset[o] for o in range(inside + 1, 2 * count + 2)]
        assert missed[-1]["data"] == "after"
        # Nothing more: each once.
        await cb.call("publish_numbered", channel=ROOM, data="last")
        assert [p["offset"] for p in await back.publications(1)] == [2 * count + 3]
        history = await cb.call("history", channel=ROOM, since=inside)
        assert [p["offset"] for p in history["publications"]] == list(range(inside + 1, 2 * count + 4))


async def test_a_channel_whose_stream_is_lost_gets_a_new_epoch(app: Path, broker: Broker) -> None:
    import nats

    async with controlled_cluster(app, broker, "a", "b") as ((a, ca), (b, cb)):
        first = await ca.call("publish_numbered", channel=ROOM, data=1)
        nc = await nats.connect(broker.url, token=broker.token)
        try:
            await nc.jetstream().purge_stream("wsrelay_history")
        finally:
            await nc.close()
        a.kill()
        after = await cb.call("publish_numbered", channel=ROOM, data=2, timeout=DOWN_AFTER * 20)
        assert after["offset"] == 1 and after["epoch"] != first["epoch"]


async def test_workers_share_history_and_a_killed_worker_changes_nothing(app: Path) -> None:
    async with supervised_server(app, WSRELAY_WORKERS="2") as server:
        # channels_endpoint's room publishes each client's messages to room:lobby.
        clients = [await Client.open(server, "room:lobby", path="/ws/chat") for _ in range(6)]
        for i, client in enumerate(clients):
            client.ws.send_text(json.dumps(i))
        # 6 joins (the room publishes each) and 6 messages, offsets 1 to 12: each
        # client gets those after its subscribed event.
        for client in clients:
            start = client.subscribed["room:lobby"]["offset"]
            seen = await client.publications(12 - start)
            contiguous(seen, start, client.subscribed["room:lobby"]["epoch"])
        epoch = clients[0].subscribed["room:lobby"]["epoch"]
        last = seen[-1]["offset"]
        # Both workers, so the keeper's among them: the restarted ones take over from JetStream.
        for victim in [worker(server, 0), worker(server, 1)]:
            victim.send_signal(signal.SIGKILL)
        late = await reconnect(server, "room:lobby", path="/ws/chat",
                               recover={"room:lobby": {"epoch": epoch, "offset": last}})
        assert late.subscribed["room:lobby"]["recovered"] is True
        assert late.subscribed["room:lobby"]["epoch"] == epoch
        joined = await late.publications(1)  # its own join, published by the room
        assert joined[0]["offset"] == late.subscribed["room:lobby"]["offset"] + 1


# The chat demo: its rooms keep history, and have presence.
CHAT_DEMO = Path(__file__).resolve().parent.parent / "examples" / "chat" / "app.yaml"


async def history_event(ws: RawWebSocket) -> dict[str, Any]:
    """The next message of the channel's history (``subscribed`` or a
    publication): the demo's presence (its online list, join and leave
    events) comes beside it, in no order with it, and is passed over."""
    while True:
        message = json.loads(await ws.recv_text(timeout=10))
        if message.get("event") in ("subscribed", "publication"):
            return message


async def joins_its_room(server: Any, room: str, user: str) -> RawWebSocket:
    """A tab of the chat demo in ``room``: the first publication after its
    ``subscribed`` event is its own arrival (the room's ``chat`` process
    publishes it on ws.join), with the next offset."""
    ws = await RawWebSocket.connect(server, f"/ws/chat?room={room}&user={user}")
    subscribed = await history_event(ws)
    assert subscribed["event"] == "subscribed", subscribed
    joined = await history_event(ws)
    assert (joined["event"], joined["data"]["kind"], joined["data"]["user"]) == ("publication", "join", user)
    contiguous([joined], subscribed["offset"], subscribed["epoch"])
    return ws


async def test_a_publication_made_as_a_subscription_begins_reaches_it_on_either_worker() -> None:
    async with supervised_server(CHAT_DEMO, WSRELAY_WORKERS="2") as server:
        for n in range(400):
            # A new room each time: its first tab makes its worker claim the
            # room's channel; the second, when the kernel puts it on the other
            # worker, asks that keeper for its position while its own arrival
            # is being published: now and then the keeper has stored the
            # arrival, and counts it, by the time the question reaches it.
            # Both see their arrival, right after ``subscribed``.
            room = f"r{n}"
            first = await joins_its_room(server, room, "first")
            second = await joins_its_room(server, room, "second")
            first.abort()
            second.abort()


async def reconnect(server: Any, *channels: str, **options: Any) -> Client:
    """Client.open once a worker listens again (the supervisor restarts them
    with a back-off)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            return await Client.open(server, *channels, **options)
        except (ConnectionError, OSError):
            assert asyncio.get_running_loop().time() < deadline, "no worker came back"
            await asyncio.sleep(0.1)


async def test_cluster_data_keeps_history_over_a_restart_of_the_whole_server(app: Path, tmp_path: Path) -> None:
    data = tmp_path / "jetstream"
    position: dict[str, Any] = {}
    for run in range(2):
        async with supervised_server(app, WSRELAY_WORKERS="2", WSRELAY_CLUSTER_DATA=str(data)) as server:
            client = await Client.open(server, "room:lobby", path="/ws/chat",
                                       recover={"room:lobby": position} if position else None)
            subscribed = client.subscribed["room:lobby"]
            joined = (await client.publications(1))[0]  # the room publishes each join
            if run == 0:
                assert (subscribed["recovered"], joined["offset"]) == (False, 1)
                position = {"epoch": joined["epoch"], "offset": joined["offset"]}
            else:
                # The same history: its epoch, its offsets, and recovery from before the restart.
                assert subscribed["recovered"] is True and subscribed["epoch"] == position["epoch"]
                assert (joined["offset"], joined["epoch"]) == (2, position["epoch"])
            client.ws.abort()
            assert await server.stopped() == 0, server.output()
    assert any(data.iterdir()), "the broker's JetStream data is kept in WSRELAY_CLUSTER_DATA"
