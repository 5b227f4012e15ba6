"""History of channels across the cluster, kept in JetStream (docs/cluster.md,
"History").

Each channel with history has one *keeper*: the node whose keeper process
holds the cluster-wide name ``wsrelay:history:<channel>`` (a lease, released
when that node is lost). Only the keeper numbers the channel's
publications, so offsets grow by exactly one whoever publishes: a
publication made elsewhere is sent to it, on the ordered stream between the
two nodes. The keeper numbers it in its Log (``_core/history.pyx``), writes
it to the stream ``wsrelay_history``, and once written delivers it, here and
to every node with subscribers, in offset order: the stream from the
keeper's node gives every node the publications in that order.

Writes are batched per channel. A message of the stream holds one or more
publications of its channel, consecutive offsets of one epoch: their
envelopes (JSON, which never holds a newline) joined by newlines, oldest
first (a message of one publication is its envelope alone). While
WRITE_WINDOW writes of a channel are outstanding, the publications
numbered meanwhile wait, and the next write takes them all as one message
(at most BATCH_MAX of them and BATCH_BYTES), so nats-py's cost of a write
(a task, a future, a publish, an ack) is paid once per batch. A batch is
delivered, and its publishers told their offsets, once it and every batch
before it are written. The stream's max_age applies to a message: a
batch's publications all live from its write, at most a write's window
after they were numbered, which is well within any TTL's precision.

A node that subscribes a connection to a channel asks the keeper for its
position (a ``process.call``, whose reply comes on the same ordered stream
as the keeper's publications); what arrives meanwhile is held by the core
and merged by offset at the seam. The keeper answers from its Log, a copy
of what the stream holds, so a recovery costs no read of JetStream.

A node that finds no keeper claims the lease. Taking a channel over, it
reads the channel's subject: the last publication of the last message
gives the epoch and offset to continue from, the messages up to it the Log
(its last ``history_size`` publications, contiguous up to that offset: a
write that failed left a gap, and only what follows it recovers); a
subject that is empty (never published, expired, or the stream lost) is a
new epoch from offset 0.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections import deque
from typing import Any, Optional

import orjson
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from .. import process
from .._core import channels as core
from .._core import history as core_history
from .._core.pid import Pid
from .._core.runtime import node
from .._core.stats import LimitedLog
from ..errors import CallError

log = logging.getLogger("wsrelay.cluster")
_trouble = LimitedLog("wsrelay.cluster")

STREAM = "wsrelay_history"
SUBJECT_PREFIX = "wsrelay.hist."
LEASE_PREFIX = "wsrelay:history:"
KEEPER_FUNCTION = "wsrelay:history_keeper"
# The keeper process's topics (calls): a publication whose publisher waits
# for its offset, a subscriber's position, a read. A publication that nobody
# waits for travels as a PUBLISH record instead (``_forward``).
PUBLISH = "history.publish"
POSITION = "history.position"
READ = "history.read"
# How long a node waits for a keeper's answer before asking again (the
# keeper's node may have been lost meanwhile, and another take over).
ASK_TIMEOUT = 5.0
# How long a write to the stream may take, from its publish to its ack.
WRITE_TIMEOUT = 5.0
# A message's header listing the references of its publications whose
# publisher waited for their offset ("" for the others), in order.
REFS_HEADER = "Wsrelay-Refs"
# A recovery sent in one reply stays well under NATS' default max_payload.
MAX_REPLY_BYTES = 512 << 10
# A channel's writes outstanding at once; the publications numbered while
# they are go as one message each write, of at most BATCH_MAX of them and
# BATCH_BYTES of envelopes (or half the broker's max_payload, if less).
WRITE_WINDOW = 2
BATCH_MAX = 1024
BATCH_BYTES = 256 << 10


def subject(channel: str) -> str:
    """The channel's subject: one token, whatever its name (``.`` splits
    NATS subjects; base64url has none)."""
    return SUBJECT_PREFIX + base64.urlsafe_b64encode(channel.encode()).rstrip(b"=").decode()


def lease(channel: str) -> str:
    return LEASE_PREFIX + channel


class _Batch:
    """Publications of one channel numbered one after the other, in one
    epoch: written as one message, then delivered."""

    __slots__ = ("first", "epoch", "texts", "refs", "nbytes", "waiters", "written")

    def __init__(self, first: int, epoch: str) -> None:
        self.first = first
        self.epoch = epoch
        self.texts: list[str] = []
        # The publishers' references of those that came with one (REFS_HEADER),
        # "" for the others; None while none did.
        self.refs: Optional[list[str]] = None
        self.nbytes = 0  # of the message: the envelopes, and a newline after each
        # (offset, waiter) of those whose publisher waits for its offset:
        # told {"offset", "epoch"} once delivered: a call's message, or a future.
        self.waiters: Optional[list[tuple[int, Any]]] = None
        self.written = False

    def delivered(self) -> None:
        for offset, waiter in self.waiters or ():
            result = {"offset": offset, "epoch": self.epoch}
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(result)
            else:
                waiter.reply(result)


class _Writes:
    """A channel's publications being written: batches ``waiting`` for room
    in its window (the last one may still grow), and ``sent``, being written
    or written but waiting for one before them, oldest first."""

    __slots__ = ("waiting", "sent", "outstanding")

    def __init__(self) -> None:
        self.waiting: deque[_Batch] = deque()
        self.sent: deque[_Batch] = deque()
        self.outstanding = 0


class HistoryKeeper:
    """This node's side of the cluster's history: the keeper of the channels
    whose lease it holds, and the forwarder of everything else."""

    def __init__(self, transport: Any, limits: tuple[int, float]) -> None:
        self._transport = transport
        self._node = transport.node
        self._js = transport.jetstream()
        self._limits = limits
        self.pid: Optional[Pid] = None
        # channel -> its publications being written.
        self._writing: dict[str, _Writes] = {}
        # Channels with a batch waiting and room for it in their window,
        # written at the loop's next turn (what is numbered until then joins
        # the batch).
        self._ready: set[str] = set()
        self._writer: Optional[asyncio.Task[None]] = None
        self._stopped = False
        self._batch_bytes = min(BATCH_BYTES, transport.max_payload() // 2)
        # channel -> the claim of its lease under way.
        self._claims: dict[str, asyncio.Task[None]] = {}
        # channel -> publications (JSON) made here while its keeper is being found.
        self._queued: dict[str, list[bytes]] = {}
        # channel -> what other nodes sent the keeper process while this
        # node was taking the channel over.
        self._deferred: dict[str, list[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # (connection, channel) -> its Subscription once the keeper answered,
        # for the channels.subscribe that waits for it.
        self._answers: dict[tuple[Pid, str], asyncio.Future[Any]] = {}
        # channel -> {publisher's reference: offset} of the publications its
        # stream held when this node took it over (as many as its Log: bounded
        # by the channel's history size), for a publisher asking again.
        self._stored: dict[str, dict[str, int]] = {}
        self._next_ref = 0

    # -- start ----------------------------------------------------------------------

    async def start(self) -> None:
        """The stream (made, or its limits raised to this app's), and the
        keeper process that other nodes send to."""
        size, ttl = self._limits
        config = StreamConfig(name=STREAM, subjects=[SUBJECT_PREFIX + ">"], storage=StorageType.FILE,
                              max_msgs_per_subject=size, max_age=ttl, discard=DiscardPolicy.OLD,
                              allow_direct=True)
        try:
            await self._js.add_stream(config)
        except BadRequestError:
            # Made by another node, maybe with other limits: the larger of each.
            info = await self._js.stream_info(STREAM)
            current = info.config
            if (current.max_msgs_per_subject or 0) < size or (current.max_age or 0) < ttl:
                await self._js.update_stream(config.evolve(
                    max_msgs_per_subject=max(size, current.max_msgs_per_subject or 0),
                    max_age=max(ttl, current.max_age or 0)))
        node().register_function(KEEPER_FUNCTION, _keeper_process)
        self.pid = process.spawn(KEEPER_FUNCTION, None, self)
        core_history.set_keeper(self)

    def stop(self) -> None:
        self._stopped = True
        core_history.set_keeper(None)
        for task in list(self._tasks) + list(self._claims.values()):
            task.cancel()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _trouble.error("history", f"cluster history: {task.exception()!r}")

    def _keeper_of(self, channel: str) -> Optional[Pid]:
        """The keeper process of ``channel``, when it is known and its node
        is up. A lease may outlive its holder for a moment (a restarted node
        does not know the incarnation before it, whose names are released
        by the others): such a holder is none, so that the lease is claimed,
        and register_global finds the holder dead and replaces it."""
        pid = process.whereis_global(lease(channel))
        if pid is None:
            return None
        if pid == self.pid:
            # Ours, but without its Log (a takeover that failed): claimed again.
            return pid if core_history.channel_log(channel) is not None else None
        if pid.node == self._node or self._transport.is_up(pid.node or ""):
            return pid
        return None

    def _keeps(self, channel: str) -> bool:
        if core_history.channel_log(channel) is None:
            return False
        if process.whereis_global(lease(channel)) == self.pid:
            return True
        # The lease is another node's now (ours was released while this node
        # was cut off, and someone claimed it): its Log is the channel's.
        core_history.drop(channel)
        _trouble.warning("lease", f"cluster history: {channel!r} is kept by another node now; this one stops")
        return False

    # -- publishing ---------------------------------------------------------------

    def publish(self, channel: str, data: bytes) -> dict[str, Any]:
        """A publication made on this node (``data`` JSON): numbered now when
        this node keeps the channel (its offset and epoch returned), else
        sent to the keeper (``{}``)."""
        if self._keeps(channel):
            return self._number(channel, data)
        keeper = None if channel in self._queued else self._keeper_of(channel)
        if keeper is not None:
            self._forward(keeper, channel, data)
            return {}
        self._queued.setdefault(channel, []).append(data)
        self._find_keeper(channel)
        return {}

    def _forward(self, keeper: Pid, channel: str, data: bytes) -> None:
        """A publication to the keeper's node, as a PUBLISH record without an
        offset (the core hands it back to us there): on the ordered stream
        between the nodes, and bounded by it, not by a process's mailbox."""
        envelope = orjson.dumps({"channel": channel, "event": "publication", "data": orjson.Fragment(data)})
        if not self._transport.publication(keeper.node, channel, envelope.decode()):
            _trouble.warning("forward", f"cluster history: a publication of {channel!r} for its keeper {keeper} "
                                        "could not leave: its node is down")

    async def publish_stored(self, channel: str, data: bytes) -> dict[str, Any]:
        """As ``publish``, and the offset and epoch the keeper gave it,
        wherever the keeper is.

        The publication carries a reference of its own, stored with it: when
        its keeper is lost before answering, the next keeper is asked again
        with it, and answers with the offset it has if the lost one had
        stored it (the stream holds it, and its subscribers may have had it),
        rather than publishing it twice."""
        self._next_ref += 1
        ref = f"{self._node}:{self._transport.incarnation}:{self._next_ref}"
        while True:
            if self._keeps(channel) and channel not in self._queued:
                stored = self._stored_as(channel, ref)
                if stored is not None:
                    return stored
                waiter = asyncio.get_running_loop().create_future()
                self._number(channel, data, waiter, ref)
                return await waiter
            keeper = self._keeper_of(channel)
            if keeper is not None and channel not in self._queued:
                try:
                    return await process.call(keeper, PUBLISH, [channel, data.decode(), ref], ASK_TIMEOUT)
                except CallError as exc:
                    # The keeper ended or its node was lost, before or after
                    # storing this one: the next keeper is asked, with its reference.
                    _trouble.warning("publish", f"cluster history: keeper of {channel!r}: {exc}; asking again")
                    await asyncio.sleep(0.1)
                    continue
            await self._keeper_found(channel)

    def _stored_as(self, channel: str, ref: str) -> Optional[dict[str, Any]]:
        """The offset and epoch of the publication ``ref`` if the stream held
        it when this node took ``channel`` over."""
        stored = self._stored.get(channel)
        offset = None if stored is None else stored.get(ref)
        if offset is None:
            return None
        return {"offset": offset, "epoch": core_history.channel_log(channel).epoch}

    def _number(self, channel: str, data: bytes, waiter: Any = None, ref: str = "") -> dict[str, Any]:
        offset, epoch, text = core.kept_publish(channel, data)
        writes = self._writing.get(channel)
        if writes is None:
            writes = self._writing[channel] = _Writes()
        size = (len(text) if text.isascii() else len(text.encode())) + 1
        batch = writes.waiting[-1] if writes.waiting else None
        if (batch is None or batch.first + len(batch.texts) != offset or batch.epoch != epoch
                or len(batch.texts) >= BATCH_MAX or batch.nbytes + size > self._batch_bytes):
            # (Another epoch, or offsets that do not follow: the channel was
            # dropped and taken over again while this batch waited.)
            batch = _Batch(offset, epoch)
            writes.waiting.append(batch)
        if ref and batch.refs is None:
            batch.refs = [""] * len(batch.texts)
        batch.texts.append(text)
        if batch.refs is not None:
            batch.refs.append(ref)
            batch.nbytes += len(ref) + 1
        batch.nbytes += size
        if waiter is not None:
            if batch.waiters is None:
                batch.waiters = []
            batch.waiters.append((offset, waiter))
        if writes.outstanding < WRITE_WINDOW:
            self._make_ready(channel)
        return {"offset": offset, "epoch": epoch}

    def _make_ready(self, channel: str) -> None:
        """``channel``'s waiting batches written at the loop's next turn."""
        if channel not in self._ready:
            self._ready.add(channel)
            if self._writer is None:
                self._writer = self._spawn(self._write())

    async def _write(self) -> None:
        """Every ready channel's waiting batches, as its window has room for
        them, one publish after the other without a pause (so nats-py sends
        them together, and in order), their acks awaited by callbacks."""
        try:
            while self._ready:
                ready, self._ready = self._ready, set()
                for channel in ready:
                    writes = self._writing.get(channel)
                    while writes is not None and writes.waiting and writes.outstanding < WRITE_WINDOW:
                        batch = writes.waiting.popleft()
                        writes.sent.append(batch)
                        writes.outstanding += 1
                        await self._publish(channel, writes, batch)
        finally:
            self._writer = None

    async def _publish(self, channel: str, writes: _Writes, batch: _Batch) -> None:
        try:
            # (No wait_stall: nats-py's window of outstanding acks has room
            # again as each is answered, or past WRITE_TIMEOUT cancelled.)
            headers = None if batch.refs is None else {REFS_HEADER: ",".join(batch.refs)}
            ack = await self._js.publish_async(subject(channel), "\n".join(batch.texts).encode(), stream=STREAM,
                                               headers=headers)
        except Exception as exc:  # the broker away or refusing: delivered all the same, counted
            self._write_failed(channel, batch, exc)
            self._written(channel, writes, batch)
            return
        # An ack that never comes would hold every later publication of the
        # channel: past WRITE_TIMEOUT the write counts as failed.
        timer = asyncio.get_running_loop().call_later(WRITE_TIMEOUT, ack.cancel)
        ack.add_done_callback(lambda done: self._acked(channel, writes, batch, timer, done))

    def _acked(self, channel: str, writes: _Writes, batch: _Batch, timer: asyncio.TimerHandle,
               ack: asyncio.Future[Any]) -> None:
        timer.cancel()
        if self._stopped:
            return  # the node is stopping: nothing more is delivered
        try:
            if ack.cancelled():
                self._write_failed(channel, batch, TimeoutError(f"no ack in {WRITE_TIMEOUT}s"))
            elif ack.exception() is not None:
                self._write_failed(channel, batch, ack.exception())
            self._written(channel, writes, batch)
        except Exception:
            node().counters.runtime_errors += 1
            log.exception("cluster history: delivering publications %d- of %r failed", batch.first, channel)

    def _written(self, channel: str, writes: _Writes, batch: _Batch) -> None:
        """``batch`` is written (or failed to be): delivered once every one
        before it is."""
        batch.written = True
        writes.outstanding -= 1
        sent = writes.sent
        while sent and sent[0].written:
            done = sent.popleft()
            core.deliver_kept(channel, done.first, done.texts)
            done.delivered()
        if writes.waiting:
            self._make_ready(channel)
        elif not sent and self._writing.get(channel) is writes:
            del self._writing[channel]

    def _write_failed(self, channel: str, batch: _Batch, exc: BaseException) -> None:
        node().counters.history_write_failures += 1
        last = batch.first + len(batch.texts) - 1
        _trouble.error("write", f"cluster history: publications {batch.first}-{last} of {channel!r} not stored: "
                                f"{exc!r}; delivered, and a keeper taking over later finds the gap")

    # -- the keeper's lease ---------------------------------------------------------

    def _find_keeper(self, channel: str) -> asyncio.Task[None]:
        task = self._claims.get(channel)
        if task is None:
            task = self._claims[channel] = asyncio.ensure_future(self._claim(channel))
            task.add_done_callback(lambda t: self._claimed(channel, t))
        return task

    async def _keeper_found(self, channel: str) -> None:
        """Until the claim of ``channel``'s lease is over (a claim that
        failed is logged by ``_claimed``; the caller looks again)."""
        try:
            await asyncio.shield(self._find_keeper(channel))
        except Exception:  # logged by _claimed
            await asyncio.sleep(0.5)

    def _claimed(self, channel: str, task: asyncio.Task[None]) -> None:
        self._claims.pop(channel, None)
        if not task.cancelled() and task.exception() is not None:
            _trouble.error("claim", f"cluster history: finding the keeper of {channel!r}: {task.exception()!r}")
            self._spawn(self._retry(channel))

    async def _retry(self, channel: str) -> None:
        await asyncio.sleep(0.5)
        if channel in self._queued:
            self._find_keeper(channel)

    async def _claim(self, channel: str) -> None:
        """This node keeps the channel, or knows who does; then what was
        published here meanwhile goes on, in order."""
        while not self._keeps(channel) and self._keeper_of(channel) is None:
            if process.whereis_global(lease(channel)) == self.pid or \
                    await process.register_global(lease(channel), self.pid):
                await self._take_over(channel)
                break
            # Another node won: our view of the names learns of it shortly.
            await asyncio.sleep(0.01)
        # From here on, without a pause: the claim is over, and what waited
        # for it goes on in the order it came.
        self._claims.pop(channel, None)
        queued = self._queued.pop(channel, [])
        for data in queued:
            if self._keeps(channel):
                self._number(channel, data)
            else:
                self._forward(self._keeper_of(channel), channel, data)
        for msg in self._deferred.pop(channel, []):
            self.on_message(msg)

    async def _take_over(self, channel: str) -> None:
        """The channel's Log, from its subject in the stream."""
        from ..channels import history_limits

        limits = history_limits(channel)
        size, ttl = limits if limits is not None else self._limits
        subj = subject(channel)
        try:
            last = await self._js.get_last_msg(STREAM, subj)
        except NotFoundError:
            core_history.adopt(channel, size, ttl, _new_epoch(), 0, [])
            self._stored.pop(channel, None)
            return
        top = orjson.loads(last.data.rpartition(b"\n")[2])
        stored: dict[str, int] = {}
        kept = await self._read(subj, last.seq, ttl, top["offset"], size, stored)
        core_history.adopt(channel, size, ttl, top["epoch"], top["offset"], kept)
        self._stored[channel] = stored
        log.info("cluster history: took over %r at offset %d (epoch %s)", channel, top["offset"], top["epoch"])

    async def _read(self, subj: str, last_seq: int, ttl: float, top: int,
                    size: int, stored: dict[str, int]) -> list[tuple[int, str, float]]:
        """[(offset, envelope, seconds left)] of the subject's publications
        within the TTL, oldest first: the last ``size`` of the contiguous run
        that ends at offset ``top`` (a write that failed left a gap: only
        what follows it recovers). ``stored`` is given the offsets of those
        of them that came with a publisher's reference."""
        # (offset of its first publication, how many it holds, its data,
        # seconds left, its references) of the last messages, as many as
        # hold ``size`` publications (the older ones cannot be in the Log).
        messages: deque[tuple[int, int, bytes, float, Optional[str]]] = deque()
        held = 0
        seq = 1
        now = datetime.datetime.now(datetime.timezone.utc)
        while seq <= last_seq:
            msg = await self._js.get_msg(STREAM, seq, subject=subj, next=True)
            seq = msg.seq + 1
            left = ttl - (now - msg.time).total_seconds() if msg.time is not None else ttl
            if left <= 0:
                continue
            data = msg.data
            count = data.count(b"\n") + 1
            first = orjson.loads(data.partition(b"\n")[0])["offset"]
            messages.append((first, count, data, left, (msg.headers or {}).get(REFS_HEADER)))
            held += count
            while held - messages[0][1] >= size:
                held -= messages.popleft()[1]
        kept: list[tuple[int, str, float]] = []
        end = top + 1  # the first offset after the run so far
        for first, count, data, left, refs in reversed(messages):
            if first + count != end:
                break  # a gap
            texts = data.decode().split("\n")
            kept.extend((first + i, texts[i], left) for i in range(count - 1, -1, -1))
            for i, ref in enumerate(refs.split(",") if refs else ()):
                if ref:
                    stored[ref] = first + i
            end = first
            if len(kept) >= size:
                break
        kept.reverse()
        return kept[-size:]

    # -- positions --------------------------------------------------------------

    def position(self, conn: Pid, channel: str, position: Optional[tuple[str, int]]) -> None:
        """A connection of this node subscribed to ``channel``: its position
        from the keeper, then ``core.recovered``."""
        answer = self._answers[(conn, channel)] = asyncio.get_running_loop().create_future()
        self._spawn(self._position(conn, channel, position, answer))

    async def subscription(self, conn: Pid, channel: str) -> Any:
        """The Subscription of ``conn`` to ``channel`` once the keeper has
        answered (None: not asked, or the connection left meanwhile)."""
        answer = self._answers.get((conn, channel))
        return None if answer is None else await asyncio.shield(answer)

    async def _position(self, conn: Pid, channel: str, position: Optional[tuple[str, int]],
                        answer: asyncio.Future[Any]) -> None:
        subscription = None
        try:
            subscription = await self._ask(conn, channel, position)
        finally:
            # (None too when asking failed: channels.subscribe must not wait forever.)
            if self._answers.get((conn, channel)) is answer:
                del self._answers[(conn, channel)]
            if not answer.done():
                answer.set_result(subscription)

    async def _ask(self, conn: Pid, channel: str, position: Optional[tuple[str, int]]) -> Any:
        asked = position is not None
        while True:
            if not core.holding(conn, channel):
                return None  # the connection left, or unsubscribed, meanwhile
            if self._keeps(channel):
                epoch, latest, missed = self.answer_position(channel, position)
                break
            keeper = self._keeper_of(channel)
            if keeper is None:
                await self._keeper_found(channel)
                continue
            try:
                epoch, latest, missed = await process.call(
                    keeper, POSITION, [channel, None if position is None else list(position)], ASK_TIMEOUT)
                break
            except (CallError, TimeoutError) as exc:
                _trouble.warning("position", f"cluster history: keeper of {channel!r}: {exc}; asking again")
                await asyncio.sleep(0.1)
        return core.recovered(conn, channel, epoch, latest, missed, asked)

    def answer_position(self, channel: str, position: Optional[Any]) -> tuple[str, int, Optional[list[str]]]:
        """(epoch, latest delivered offset, the publications after
        ``position`` or None) from this keeper's Log."""
        kept = core_history.channel_log(channel)
        if kept is None:
            raise LookupError(f"channel {channel!r} is not kept here")
        missed = None
        if position is not None:
            epoch, offset = position
            missed = kept.recovery(epoch, offset)
            if missed is not None and sum(len(text) for text in missed) > MAX_REPLY_BYTES:
                missed = None
        return kept.epoch, kept.delivered, missed

    # -- reads ------------------------------------------------------------------

    async def history(self, channel: str, since: Optional[int], limit: Optional[int]) -> dict[str, Any]:
        while True:
            kept = core_history.channel_log(channel)
            if kept is not None:
                return {"epoch": kept.epoch, "offset": kept.delivered,
                        "publications": kept.publications(since, limit)}
            keeper = self._keeper_of(channel)
            if keeper is None:
                await self._keeper_found(channel)
                continue
            try:
                return await process.call(keeper, READ, [channel, since, limit], ASK_TIMEOUT)
            except (CallError, TimeoutError) as exc:
                _trouble.warning("read", f"cluster history: keeper of {channel!r}: {exc}; asking again")
                await asyncio.sleep(0.1)

    # -- what the keeper process is sent ------------------------------------------------

    def on_message(self, msg: Any) -> None:
        topic, payload = msg.topic, msg.payload
        try:
            channel = payload[0]
            if channel in self._claims:
                self._deferred.setdefault(channel, []).append(msg)
                return
            if not self._keeps(channel):
                # The lease moved (or never was ours): the asker finds the keeper again.
                raise LookupError(f"channel {channel!r} is not kept on this node")
            if topic == PUBLISH:
                # Answered once the publication is stored and delivered; one
                # its publisher asks for again (its keeper was lost before
                # answering) with what the stream holds of it.
                ref = payload[2] if len(payload) > 2 else ""
                stored = self._stored_as(channel, ref) if ref else None
                if stored is not None:
                    msg.reply(stored)
                    return
                self._number(channel, payload[1].encode(), msg, ref)
                return
            elif topic == POSITION:
                result = list(self.answer_position(channel, payload[1]))
            elif topic == READ:
                kept = core_history.channel_log(channel)
                result = {"epoch": kept.epoch, "offset": kept.delivered,
                          "publications": kept.publications(payload[1], payload[2])}
            else:
                raise ValueError(f"unknown topic {topic!r}")
        except (LookupError, ValueError, TypeError, IndexError) as exc:
            _trouble.warning("request", f"cluster history: {topic} from {msg.sender}: {exc}")
            return  # the caller times out and asks again
        msg.reply(result)


async def _keeper_process(keeper: HistoryKeeper) -> None:
    """The process other nodes send publications and questions to. It holds
    every lease of this node: a bug in one answer is logged, and the
    process goes on, rather than release every channel this node keeps."""
    async for msg in process.inbox():
        try:
            keeper.on_message(msg)
        except Exception:
            node().counters.runtime_errors += 1
            log.exception("cluster history: %s from %s failed", msg.topic, msg.sender)


def _new_epoch() -> str:
    from secrets import token_hex

    return token_hex(4)


def limits_of_app(namespaces: list[Any]) -> Optional[tuple[int, float]]:
    """The stream's limits for an app's namespaces: the largest history_size
    and history_ttl of those with history (each channel's Log applies its
    own); None when none has history."""
    sizes = [(ns.history_size, ns.history_ttl) for ns in namespaces if ns.history_size > 0 and ns.history_ttl > 0]
    if not sizes:
        return None
    return max(size for size, _ in sizes), max(ttl for _, ttl in sizes)


async def start_history(transport: Any, namespaces: list[Any]) -> Optional[HistoryKeeper]:
    """This node's HistoryKeeper on the transport's JetStream, when the app
    has channels with history."""
    limits = limits_of_app(namespaces)
    if limits is None:
        return None
    keeper = HistoryKeeper(transport, limits)
    await keeper.start()
    return keeper
