"""The session store seam and its cookie implementation.

Routes only ever call `save`, `load` and `delete` with the cookie's value; whether the session lives in
the cookie itself (here) or in Redis behind a random id is the store's business. A cookie session keeps
nothing server-side, so a signed-out or revoked cookie still unseals: what refuses it is the session
checker's memory of dead tokens (authproxy/provider/checker.py).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from authproxy.core.seal import Sealer
from authproxy.errors import SessionTooLarge
from authproxy.session.model import Session

if TYPE_CHECKING:
    from authproxy.session.redis import RedisStore

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

    def __init__(
        self,
        sealer: Sealer,
        cookie_name: str,
        clock: Callable[[], float] = time.time,
        memo_size: int = 10_000,
    ) -> None:
        self._sealer = sealer
        self._purpose = f"session:{cookie_name}"
        self._clock = clock
        # Unsealing costs an AES-GCM pass per request; a browser sends the same value every time. Keyed
        # by the value's SHA-256 rather than the value (up to 4 KB): at 10,000 entries that is megabytes.
        self._memo: OrderedDict[bytes, Session] = OrderedDict()
        self._memo_size = memo_size

    async def save(self, session: Session) -> str:
        value = self._sealer.seal(session.to_bytes(), self._purpose)
        if len(value) > MAX_COOKIE_VALUE:
            raise SessionTooLarge(f"sealed session is {len(value)} bytes; browsers refuse cookies over 4 KB")
        return value

    async def load(self, value: str) -> Session | None:
        key = _memo_key(value)
        session = self._memo.get(key)
        if session is None:
            plaintext = self._sealer.unseal(value, self._purpose)
            session = Session.from_bytes(plaintext) if plaintext is not None else None
            if session is None:
                return None
            self._memo[key] = session
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return None if session.expired(self._clock()) else session

    async def delete(self, value: str) -> None:
        # Nothing is kept server-side; clearing the browser's cookie is the rest of the job.
        self._memo.pop(_memo_key(value), None)


def _memo_key(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def redis_store(store: SessionStore) -> RedisStore | None:
    """`store` if it is the Redis store, else None; never imports the redis package itself."""
    module = sys.modules.get("authproxy.session.redis")
    if module is None:
        return None  # never imported, so `store` cannot be one
    return cast("RedisStore", store) if isinstance(store, module.RedisStore) else None
