"""Liveness: every node publishes a heartbeat each ``down_after / 4`` seconds
(at most 1 s), and sends an empty batch to each peer it sent nothing to since
the last heartbeat, so a lost last batch still shows as a gap. What arrives
on the heartbeat subject (others' heartbeats, a supervisor's notice that a
worker died) moves the peers' state machine (wsrelay.cluster.peers).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

import nats

from . import wire
from .bus import Bus
from .peers import DOWN, Peer, Peers
from .stats import Trouble


class Heartbeat:
    def __init__(self, bus: Bus, machine: str, interval: float, peers: Peers, schedule: Callable[[Peer], None],
                 trouble: Trouble) -> None:
        self._bus = bus
        self._machine = machine
        self._interval = interval
        self._peers = peers
        self._schedule = schedule
        self._trouble = trouble

    async def run(self) -> None:
        bus = self._bus
        beat = wire.heartbeat(bus.node, bus.incarnation, self._machine, os.getpid())
        while True:
            try:
                await bus.nc.publish(wire.HEARTBEAT_SUBJECT, beat)
            except nats.errors.Error as exc:
                self._trouble.warning("heartbeat", f"cluster: cannot publish a heartbeat: {exc}")
            for peer in self._peers.by_node.values():
                if peer.state != DOWN and not peer.sent:
                    self._schedule(peer)
                peer.sent = False
            await asyncio.sleep(self._interval)

    async def on_notice_msg(self, msg: Any) -> None:
        try:
            notice = wire.parse_notice(msg.data)
        except wire.Malformed as exc:
            self._trouble.malformed(f"notice dropped: {exc}")
            return
        if notice[0] == wire.HB:
            _, node, incarnation, machine, os_pid = notice
            if node == self._bus.node:
                if incarnation != self._bus.incarnation:
                    self._trouble.warning("twin", f"cluster: another process (pid {os_pid}, incarnation "
                                          f"{incarnation}) uses our node name {node}")
                return
            self._peers.heard(node, incarnation, machine)
        else:
            _, node, incarnation = notice
            self._peers.announced_dead(node, incarnation)
