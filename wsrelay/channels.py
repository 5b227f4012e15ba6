"""Channels: named fan-out any process can publish to (docs/guide.md, "Channels").

The compiled core (``_core/channels.pyx``) holds this node's channel table,
its view of the other nodes' subscribers, and does the fan-out; this module
names its functions and asks another node what only it can do: subscribe
one of its connections, close them. Calls made outside any process act as
the node's system process. Namespaces (per-channel options from the
configuration file) are looked up with ``namespace_of``; those with
``history_size`` and ``history_ttl`` give their channels a history
(``_core/history.pyx``, read with ``history``). Presence (``presence``,
``presence_stats``) is answered by this node alone: every node holds every
node's entries (``_core/presence.pyx``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Optional, Union

import orjson

from ._core.channels import (
    Subscription,
    active,
    check_close,
    disconnect_here,
    publish,
    raise_answer,
    subscribers,
)
from ._core.channels import history as _history
from ._core.channels import subscribe as _subscribe
from ._core.channels import unsubscribe as _unsubscribe
from ._core.history import current_keeper, set_policy
from ._core.pid import Pid
from ._core.presence import entries as _presence_entries
from ._core.presence import stats as _presence_stats
from ._core.relayspec import check_channel_name
from ._core.runtime import node as get_node
from ._core.stats import LimitedLog

__all__ = [
    "Subscription",
    "active",
    "check_channel_name",
    "disconnect",
    "history",
    "namespace_of",
    "presence",
    "presence_stats",
    "publish",
    "publish_numbered",
    "subscribe",
    "subscribers",
    "unsubscribe",
]

_log = LimitedLog("wsrelay.channels")
# Requests to other nodes that nobody awaits (an unsubscribe), kept until done.
_pending: set[asyncio.Task[Any]] = set()


def _elsewhere(pid: Union[Pid, str]) -> tuple[Optional[Any], Pid]:
    """(this node's cluster side, the PID) when ``pid`` is another node's;
    (None, the PID) when it is this node's."""
    if isinstance(pid, Pid):
        parsed = pid
    elif isinstance(pid, str):
        parsed = Pid.parse(pid)
    else:
        raise TypeError(f"expected a connection's Pid or its text form, got {type(pid).__name__}")
    node = get_node()
    if parsed.node == node.name or node.remote is None:
        return None, parsed
    return node.remote, parsed


async def subscribe(conn_pid: Union[Pid, str], name: str, info: Optional[dict[str, Any]] = None) -> Subscription:
    """Subscribe the connection ``conn_pid``, of any node, to channel
    ``name``; its client then receives the channel's publications.
    ValueError for a bad name or info, a process that is not a connection or
    one at its limit of channels; ProcessLookupError when it has ended or
    its node did not answer."""
    remote, pid = _elsewhere(conn_pid)
    if remote is None:
        subscription = _subscribe(pid, name, info)
        keeper = current_keeper()
        if keeper is not None and subscription.epoch is None:
            # In a cluster a channel with history has its position from its keeper.
            answered = await keeper.subscription(pid, subscription.channel)
            if answered is not None:
                return answered
        return subscription
    checked = check_channel_name(name)
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"channels.subscribe: info must be a dict, got {type(info).__name__}")
    raise_answer(await remote.channel_request(pid.node, ["subscribe", str(pid), checked, info]), pid.node)
    return Subscription(checked)


def unsubscribe(conn_pid: Union[Pid, str], name: str) -> bool:
    """Take the connection ``conn_pid`` out of channel ``name``; its client
    gets an ``unsubscribed`` event. This node's: False when it was not in it
    (or has ended). Another node's: that node is asked, and True is returned
    at once (what it answers is logged when it is an error)."""
    remote, pid = _elsewhere(conn_pid)
    if remote is None:
        return _unsubscribe(pid, name)
    checked = check_channel_name(name)
    task = asyncio.ensure_future(_ask(remote, pid, ["unsubscribe", str(pid), checked]))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return True


async def _ask(remote: Any, pid: Pid, args: list[Any]) -> None:
    try:
        raise_answer(await remote.channel_request(pid.node, args), pid.node)
    except (ValueError, ProcessLookupError) as exc:
        _log.warning(args[0], f"channels.{args[0]}({pid}): {exc}")


