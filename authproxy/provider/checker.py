"""The per-request session check: userinfo answers cached briefly, shared between concurrent requests,
and dead tokens remembered so that replaying one costs no CentralAuth call.

Answers are keyed by (SHA-256 of the token, client IP, 16-byte BLAKE2b of the user agent) — never by
token alone, or a stolen cookie replayed from another IP or browser would skip CentralAuth's hijack check
for the whole TTL. The user agent is kept only as that digest: a client may send up to 8 KB of it, and
varying it per request must not grow the cache by kilobytes an entry.

Concurrent checks of one key share one call (a page firing 30 asset requests costs one userinfo call).
A miss for a token whose call is already in flight under another key (another IP or user agent) waits for
that call first, bounded by `wait`: if CentralAuth rejected it, the token is dead and no call is made; if
it succeeded, the new key still makes its own call, since the answer depends on IP and user agent (hijack
protection) and a positive answer is never reused across keys.

Only positive answers are cached. A definite rejection evicts every entry of that token; one whose error
code says the session is over (`SESSION_ENDED`: expired, logged out, missing, invalid — CentralAuth ends
the whole session on a hijack mismatch, so that one is about the token too) also puts its digest in the
dead-token memory, as does a sign-out; from then on the token is refused at once
(`SessionKnownDead`) until its session would have expired anyway, at most `dead_lifetime` seconds. With a
`shared` memory (Redis) dead tokens are also recorded there, and looked up before every call, so other
replicas refuse them without asking CentralAuth; the shared memory's failures never raise.

On an outage the last good answer may be reused for `stale_grace` seconds past its TTL when
`on_outage = "stale"`.

Memory, measured with tracemalloc on CPython 3.11 (tests/test_memory.py holds the code to these numbers):
- check cache: kept in the order the answers were fetched (a hit does not reorder: an entry's use ends
  when its TTL from the call does, however often it is hit), bounded by `max_entries`, and entries past
  TTL + stale window are dropped from the old end as new ones arrive. An entry costs under 400 bytes
  whatever the size of the user agent: the key (the IP string, the 16-byte agent digest, the token digest
  shared by a token's entries), the slot in the order, the timestamp and the token index. A session's
  first entry also holds its token digest and the User that CentralAuth returned: about 700 bytes in all
  for typical ids and e-mail; further entries of a token share an equal User.
- dead tokens: an LRU of 32-byte digests bounded by `max_entries` too, about 200 bytes each.
- the token memo: the SHA-256 of the 10,000 most recently seen tokens, each held with its token.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from authproxy.core.user import User
from authproxy.errors import CentralAuthUnavailable, SessionRejected

Key = tuple[bytes, str, bytes]  # token digest, client IP, user-agent digest
# (token, client IP, user agent, device id: "" for browsers)
Fetch = Callable[[str, str, str, str], Awaitable[User]]
_AGENT_DIGEST_SIZE = 16
# CentralAuth's error codes that say the session or token itself is over (expired, logged out, not
# found, undecryptable, or invalidated by hijack protection, which ends the whole session).
SESSION_ENDED = frozenset(
    {
        "tokenInvalid",
        "tokenMissing",
        "sessionMissing",
        "sessionNotVerified",
        "sessionExpired",
        "sessionInactive",
        "sessionInvalid",
    }
)
_DIGESTS_MAX = 10_000
_AGENT_MEMO_ENTRIES, _AGENT_MEMO_LENGTH = 1024, 512


class SessionKnownDead(SessionRejected):
    """The token was already known dead: no call was made, and nothing new needs recording or auditing.

    `lifetime`, when another process says how long it stays dead, is how long to remember it here.
    """

    def __init__(self, lifetime: float | None = None) -> None:
        super().__init__("known_dead")
        self.lifetime = lifetime


class SharedChecks(Protocol):
    """A second level of answers, shared with other processes (the workers of one instance, or every
    replica): one call per key in the whole group, however many processes miss it at once.

    `answer` returns the user behind the key's token and the answer's age in seconds: from the shared
    level if an answer younger than `fresh_for` is there, or else from `call()`, made by one process
    of the group while the others wait for its answer. It raises what `call` raises for the process
    that made the call; a waiter gets `SessionKnownDead` when the call ended the token, `SessionRejected`
    for any other refusal, and makes the call itself when the other's ends in an outage. Its own
    failures (the shared level away, slow, or confused) never raise: it makes the call itself.
    """

    async def answer(
        self, key: Key, token: str, fresh_for: float, call: Callable[[], Awaitable[tuple[User, float]]]
    ) -> tuple[User, float]: ...

    def keep_for(self, seconds: float) -> None:
        """Keep answers put from now on for `seconds` (the longest TTL of any route), e.g. after a reload."""


class SharedDeadTokens(Protocol):
    """Dead-token memory shared between replicas. Neither method may raise: an outage is 'not known'."""

    async def dead_for(self, digest: bytes) -> float | None:
        """Seconds the token with this SHA-256 is still remembered dead, or None if it is not (or unknown)."""

    async def record_dead(self, digest: bytes, lifetime: float) -> None:
        """Remember the token dead for `lifetime` seconds, and tell the other replicas now."""


class ChainedChecks:
    """Two shared levels, nearest first: the outer one's call asks the inner one (the instance's
    workers first, then every replica), so each level makes one call for all who miss it at once."""

    def __init__(self, outer: SharedChecks, inner: SharedChecks) -> None:
        self._outer, self._inner = outer, inner

    async def answer(
        self, key: Key, token: str, fresh_for: float, call: Callable[[], Awaitable[tuple[User, float]]]
    ) -> tuple[User, float]:
        return await self._outer.answer(
            key, token, fresh_for, lambda: self._inner.answer(key, token, fresh_for, call)
        )

    def keep_for(self, seconds: float) -> None:
        self._outer.keep_for(seconds)
        self._inner.keep_for(seconds)


class DeadTokensFanout:
    """Several shared memories of dead tokens as one: a death is told to each; a lookup asks each in
    turn until one knows (the broker knows nothing it would not say on a miss anyway: it asks nothing)."""

    def __init__(self, *memories: SharedDeadTokens) -> None:
        self._memories = memories

    async def dead_for(self, digest: bytes) -> float | None:
        for memory in self._memories:
            remaining = await memory.dead_for(digest)
            if remaining is not None:
                return remaining
        return None

    async def record_dead(self, digest: bytes, lifetime: float) -> None:
        for memory in self._memories:
            await memory.record_dead(digest, lifetime)


@dataclass(frozen=True, slots=True)
class Outcome:
    user: User
    # "hit", "miss", "shared" (another worker or replica asked CentralAuth: `SharedChecks`),
    # "coalesced" (waited on this process's own call for the key) or "stale"
    source: str


_Answer = tuple[User, bool]  # a call's user, and whether another process made the call


@dataclass(frozen=True, slots=True)
class _Question:
    """One miss's question to CentralAuth, as the request presents it."""

    key: Key
    token: str
    client_ip: str
    user_agent: str
    device_id: str  # "" for browsers
    lifetime: float | None  # how long the session has left (how long to remember the token dead)
    fresh_for: float  # the TTL the asking route accepts


