"""This node's place on the bus: the NATS connection, and the incarnation
chosen at start.

An incarnation is strictly greater than the previous ones of the same node
name (a JetStream counter), so a restarted node is a new peer and its
predecessor's PIDs are dead.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any, Awaitable, Callable, Optional, Sequence, Union

import nats
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from .._core.stats import LimitedLog
from .errors import ClusterConnectError
from .names import bucket
from .stats import log

# Incarnations start from the seconds since 2024-01-01, so that even a bus
# without the counter's history (a new private broker) gives a restarted node
# a number above its predecessor's.
_INCARNATION_EPOCH = 1704067200
_NODES_BUCKET = "wsrelay_nodes"


class Bus:
    """Who we are on the bus, and our client of it: ``nc`` and
    ``incarnation`` are set once, by Transport.start."""

    __slots__ = ("node", "incarnation", "nc")

    def __init__(self, node: str) -> None:
        self.node = node
        self.incarnation = 0
        self.nc: Any = None


def display_urls(servers: Union[str, Sequence[str]]) -> str:
    """The server URLs without any user, password or token in them."""
    urls = [servers] if isinstance(servers, str) else list(servers)
    shown = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        shown.append(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return ",".join(shown)


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or "permissions violation" in text


async def connect_bus(servers: Union[str, Sequence[str]], *, token: Optional[str] = None,
                      creds: Optional[str] = None, name: str = "wsrelay", timeout: float = 10.0,
                      on_reconnected: Optional[Callable[[], Awaitable[None]]] = None,
                      quiet: Callable[[], bool] = lambda: False) -> Any:
    """A NATS client connected to ``servers``, reconnecting for ever once
    connected. ClusterConnectError (naming the URL, never a credential) when
    the broker refuses the credentials, or none answers within ``timeout``."""
    url = display_urls(servers)
    warn = LimitedLog(log.name)
    nc = nats.NATS()
    failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def error_cb(exc: Exception) -> None:
        if not failure.done() and _is_auth_error(exc):
            failure.set_result(exc)
        warn.warning("bus", f"cluster: bus {url}: {exc}")

    async def disconnected_cb() -> None:
        if not quiet():
            log.warning("cluster: disconnected from %s; reconnecting", url)

    async def reconnected_cb() -> None:
        log.warning("cluster: reconnected to %s", url)
        if on_reconnected is not None:
            await on_reconnected()

    options: dict[str, Any] = dict(
        servers=[servers] if isinstance(servers, str) else list(servers), name=name, error_cb=error_cb,
        disconnected_cb=disconnected_cb, reconnected_cb=reconnected_cb,
        allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=2, ping_interval=2, max_outstanding_pings=2,
        # Our subjects are built from node names checked to be [A-Za-z0-9_-].
        skip_subject_validation=True,
    )
    if token is not None:
        options["token"] = token
    if creds is not None:
        options["user_credentials"] = creds
    # With reconnection for ever, nats-py's first connect would retry for
    # ever too: it runs as a task that a refusal or the deadline cancels.
    connecting = asyncio.ensure_future(nc.connect(**options))
    done, _ = await asyncio.wait({connecting, failure}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if connecting in done:
        connecting.result()
        return nc
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    try:
        await nc.close()
    except Exception as exc:  # a half-open client may fail to close; it is dropped anyway
        log.debug("cluster: closing the failed client: %s", exc)
    if failure.done():
        raise ClusterConnectError(url, f"the broker refused our credentials ({failure.result()})")
    raise ClusterConnectError(url, f"no broker answered within {timeout} s")


async def allocate_incarnation(js: Any, node: str) -> int:
    """The next incarnation of ``node``: above every earlier one, and above
    the seconds since the epoch."""
    kv = await bucket(js, _NODES_BUCKET)
    floor = int(time.time()) - _INCARNATION_EPOCH
    while True:
        try:
            entry = await kv.get(node)
            last, revision = int(entry.value), entry.revision
        except KeyNotFoundError:
            last, revision = 0, 0
        incarnation = max(last + 1, floor) & 0xFFFFFFFF or 1
        try:
            if revision:
                await kv.update(node, str(incarnation).encode(), last=revision)
            else:
                await kv.create(node, str(incarnation).encode())
            return incarnation
        except KeyWrongLastSequenceError:
            continue  # another process of the same name raced us: read again