async def disconnect(*, client: Union[Pid, str, None] = None, user: Optional[str] = None, code: int = 1000,
                     reason: str = "") -> int:
    """Close the connection ``client`` (of any node), or every connection of
    ``user`` on every node, with ``code`` and ``reason``; how many were
    open. ValueError for a bad code or reason, or not exactly one of
    ``client`` and ``user``. A node that does not answer in time counts
    none (and is logged)."""
    if (client is None) == (user is None):
        raise ValueError("channels.disconnect: give client or user (one of them)")
    if user is not None and type(user) is not str:
        raise ValueError(f"channels.disconnect: user must be a str, got {type(user).__name__}")
    close = check_close(code, reason)
    if client is not None:
        remote, pid = _elsewhere(client)
        if remote is None:
            return disconnect_here(pid, None, close)
        return raise_answer(await remote.channel_request(pid.node, ["disconnect", str(pid), None, close]), pid.node)
    closed = disconnect_here(None, user, close)
    remote = get_node().remote
    if remote is not None:
        nodes = remote.up_nodes()
        answers = await asyncio.gather(*(remote.channel_request(n, ["disconnect", None, user, close]) for n in nodes))
        for node, answer in zip(nodes, answers):
            try:
                closed += raise_answer(answer, node)
            except (ValueError, ProcessLookupError) as exc:
                _log.warning("disconnect", f"channels.disconnect(user={user!r}) on node {node}: {exc}")
    return closed


async def presence(name: str) -> dict[str, list[dict[str, Any]]]:
    """``{"presence": [entry, ...]}``: every subscription of channel
    ``name`` on every node, each ``{"client": <connection PID text>,
    "user": <its user or None>, "info": <its info or {}>}``. ValueError
    for a bad name, or a channel whose namespace has no ``presence: true``.
    (A coroutine, so that a caller's code stays the same should the answer
    ever need to be asked of other nodes.)"""
    return _presence_entries(name)


async def presence_stats(name: str) -> dict[str, int]:
    """``{"clients": n, "users": m}``: channel ``name``'s subscriptions on
    every node and their distinct users (several connections of one user
    count once). ValueError as for ``presence``."""
    return _presence_stats(name)


def namespace_of(name: str) -> Optional[dict[str, Any]]:
    """The options of the first ``channel.namespace`` of the loaded app
    whose pattern matches ``name`` (None: no match, the defaults)."""
    from .app import current_namespaces

    check_channel_name(name)
    for namespace in current_namespaces():
        if namespace.matches(name):
            return namespace.options()
    return None



async def history(name: str, since: Optional[int] = None, limit: Optional[int] = None) -> dict[str, Any]:
    """The publications of channel ``name`` that its history keeps, oldest
    first (docs/guide.md, "History and recovery"): ``{"epoch", "offset":
    <latest>, "publications": [{"offset", "epoch", "data"}, ...]}``, those
    after ``since``, the first ``limit`` of them. In a cluster, asked of the
    channel's keeper, on whichever node. ValueError for a channel without
    history or a bad ``since``/``limit``."""
    keeper = current_keeper()
    if keeper is None:
        return _history(name, since, limit)
    checked = check_channel_name(name)
    for field, value in (("since", since), ("limit", limit)):
        if value is not None and (type(value) is not int or value < 0):
            raise ValueError(f"channels.history: {field} must be a whole number, 0 or more, got {value!r}")
    if history_limits(checked) is None:
        return _history(checked, since, limit)  # raises: no history
    return await keeper.history(checked, since, limit)


async def publish_numbered(name: str, data: Any) -> dict[str, Any]:
    """``publish``, returning the publication's ``offset`` and ``epoch`` on
    a channel with history on any node: in a cluster, once the channel's
    keeper has numbered it (``publish`` answers ``{}`` on a node that does
    not keep the channel, rather than wait)."""
    outcome = numbered(name, data)
    return outcome if isinstance(outcome, dict) else await outcome


def numbered(name: str, data: Any) -> Union[dict[str, Any], Awaitable[dict[str, Any]]]:
    """``publish_numbered``'s answer, at once (a dict) unless the channel's
    keeper must number the publication first (an awaitable of it): the
    server API answers most publications without a task of their own."""
    keeper = current_keeper()
    checked = check_channel_name(name)
    if keeper is None or history_limits(checked) is None:
        return publish(checked, data)
    try:
        encoded = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"channels.publish({name!r}): data is not JSON-serialisable: {exc}") from None
    get_node().counters.channel_publications += 1
    return keeper.publish_stored(checked, encoded)


def history_limits(name: str) -> Optional[tuple[int, float]]:
    """(history_size, history_ttl) of channel ``name`` when its namespace
    gives it a history (both over 0), else None."""
    from .app import current_namespaces

    for namespace in current_namespaces():
        if namespace.matches(name):
            if namespace.history_size > 0 and namespace.history_ttl > 0:
                return namespace.history_size, namespace.history_ttl
            return None
    return None


set_policy(history_limits)
