"""The other nodes, and the one state machine of each: sessions and states.

Batches of the stream A -> B are numbered within a *session* (both
directions of a pair share the session number): a gap in the numbers means
messages were lost, so B treats A as lost (``on_node_down`` with
``noconnection``) and opens the next session; A, seeing the new session,
treats B as lost too (each side may hold monitors and links the other has
dropped), and both come up again in it. A peer's state is one of

    JOINING   we opened a session and wait for its first batch in it
    UP        both directions of the session are live (sends are accepted)
    DOWN      lost: silent for ``down_after``, gone (BYE), announced dead by
              its supervisor, or replaced by a new incarnation

and ``Peers._set_state`` is the one place where it changes and where the
core hears of it.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from .._core.vocab import NOCONNECTION
from . import wire
from .hooks import Hooks
from .names import GlobalNames
from .stats import Counters, Trouble, log

JOINING = "joining"
UP = "up"
DOWN = "down"


# At most this often, a batch of the new session to a peer still sending in
# the old one.
_NUDGE_INTERVAL = 0.05


class Peer:
    """One other node: its state and session, and (for the publisher) what
    is queued for it."""

    __slots__ = ("node", "incarnation", "state", "session", "out_seq", "in_seq", "out_records", "in_records",
                 "subject", "records", "size",
                 "flags", "queued", "sent", "last_heard", "nudged", "timer", "machine", "dead_incarnation",
                 "fragments")

    def __init__(self, node: str, incarnation: int) -> None:
        self.node = node
        self.incarnation = incarnation
        self.state = DOWN
        self.session = 0
        self.out_seq = 0
        self.in_seq = 1
        # Records sent and received in the session.
        self.out_records = 0
        self.in_records = 0
        self.subject = wire.inbox_subject(node)
        self.records: list[bytes] = []
        self.size = 0
        self.flags = 0
        self.queued = False
        self.sent = False
        self.last_heard = 0.0
        self.nudged = 0.0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.machine = ""
        # An incarnation known to be dead (goodbye, or its supervisor said so)
        # whose last heartbeats may still be on their way.
        self.dead_incarnation = 0
        self.fragments: list[bytes] = []


class Peers:
    """Every node heard of (``by_node``), moved from state to state by what
    arrives from it, its silence, and our leaving.

    ``schedule`` has the publisher send a peer a batch in this loop
    iteration. Transport.start sets ``loop`` and ``names``; ``hooks`` is the
    core once attached; ``leaving`` is set by Transport.stop.
    """

    def __init__(self, down_after: float, counters: Counters, trouble: Trouble,
                 schedule: Callable[[Peer], None]) -> None:
        self.by_node: dict[str, Peer] = {}
        self.down_after = down_after
        self.hooks: Optional[Hooks] = None
        self.names: Optional[GlobalNames] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.leaving = False
        self._counters = counters
        self._trouble = trouble
        self._schedule = schedule

    # -- what moves a peer -------------------------------------------------------------

    def heard(self, node: str, incarnation: int, machine: str) -> None:
        """A heartbeat of ``node``: it is alive; a peer we held lost is
        offered a new session."""
        peer = self.by_node.get(node)
        if peer is None:
            peer = self.by_node[node] = Peer(node, incarnation)
        elif incarnation != peer.incarnation:
            if incarnation < peer.incarnation:
                return
            self._new_incarnation(peer, incarnation)
        if incarnation == peer.dead_incarnation:
            return
        peer.machine = machine
        peer.last_heard = self.loop.time()  # type: ignore[union-attr]
        if peer.state == DOWN and not self.leaving:
            self._open_session(peer, peer.session + 1)
            self._set_state(peer, JOINING)

    def announced_dead(self, node: str, incarnation: int) -> None:
        """The supervisor of ``node`` says this incarnation of it died."""
        peer = self.by_node.get(node)
        if peer is not None and peer.incarnation == incarnation:
            self.gone(peer)

    def gone(self, peer: Peer) -> None:
        """``peer``'s incarnation is gone for good (it said goodbye, or was
        announced dead): lost, and its last heartbeats, still on their way,
        do not bring it back."""
        peer.dead_incarnation = peer.incarnation
        self._set_state(peer, DOWN)

    def accept(self, h: wire.Header) -> Optional[Peer]:
        """The peer whose records these are, when they belong to its live
        session; None (and the session machinery moved on) otherwise."""
        peer = self.by_node.get(h.source)
        if peer is None:
            peer = self.by_node[h.source] = Peer(h.source, h.source_incarnation)
        elif h.source_incarnation != peer.incarnation:
            if h.source_incarnation < peer.incarnation:
                return None  # from a predecessor of the peer we know
            self._new_incarnation(peer, h.source_incarnation)
        now = peer.last_heard = self.loop.time()  # type: ignore[union-attr]
        if h.session < peer.session:
            # A session that has since been replaced. If we are waiting for
            # the peer in the new one, it has not heard of it (our first batch
            # was lost, as when the bus restarts): tell it again now, rather
            # than at the next heartbeat, while its messages are being dropped.
            if peer.state == JOINING and now - peer.nudged >= _NUDGE_INTERVAL:
                peer.nudged = now
                self._schedule(peer)
            return None
        if h.session > peer.session:
            # The peer opened a session (first contact, or after a gap it
            # saw): what both of us held about the other is gone.
            if peer.state == UP:
                self._set_state(peer, DOWN)
            self._open_session(peer, h.session)
            if h.seq != 1:
                # Its first batches in the session were lost.
                self._counters.undeliverable += h.sent
                self.reset(peer)
                return None
            peer.in_seq = 2
            self._set_state(peer, UP)
            return peer
        if peer.state == DOWN:
            return None
        if h.seq != peer.in_seq:
            self._counters.undeliverable += max(0, h.sent - peer.in_records)
            self.reset(peer)
            return None
        peer.in_seq += 1
        if peer.state == JOINING:
            self._set_state(peer, UP)
        return peer

    def reset(self, peer: Peer) -> None:
        """The stream from ``peer`` broke: it is lost; open the next session."""
        self._counters.stream_resets += 1
        self._trouble.warning("reset", f"cluster: stream from {peer.node} broke (session {peer.session}): "
                              "restarting it")
        if peer.state == UP:
            self._set_state(peer, DOWN)
        self._open_session(peer, peer.session + 1)
        self._set_state(peer, JOINING)

    def all_down(self) -> None:
        """We left the cluster: we can reach none of its PIDs, so the core's
        monitors and links of them end as for a lost node."""
        for peer in self.by_node.values():
            self._set_state(peer, DOWN)

    # -- what the names ask -------------------------------------------------------------

    def alive(self, node: str, incarnation: int) -> Optional[bool]:
        peer = self.by_node.get(node)
        if peer is None or peer.incarnation < incarnation:
            return None
        return peer.incarnation == incarnation and peer.state != DOWN

    # -- sessions and states ------------------------------------------------------------

    def _new_incarnation(self, peer: Peer, incarnation: int) -> None:
        if peer.state != DOWN:
            self._set_state(peer, DOWN)
        peer.incarnation = incarnation
        peer.session = 0
        peer.dead_incarnation = 0

    def _open_session(self, peer: Peer, session: int) -> None:
        """Number ``session`` for the pair, both directions from the start.
        Records queued in the old one are dropped: their destination has
        already been told the sender's node was lost."""
        self._counters.undeliverable += len(peer.records)
        peer.records, peer.size = [], 0
        peer.fragments = []
        peer.session = session
        peer.out_seq = 0
        peer.in_seq = 1
        peer.out_records = 0
        peer.in_records = 0
        # Our first batch in it, at once, even empty: the peer comes up on it.
        self._schedule(peer)

    def _set_state(self, peer: Peer, state: str) -> None:
        """Every change of a peer's state, and the core's view of it."""
        old = peer.state
        if old == state:
            return
        peer.state = state
        if state == DOWN:
            if peer.timer is not None:
                peer.timer.cancel()
                peer.timer = None
            self._counters.undeliverable += len(peer.records)
            peer.records, peer.size, peer.fragments = [], 0, []
        elif peer.timer is None:
            self._watch_silence(peer)
        if old == UP:
            self._counters.node_down_events += 1
            log.info("cluster: node %s (incarnation %d) is down", peer.node, peer.incarnation)
            if self.names is not None and not self.leaving:
                # (When we are the one leaving, its names are still its own.)
                self.names.node_lost(peer.node, peer.incarnation)
            if self.hooks is not None:
                try:
                    self.hooks.on_node_down(peer.node, peer.incarnation, NOCONNECTION)
                except Exception:
                    self._trouble.hook_failed("on_node_down")
        if state == UP:
            self._counters.node_up_events += 1
            log.info("cluster: node %s (incarnation %d) is up", peer.node, peer.incarnation)
            if self.hooks is not None:
                try:
                    self.hooks.on_node_up(peer.node, peer.incarnation)
                except Exception:
                    self._trouble.hook_failed("on_node_up")

    def _watch_silence(self, peer: Peer) -> None:
        loop = self.loop
        assert loop is not None
        if peer.last_heard == 0.0:
            peer.last_heard = loop.time()
        peer.timer = loop.call_at(peer.last_heard + self.down_after, self._check_silence, peer)

    def _check_silence(self, peer: Peer) -> None:
        peer.timer = None
        if peer.state == DOWN:
            return
        assert self.loop is not None
        if self.loop.time() >= peer.last_heard + self.down_after:
            log.info("cluster: nothing from %s for %s s", peer.node, self.down_after)
            self._set_state(peer, DOWN)
        else:
            self._watch_silence(peer)
