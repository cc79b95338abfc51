"""The per-request session check: userinfo answers cached briefly, shared between concurrent requests.

Answers are keyed by (SHA-256 of the token, client IP, user agent) — never by token alone, or a stolen
cookie replayed from another IP or browser would skip CentralAuth's hijack check for the whole TTL (W8).
Concurrent checks of one key share one call (a page firing 30 asset requests costs one userinfo call).
Only positive answers are cached; a definite rejection evicts every entry of that token. On an outage
the last good answer may be reused for `stale_grace` seconds past its TTL when `on_outage = "stale"`.
The cache is an LRU bounded by entry count, so memory cannot grow without limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.provider.user import User

Key = tuple[bytes, str, str]
Fetch = Callable[[str, str, str], Awaitable[User]]


@dataclass(frozen=True, slots=True)
class Outcome:
    user: User
    source: str  # "hit", "miss", "coalesced" or "stale"


@dataclass(slots=True)
class _Entry:
    user: User
    fetched_at: float


class SessionChecker:
    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float,
        stale_grace: float = 0.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._stale_grace = stale_grace
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._by_token: dict[bytes, set[Key]] = {}
        self._inflight: dict[Key, asyncio.Future[User]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def check(self, token: str, client_ip: str, user_agent: str) -> Outcome:
        """The user behind `token` as CentralAuth sees it now (or within the TTL)."""
        key = (_digest(token), client_ip, user_agent)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and now - entry.fetched_at < self._ttl:
            self._entries.move_to_end(key)
            return Outcome(entry.user, "hit")
        task = self._inflight.get(key)
        source = "coalesced"
        if task is None:
            source = "miss"
            task = asyncio.ensure_future(self._refresh(key, token, client_ip, user_agent))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        try:
            # shield: one waiter going away (client disconnect) must not cancel the call for the others.
            return Outcome(await asyncio.shield(task), source)
        except CentralAuthUnavailable:
            stale = self._stale(key)
            if stale is None:
                raise
            return Outcome(stale, "stale")

    def evict(self, token: str) -> None:
        """Forget every cached answer for `token` (sign-out, revocation)."""
        self.evict_digest(_digest(token))

    def evict_digest(self, digest: bytes) -> None:
        """Forget every cached answer for the token with this SHA-256 (a revocation seen elsewhere)."""
        for key in self._by_token.pop(digest, set()):
            self._entries.pop(key, None)

    def _finished(self, key: Key, task: asyncio.Future[User]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a call nobody waits for any more is not reported

    async def _refresh(self, key: Key, token: str, client_ip: str, user_agent: str) -> User:
        try:
            user = await self._fetch(token, client_ip, user_agent)
        except SessionRejected:
            self.evict(token)
            raise
        self._store(key, user)
        return user

    def _store(self, key: Key, user: User) -> None:
        self._entries[key] = _Entry(user, self._clock())
        self._entries.move_to_end(key)
        self._by_token.setdefault(key[0], set()).add(key)
        while len(self._entries) > self._max:
            old_key, _ = self._entries.popitem(last=False)
            keys = self._by_token.get(old_key[0])
            if keys is not None:
                keys.discard(old_key)
                if not keys:
                    del self._by_token[old_key[0]]

    def _stale(self, key: Key) -> User | None:
        entry = self._entries.get(key)
        if entry is None or self._stale_grace <= 0:
            return None
        if self._clock() - entry.fetched_at < self._ttl + self._stale_grace:
            return entry.user
        return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
