"""The session store seam and its cookie implementation.

Routes only ever call `save`, `load` and `delete` with the cookie's value; whether the session lives in
the cookie itself (here) or in Redis behind a random id is the store's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from authproxy.errors import SessionTooLarge
from authproxy.session.model import Session
from authproxy.session.seal import Sealer

# Browsers drop cookies whose name, value and attributes exceed 4096 bytes; leave room for attributes.
MAX_COOKIE_VALUE = 3800


class SessionStore(Protocol):
    async def save(self, session: Session) -> str:
        """Persist the session; return the value to put in the browser's cookie."""

    async def load(self, value: str) -> Session | None:
        """The live session a cookie value stands for, or None (unknown, expired, tampered)."""

    async def delete(self, value: str) -> None:
        """Forget the session a cookie value stands for."""


class CookieStore:
    """The session is the cookie: sealed with AEAD, bound to the cookie's name, nothing kept server-side."""

    def __init__(self, sealer: Sealer, cookie_name: str, clock: Callable[[], float] = time.time) -> None:
        self._sealer = sealer
        self._purpose = f"session:{cookie_name}"
        self._clock = clock

    async def save(self, session: Session) -> str:
        value = self._sealer.seal(session.to_bytes(), self._purpose)
        if len(value) > MAX_COOKIE_VALUE:
            raise SessionTooLarge(f"sealed session is {len(value)} bytes; browsers refuse cookies over 4 KB")
        return value

    async def load(self, value: str) -> Session | None:
        plaintext = self._sealer.unseal(value, self._purpose)
        if plaintext is None:
            return None
        session = Session.from_bytes(plaintext)
        if session is None or session.expired(self._clock()):
            return None
        return session

    async def delete(self, value: str) -> None:
        # Nothing is kept server-side; clearing the browser's cookie is the whole job.
        return None
