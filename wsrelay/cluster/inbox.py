"""What arrives on our inbox: each batch checked, accepted (or not) by its
peer's session (wsrelay.cluster.peers), and its records delivered in order to
the core's hooks, a record that came in fragments once it is whole.

Reassembly stays in the dispatch loop: a call of its own per record would
cost every record, fragmented or not.
"""

from __future__ import annotations

from typing import Any

from .._core.pid import Pid, PidCache
from . import wire
from .bus import Bus
from .codec import decode
from .hooks import Hooks
from .peers import Peer, Peers
from .stats import Counters, Trouble


class Inbox:
    def __init__(self, bus: Bus, peers: Peers, counters: Counters, trouble: Trouble) -> None:
        self._bus = bus
        self._peers = peers
        self._counters = counters
        self._trouble = trouble
        # PIDs parsed from their text, for the next records naming them.
        self._pids = PidCache()

    async def on_batch_msg(self, msg: Any) -> None:
        self.receive(msg.data)

    def receive(self, data: bytes) -> None:
        c = self._counters
        bus = self._bus
        try:
            header, items = wire.parse_batch(data)
            if header.destination != bus.node:
                raise wire.Malformed(f"addressed to node {header.destination!r}")
        except wire.Malformed as exc:
            self._trouble.malformed(f"batch dropped: {exc}")
            return
        c.batches_in += 1
        c.bytes_in += len(data)
        count = len(items) - 1
        peers = self._peers
        if header.destination_incarnation != bus.incarnation or peers.leaving:
            # Meant for our predecessor (its PIDs are dead), or arriving as we
            # leave (our core is shutting down).
            c.undeliverable += count
            return
        peer = peers.accept(header)
        if peer is None:
            c.undeliverable += count
            return
        peer.in_records += count
        c.messages_in += count
        if count:
            self._dispatch(peer, items)
        if header.flags & wire.FLAG_BYE:
            peers.gone(peer)

    def _dispatch(self, peer: Peer, items: list[Any]) -> None:
        hooks = self._peers.hooks
        if hooks is None:
            self._counters.undeliverable += len(items) - 1
            return
        pids = self._pids
        on_send = hooks.on_send
        i = 1
        try:
            for i in range(1, len(items)):
                record = items[i]
                if record[0] == wire.SEND:
                    _, dest_id, dest_host, sender_text, topic, payload = record
                    if type(dest_id) is not int or type(dest_host) is not str:
                        raise wire.Malformed("a send's destination must be an int and a str")
                    sender = pids.get(sender_text)
                    if sender is None:
                        sender = self._pid(sender_text)
                    try:
                        on_send(dest_id, dest_host, topic, payload, sender)
                    except Exception:
                        self._trouble.hook_failed("on_send")
                else:
                    self._dispatch_other(peer, hooks, record)
        except (wire.Malformed, ValueError, TypeError, IndexError) as exc:
            # Records after this one would be delivered with one missing:
            # the stream is broken, as after a gap.
            self._trouble.malformed(f"batch from {peer.node} dropped at a malformed record: {exc}")
            self._counters.undeliverable += len(items) - i
            self._peers.reset(peer)

    def _dispatch_other(self, peer: Peer, hooks: Hooks, record: list[Any]) -> None:
        kind = record[0]
        if kind == wire.SIGNAL:
            _, signal_kind, dest_text, src_text, reason = record
            if type(signal_kind) is not int or not 1 <= signal_kind <= len(wire.SIGNAL_KINDS):
                raise wire.Malformed(f"unknown signal kind {signal_kind!r}")
            dest, src = self._pid(dest_text), self._pid(src_text)
            self._hook(hooks.on_signal, signal_kind, dest, src, reason)
        elif kind == wire.CALL:
            _, dest_id, dest_host, sender_text, topic, payload, reply_text = record
            if type(dest_id) is not int or type(dest_host) is not str:
                raise wire.Malformed("a call's destination must be an int and a str")
            sender, reply_to = self._pid(sender_text), self._pid(reply_text)
            self._hook(hooks.on_call, dest_id, dest_host, topic, payload, sender, reply_to)
        elif kind == wire.FRAMES:
            _, conn_ids, frame = record
            if type(conn_ids) is not list or type(frame) is not bytes:
                raise wire.Malformed("frames must be a list of ids and bytes")
            self._hook(hooks.on_frames, conn_ids, frame)
        elif kind == wire.PUBLISH:
            _, channel, envelope = record
            if type(channel) is not str or type(envelope) is not str:
                raise wire.Malformed("a publication must be a channel name and its text")
            self._hook(hooks.on_publication, channel, envelope)
        elif kind == wire.INTEREST:
            _, changes = record
            if type(changes) is not list:
                raise wire.Malformed("interest must be a list of [channel, count]")
            self._hook(hooks.on_interest, peer.node, changes)
        elif kind == wire.PRESENCE:
            _, snapshot, changes = record
            if type(snapshot) is not bool or type(changes) is not list:
                raise wire.Malformed("presence must be a flag and a list of [channel, joins, leaves]")
            self._hook(hooks.on_presence, peer.node, snapshot, changes)
        elif kind == wire.FRAGMENT:
            _, chunk, last = record
            if type(chunk) is not bytes:
                raise wire.Malformed("a fragment must be bytes")
            peer.fragments.append(chunk)
            if last:
                whole, peer.fragments = b"".join(peer.fragments), []
                self._dispatch(peer, [None, decode(whole)])
        else:
            raise wire.Malformed(f"unknown record kind {kind!r}")

    def _hook(self, hook: Any, *args: Any) -> None:
        """``hook(*args)``; one that raises is counted and logged, and the
        records after it are delivered all the same."""
        try:
            hook(*args)
        except Exception:
            self._trouble.hook_failed(hook.__name__)

    def _pid(self, text: str) -> Pid:
        pid = self._pids.get(text)
        if pid is None:
            if type(text) is not str:
                raise wire.Malformed("a PID must be text")
            pid = self._pids.put(text, Pid.parse(text))
        return pid
