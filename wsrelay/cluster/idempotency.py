"""Idempotency keys of the server API shared by every node (docs/api.md,
"Idempotency"): a key is claimed by creating it in a JetStream key-value
bucket whose entries live as long as a key is remembered, so a retry through
any worker of any machine finds it. Creating a key that exists fails on the
broker, atomically: of two nodes claiming one key at once, one wins.

While the broker cannot answer, keys are claimed in this node's memory
(wsrelay.api.IdempotencyKeys), logged: a retry through the same node is
still caught, one through another may publish twice.
"""

from __future__ import annotations

import base64
from typing import Any

import nats
from nats.js.errors import KeyWrongLastSequenceError

from ..api import IDEMPOTENCY_TTL, IdempotencyKeys
from .names import bucket
from .stats import Trouble

_BUCKET = "wsrelay_idempotency"


class ClusterIdempotency:
    """The API's IdempotencyStore on the cluster's broker."""

    def __init__(self, js: Any, trouble: Trouble, ttl: float = IDEMPOTENCY_TTL) -> None:
        self._js = js
        self._trouble = trouble
        self._ttl = ttl
        self._kv: Any = None
        self._local = IdempotencyKeys(ttl)

    @property
    def evicted(self) -> int:
        """Keys this node's fallback memory forgot early (wsrelay.api.IdempotencyKeys)."""
        return self._local.evicted

    async def start(self) -> None:
        self._kv = await bucket(self._js, _BUCKET, ttl=self._ttl)

    async def claim(self, key: str) -> bool:
        # Bucket keys are [-/_=.A-Za-z0-9]: base64url of the key's bytes is.
        name = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
        try:
            await self._kv.create(name, b"")
            return True
        except KeyWrongLastSequenceError:
            return False  # claimed before, by this node or another
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            self._trouble.warning("idempotency", f"cluster: idempotency keys: the broker did not answer ({exc}); "
                                  "keys are kept by this node until it does")
            return await self._local.claim(key)
