"""The session store: a token for each logged-in user, issued by the API's
login and read back by both sides (the API's endpoints and the WebSocket
endpoint).

A stand-in for Redis or a sessions table: its methods are coroutines, awaited
where a real store's would be, so the code that uses it reads as it would
against the real one. It lives in the one event loop both sides share.
"""

from __future__ import annotations

import secrets
from typing import Optional


class SessionStore:
    def __init__(self) -> None:
        self._users: dict[str, str] = {}

    async def create(self, user: str) -> str:
        """A new token for ``user``."""
        token = secrets.token_urlsafe(16)
        self._users[token] = user
        return token

    async def user(self, token: str) -> Optional[str]:
        """Who ``token`` belongs to; None for a token never issued."""
        return self._users.get(token)


sessions = SessionStore()