@dataclass(slots=True)
class _Entry:
    user: User
    fetched_at: float


class DeadTokens:
    """Digests of dead tokens, each until its session would have expired anyway; an LRU bounded by count.

    Entries past their time are dropped when looked up, and from the old end as new ones arrive.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._until: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._until)

    def holds(self, digest: bytes) -> bool:
        """Whether the token with this digest is (still) known dead."""
        until = self._until.get(digest)
        if until is None:
            return False
        if self._clock() >= until:
            del self._until[digest]
            return False
        self._until.move_to_end(digest)
        return True

    def add(self, digest: bytes, lifetime: float) -> None:
        now = self._clock()
        self._until[digest] = now + lifetime
        self._until.move_to_end(digest)
        while self._until:
            oldest, until = next(iter(self._until.items()))
            if len(self._until) <= self._max and until > now:
                break
            del self._until[oldest]


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

    def any(self, digest: bytes) -> Key | None:
        found = self._keys.get(digest)
        if isinstance(found, set):
            return next(iter(found), None)
        return found

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
        dead_lifetime: float = 86400.0,
        wait: float = 5.0,
        shared: SharedDeadTokens | None = None,
        clock: Callable[[], float] = time.monotonic,
        dead: DeadTokens | None = None,
        longest_ttl: float = 0.0,
        tiers: SharedChecks | None = None,
    ) -> None:
        """`dead` carries a former checker's memory of dead tokens over (a reload must not forget a
        sign-out); it must run on the same clock. `tiers` is the shared level asked on a miss before
        CentralAuth (never for a TTL of 0, which asks CentralAuth itself every time)."""
        self._fetch = fetch
        self._tiers = tiers
        self._ttl = ttl
        self._horizon = max(ttl, longest_ttl)  # how long an entry may still answer some caller
        self._stale_grace = stale_grace
        self._max = max_entries
        self._dead_lifetime = dead_lifetime
        self._wait = wait
        self._shared = shared
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._by_token = _TokenIndex()
        self.dead = dead if dead is not None else DeadTokens(max_entries, clock)
        self._inflight: dict[Key, asyncio.Future[_Answer]] = {}
        # The latest call started for each token, whatever its key: a miss under another key waits for it.
        self._inflight_token: dict[bytes, asyncio.Future[_Answer]] = {}
        # A browser presents the same token on every request: hash it once, not per request.
        self._digests: OrderedDict[str, bytes] = OrderedDict()
        self._digests_max = min(max_entries, _DIGESTS_MAX)
        # Few distinct user agents send most requests: their digests are kept too, for agents of a
        # browser's length only, so the memo stays under a megabyte whatever clients send.
        self._agents: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def keep_for(self, longest_ttl: float) -> None:
        """Routes' TTLs changed (a reload that kept this checker): answers, here and in the shared levels,
        are kept as long as the longest of them may still use one."""
        self._horizon = max(self._ttl, longest_ttl)
        if self._tiers is not None:
            self._tiers.keep_for(self._horizon)

    def cached(
        self, token: str, client_ip: str, user_agent: str, *, ttl: float | None = None, device_id: str = ""
    ) -> User | None:
        """The user behind `token` if a cached answer for the key is fresh (a hit, no I/O and no
        coroutine); None otherwise, and then `check` does the rest."""
        digest = self._digests.get(token)
        agent = _device_agent(user_agent, device_id) if device_id else self._agents.get(user_agent)
        if digest is None or agent is None:
            return None  # a token or agent not in the memos (new, or long unseen): `check` works it out
        return self._fresh((digest, client_ip, agent), self._ttl if ttl is None else ttl)

    async def check(
        self,
        token: str,
        client_ip: str,
        user_agent: str,
        *,
        lifetime: float | None = None,
        ttl: float | None = None,
        device_id: str = "",
    ) -> Outcome:
        """The user behind `token` as CentralAuth sees it now (or within the TTL: `ttl`, a route's own,
        or the checker's; 0 asks CentralAuth every time, and the answer still serves other routes).

        `lifetime` is how long the session has left; a token found dead is remembered that long (at most
        `dead_lifetime`). Raises `SessionKnownDead` for a token already known dead, `SessionRejected` when
        CentralAuth has just refused it, `CentralAuthUnavailable` on an outage the stale window misses.
        """
        digest = self._digests.get(token) or self._digest(token)
        if device_id:
            agent = _device_agent(user_agent, device_id)
        else:
            agent = self._agents.get(user_agent) or self._agent(user_agent)
        key = (digest, client_ip, agent)
        fresh_for = self._ttl if ttl is None else ttl
        # A hit needs no dead-token lookup: marking a token dead evicts its entries, and none is stored
        # for a dead token.
        user = self._fresh(key, fresh_for)
        if user is not None:
            return Outcome(user, "hit")
        return await self._miss(_Question(key, token, client_ip, user_agent, device_id, lifetime, fresh_for))

    def _fresh(self, key: Key, fresh_for: float) -> User | None:
        """The cached user for `key` if its answer is younger than `fresh_for` seconds."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.fetched_at < fresh_for:
            return entry.user
        return None

    async def _miss(self, question: _Question) -> Outcome:
        key, fresh_for = question.key, question.fresh_for
        digest = key[0]
        deadline: float | None = None  # loop time until which a miss waits on another key's call
        while True:
            if self.dead.holds(digest):
                raise SessionKnownDead()
            cached = self._fresh(key, fresh_for)
            if cached is not None:
                return Outcome(cached, "hit")
            task = self._inflight.get(key)
            if task is not None:
                source = "coalesced"
                break
            other = self._inflight_token.get(digest)
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self._wait
            remaining = deadline - loop.time()
            if other is None or other.done() or remaining <= 0:
                task = self._start(question)
                source = "miss"
                break
            # asyncio.wait never cancels `other`: this request going away leaves the call to the others.
            await asyncio.wait((other,), timeout=remaining)
            if not _answered(other):
                deadline = loop.time()  # an outage or a stuck call says nothing about this key: ask now
            # Round again: a rejection has made the token dead; after a success this key still needs its
            # own answer, and another key's call may have started meanwhile.
        try:
            # shield: one waiter going away (client disconnect) must not cancel the call for the others.
            user, shared = await asyncio.shield(task)
            if self.dead.holds(digest):  # signed out, or refused under another key, while the call ran
                raise SessionKnownDead()
            return Outcome(user, "shared" if shared and source == "miss" else source)
        except SessionKnownDead:
            raise
        except SessionRejected:
            if source == "coalesced":
                raise SessionKnownDead() from None  # the request that made the call reports the rejection
            raise
        except CentralAuthUnavailable:
            stale = self._stale(key)
            if stale is None:
                raise
            return Outcome(stale, "stale")

    def evict(self, token: str) -> None:
        """Forget every cached answer for `token` (it stays usable: see `revoke` to end it)."""
        self.evict_digest(_digest(token))

    def evict_digest(self, digest: bytes) -> None:
        """Forget every cached answer for the token with this SHA-256."""
        for key in self._by_token.pop(digest):
            self._entries.pop(key, None)

    async def revoke(self, token: str, lifetime: float | None = None) -> None:
        """The session ended here (sign-out): refuse its token from now on, on every replica."""
        digest = _digest(token)
        lifetime = self._bounded(lifetime)
        self._mark_dead(digest, lifetime)
        if self._shared is not None:
            await self._shared.record_dead(digest, lifetime)

    def dead_elsewhere(self, digest: bytes) -> None:
        """Another replica saw the token with this SHA-256 die: refuse it here too, without asking."""
        if len(digest) != len(_digest("")):
            return
        if self.dead.holds(digest):
            self.evict_digest(digest)  # keep the remembered lifetime, which may be the session's own
        else:
            self._mark_dead(digest, self._dead_lifetime)

    def _digest(self, token: str) -> bytes:
        digest = self._digests.get(token)
        if digest is None:
            digest = self._digests[token] = _digest(token)
            if len(self._digests) > self._digests_max:
                self._digests.popitem(last=False)
        return digest

    def _agent(self, user_agent: str) -> bytes:
        digest = agent_digest(user_agent)
        if len(user_agent) <= _AGENT_MEMO_LENGTH:
            self._agents[user_agent] = digest
            if len(self._agents) > _AGENT_MEMO_ENTRIES:
                self._agents.popitem(last=False)
        return digest

    def _start(self, question: _Question) -> asyncio.Future[_Answer]:
        key = question.key
        task = asyncio.ensure_future(self._refresh(question))
        self._inflight[key] = task
        self._inflight_token[key[0]] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: Key, task: asyncio.Future[_Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if self._inflight_token.get(key[0]) is task:
            del self._inflight_token[key[0]]
        if not task.cancelled():
            task.exception()  # retrieved here, so a call nobody waits for any more is not reported

    async def _refresh(self, question: _Question) -> _Answer:
        """The user, and whether the answer came from another process (no call was made here)."""
        key, token, lifetime = question.key, question.token, question.lifetime
        digest = key[0]
        if self._shared is not None:
            remaining = await self._shared.dead_for(digest)
            if remaining is not None:
                self._mark_dead(digest, self._bounded(remaining))
                raise SessionKnownDead()

        called = False

        async def call() -> tuple[User, float]:
            nonlocal called
            called = True
            user = await self._fetch(token, question.client_ip, question.user_agent, question.device_id)
            return user, 0.0

        try:
            if self._tiers is not None and question.fresh_for > 0:
                user, age = await self._tiers.answer(key, token, question.fresh_for, call)
            else:
                user, age = await call()
        except SessionKnownDead as exc:  # another process's call ended the token while this one waited
            self._mark_dead(digest, self._bounded(exc.lifetime if exc.lifetime is not None else lifetime))
            raise
        except SessionRejected as exc:
            if exc.error_code not in SESSION_ENDED:
                # A refusal that is not about this session (our client credentials, the domain, an
                # unknown code) ends this request's session as before, but is not remembered: fixing
                # the configuration must not leave every user's token refused until it expires.
                self.evict_digest(digest)
                raise
            # Marked before the shared write: requests arriving meanwhile are refused already.
            bounded = self._bounded(lifetime)
            self._mark_dead(digest, bounded)
            if self._shared is not None:
                await self._shared.record_dead(digest, bounded)
            raise
        if not self.dead.holds(digest):  # signed out while the call was in flight: nothing to cache
            # An answer another process got `age` seconds ago is as old here: the TTL runs from the call.
            self._store(key, user, age)
        return user, not called

    def _mark_dead(self, digest: bytes, lifetime: float) -> None:
        self.dead.add(digest, lifetime)
        self.evict_digest(digest)

    def _bounded(self, lifetime: float | None) -> float:
        if lifetime is None:
            return self._dead_lifetime
        return max(1.0, min(lifetime, self._dead_lifetime))

    def _store(self, key: Key, user: User, age: float = 0.0) -> None:
        now = self._clock()
        # Each answer is a fresh User; entries of one token (several IPs or agents) share an equal one.
        sibling = self._by_token.any(key[0])
        if sibling is not None:
            known = self._entries.get(sibling)
            if known is not None and known.user == user:
                user = known.user
        self._entries[key] = _Entry(user, now - age)
        self._entries.move_to_end(key)
        self._by_token.add(key)
        # Past its TTL and stale window an entry can never answer again; dropping those from the LRU end
        # keeps memory to the sessions in use, instead of growing until max_entries pushes them out.
        useful = self._horizon + self._stale_grace
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self._max and now - oldest.fetched_at < useful:
                break
            old_key, _ = self._entries.popitem(last=False)
            self._by_token.discard(old_key)

    def _stale(self, key: Key) -> User | None:
        entry = self._entries.get(key)
        if entry is None or self._stale_grace <= 0:
            return None
        if self._clock() - entry.fetched_at < self._ttl + self._stale_grace:
            return entry.user
        return None


def _answered(call: asyncio.Future[_Answer]) -> bool:
    """Whether a call ended in CentralAuth's answer (a user or a rejection), not an outage or a timeout."""
    if not call.done() or call.cancelled():
        return False
    error = call.exception()
    return error is None or isinstance(error, SessionRejected)


def _device_agent(user_agent: str, device_id: str) -> bytes:
    """A native client's agent digest: its device id is checked by CentralAuth like the agent, so it is
    part of what an answer was given for (kept with the agent, in one fixed-size digest)."""
    return agent_digest(f"{user_agent}\x00device-id\x00{device_id}")


def agent_digest(user_agent: str) -> bytes:
    """What the cache keeps of a user agent: a fixed-size digest, whatever the header's size."""
    data = user_agent.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=_AGENT_DIGEST_SIZE).digest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
