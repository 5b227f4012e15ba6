"""Cluster-wide names in a JetStream key-value bucket.

A name is claimed by an atomic create; every node keeps a local view of the
bucket current with a watch, so a lookup is a dictionary read. A name is
released when its process ends (the core calls ``release``) or when its node
is lost (every node that sees the loss deletes the lost node's names; the
deletes are conditional on the revision, so only one of them takes effect).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Awaitable, Callable, Optional

from nats.js.errors import APIError, BadRequestError, KeyWrongLastSequenceError

from .._core.pid import Pid
from .codec import decode, encode

log = logging.getLogger("wsrelay.cluster")

BUCKET = "wsrelay_names"
# JetStream's "wrong last sequence" error codes: a conditional write lost a race.
_WRONG_LAST_SEQUENCE = (10071, 10164)

# (node, incarnation) -> True (alive), False (dead) or None (unknown to us).
Liveness = Callable[[str, int], Optional[bool]]


def _key(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("a global name must be a non-empty str")
    # KV keys allow [-/_=.a-zA-Z0-9]: any name, in base64url without padding.
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def _name(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


class _Holder:
    __slots__ = ("pid", "incarnation", "revision")

    def __init__(self, pid: Pid, incarnation: int, revision: int) -> None:
        self.pid = pid
        self.incarnation = incarnation
        self.revision = revision


async def bucket(js: Any, name: str, ttl: Optional[float] = None) -> Any:
    """The key-value bucket ``name`` (its entries kept ``ttl`` seconds, for
    ever without), made if it is missing. A bucket that exists already is
    used as it is: the server may refuse to "create" it again (seen with
    nats-server 2.9 as "subjects overlap with an existing stream", the
    options nats-py asks for differing from those it stored)."""
    try:
        return await js.create_key_value(bucket=name, history=1, ttl=ttl)
    except BadRequestError:
        return await js.key_value(name)


class GlobalNames:
    def __init__(self, js: Any, node: str, incarnation: int, alive: Liveness,
                 probe: Callable[[str, int], Awaitable[bool]]) -> None:
        self._js = js
        self._node = node
        self._incarnation = incarnation
        self._alive = alive
        self._probe = probe
        self._kv: Any = None
        self._view: dict[str, _Holder] = {}
        self._watcher: Any = None
        self._watch_task: Optional[asyncio.Task[None]] = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._kv = await bucket(self._js, BUCKET)
        await self.rewatch()
        # Names of our own earlier incarnations are dead: nobody else may have
        # seen that incarnation go.
        for name, holder in list(self._view.items()):
            if holder.pid.node == self._node and holder.incarnation != self._incarnation:
                self._delete(name, holder.revision)

    async def rewatch(self) -> None:
        """(Re)start the watch and rebuild the view from the bucket; returns
        once the view holds every current entry (after a broker restart the
        old watch's consumer may be gone)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            await self._stop_watcher()
        self._watcher = await self._kv.watchall()
        view: dict[str, _Holder] = {}
        while True:
            entry = await self._watcher.updates(timeout=10.0)
            if entry is None:
                break
            self._apply(view, entry)
        self._view = view
        self._watch_task = asyncio.ensure_future(self._follow(self._watcher))

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(self._view, entry)

    def _apply(self, view: dict[str, _Holder], entry: Any) -> None:
        try:
            name = _name(entry.key)
        except ValueError:
            log.warning("global names: ignoring the foreign key %r", entry.key)
            return
        if entry.operation in ("DEL", "PURGE"):
            view.pop(name, None)
            return
        try:
            text, incarnation = decode(entry.value)
            view[name] = _Holder(Pid.parse(text), int(incarnation), entry.revision)
        except (ValueError, TypeError):
            log.warning("global names: ignoring the malformed value of %r", name)

    async def _stop_watcher(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            try:
                await watcher.stop()
            except Exception as exc:  # the connection may be closed or reconnecting
                log.debug("global names: stopping the watch: %s", exc)

    async def stop(self) -> None:
        """Release our names and stop watching."""
        for name, holder in list(self._view.items()):
            if holder.pid.node == self._node and holder.incarnation == self._incarnation:
                self._delete(name, holder.revision)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self._stop_watcher()

    # -- the API -----------------------------------------------------------------

    async def register(self, name: str, pid: Pid) -> bool:
        key = _key(name)
        value = encode([str(pid), self._incarnation])
        try:
            revision = await self._kv.create(key, value)
        except KeyWrongLastSequenceError:
            entry = await self._kv.get(key)
            text, incarnation = decode(entry.value)
            holder = Pid.parse(text)
            if holder == pid:
                return True
            if await self._holder_alive(holder, int(incarnation)):
                return False
            try:
                revision = await self._kv.update(key, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                return False  # another node replaced the dead holder first
        self._view[name] = _Holder(pid, self._incarnation, revision)
        return True

    async def _holder_alive(self, holder: Pid, incarnation: int) -> bool:
        node = holder.node or ""
        if node == self._node:
            return incarnation == self._incarnation
        known = self._alive(node, incarnation)
        if known is not None:
            return known
        return await self._probe(node, incarnation)

    def whereis(self, name: str) -> Optional[Pid]:
        holder = self._view.get(name)
        if holder is None:
            return None
        node = holder.pid.node or ""
        if node == self._node:
            return holder.pid if holder.incarnation == self._incarnation else None
        return None if self._alive(node, holder.incarnation) is False else holder.pid

    def names(self) -> dict[str, Pid]:
        return {name: h.pid for name, h in self._view.items()}

    def release(self, pid: Pid) -> None:
        for name, holder in list(self._view.items()):
            if holder.pid == pid:
                del self._view[name]
                self._delete(name, holder.revision)

    def node_lost(self, node: str, incarnation: int) -> None:
        for name, holder in list(self._view.items()):
            if holder.pid.node == node and holder.incarnation == incarnation:
                self._delete(name, holder.revision)

    def _delete(self, name: str, revision: int) -> None:
        task = asyncio.ensure_future(self._delete_now(name, revision))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_now(self, name: str, revision: int) -> None:
        try:
            await self._kv.delete(_key(name), last=revision)
        except APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                log.warning("global names: could not release %r: %s", name, exc)
            # else: changed since; another node deleted or re-claimed it
        except Exception as exc:
            log.warning("global names: could not release %r: %s", name, exc)
