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
_AGENTS_MAX = 4096
Fetch = Callable[[str, str, str], Awaitable[User]]


@dataclass(frozen=True, slots=True)
class Outcome:
    user: User
    source: str  # "hit", "miss", "coalesced" or "stale"


@dataclass(slots=True)
class _Entry:
    user: User
    fetched_at: float


class _TokenIndex:
    """The cache keys of each token digest, for evicting a token's every entry at once.

    Nearly every token has one key (one browser), so that key is stored bare; a set, which costs more
    than the rest of an entry, is made only for a token seen from a second IP or user agent.
    """

    def __init__(self) -> None:
        self._keys: dict[bytes, Key | set[Key]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Key) -> None:
        found = self._keys.setdefault(key[0], key)
        if found is key or found == key:
            return
        if isinstance(found, set):
            found.add(key)
        else:
            self._keys[key[0]] = {found, key}

    def discard(self, key: Key) -> None:
        found = self._keys.get(key[0])
        if isinstance(found, set):
            found.discard(key)
            if not found:
                del self._keys[key[0]]
        elif found == key:
            del self._keys[key[0]]

    def pop(self, digest: bytes) -> set[Key]:
        found = self._keys.pop(digest, None)
        if found is None:
            return set()
        return found if isinstance(found, set) else {found}


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
        self._by_token = _TokenIndex()
        # Requests carry a fresh copy of the same few user agents; stored keys share one copy each.
        self._agents: dict[str, str] = {}
        self._inflight: dict[Key, asyncio.Future[User]] = {}
        # A browser presents the same token on every request: hash it once, not per request.
        self._digests: dict[str, bytes] = {}
        self._digests_max = min(max_entries, 10_000)

    def __len__(self) -> int:
        return len(self._entries)

    async def check(self, token: str, client_ip: str, user_agent: str) -> Outcome:
        """The user behind `token` as CentralAuth sees it now (or within the TTL)."""
        digest = self._digests.get(token)
        if digest is None:
            digest = _digest(token)
            if len(self._digests) >= self._digests_max:
                del self._digests[next(iter(self._digests))]  # the oldest
            self._digests[token] = digest
        key = (digest, client_ip, user_agent)
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
        for key in self._by_token.pop(digest):
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
        now = self._clock()
        key = (key[0], key[1], self._shared_agent(key[2]))
        self._entries[key] = _Entry(user, now)
        self._entries.move_to_end(key)
        self._by_token.add(key)
        # Past its TTL and stale window an entry can never answer again; dropping those from the LRU end
        # keeps memory to the sessions in use, instead of growing until max_entries pushes them out.
        useful = self._ttl + self._stale_grace
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self._max and now - oldest.fetched_at < useful:
                break
            old_key, _ = self._entries.popitem(last=False)
            self._by_token.discard(old_key)

    def _shared_agent(self, agent: str) -> str:
        shared = self._agents.get(agent)
        if shared is None:
            if len(self._agents) >= _AGENTS_MAX:
                del self._agents[next(iter(self._agents))]  # the oldest; keys keep their own copy
            shared = self._agents[agent] = agent
        return shared

    def _stale(self, key: Key) -> User | None:
        entry = self._entries.get(key)
        if entry is None or self._stale_grace <= 0:
            return None
        if self._clock() - entry.fetched_at < self._ttl + self._stale_grace:
            return entry.user
        return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
