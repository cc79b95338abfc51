"""Open websockets and event streams by session, and the loop that keeps re-checking each one's session.

A proxied request is judged once, when it arrives, but a websocket or an event stream stays open for as
long as the browser likes. Each one is registered in `Connections` under the SHA-256 of its session's
token (the digest the session checker and the Redis revocation channel use), so that a sign-out here, or
a revocation broadcast from another replica, ends every connection of that session at once. Each one
also runs `keep_checking`, which re-checks the session on the session-check TTL and ends the connection
when the session is over for any reason only CentralAuth or the config knows (a logout elsewhere, a
block, an `[authorization]` change), and at fixed deadlines (the session's expiry, a maximum lifetime).

Entries are removed explicitly when their connection ends, so the registry holds only what is open:
websockets are bounded by `[websocket] max_open` (checked here), event streams by the upstream connection
pool, since each holds one upstream connection.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger("authproxy.watch")

WEBSOCKET = "websocket"
STREAM = "stream"
# Close codes: the session or a limit ended it, the server is going away, the proxy failed.
POLICY = 1008
GOING_AWAY = 1001
INTERNAL = 1011
# With `session_check_ttl = 0` (no caching) an open connection is still re-checked only this often.
_UNCACHED_PERIOD = 1.0
# A re-check due when the cached answer expires waits this much longer, so it never finds the answer
# a hair short of its TTL (the event loop may wake a timer slightly early).
_SLACK = 0.02


def token_digest(token: str) -> bytes:
    """The SHA-256 of a session's token, as the session checker and the revocation channel name it."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class RegistryFull(Exception):
    """No room for another connection of this kind."""


class Connection:
    """One open websocket or event stream: whose session it belongs to, and how it is ended.

    `ended` resolves with (close code, reason) on the first call to `end`; `on_end`, when given, is
    called then too, for connections that must be cut from outside their handler.
    """

    __slots__ = ("_on_end", "_registered", "digest", "ended", "kind")

    def __init__(self, kind: str, digest: bytes | None, on_end: Callable[[int, str], None] | None) -> None:
        self.kind = kind
        self.digest = digest
        self.ended: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._on_end = on_end
        self._registered = True

    def end(self, code: int, reason: str) -> None:
        """Ask the connection to end with `code`; the first call wins, later ones change nothing."""
        if self.ended.done():
            return
        self.ended.set_result((code, reason))
        if self._on_end is not None:
            self._on_end(code, reason)


class Connections:
    """The open websockets and event streams of this worker, indexed by session token digest."""

    def __init__(self) -> None:
        self._by_session: dict[bytes, set[Connection]] = {}
        self._anonymous: set[Connection] = set()
        self._counts: dict[str, int] = {}

    def count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    def __len__(self) -> int:
        return sum(self._counts.values())

    def sessions(self) -> int:
        """How many sessions have a connection open."""
        return len(self._by_session)

    def open(
        self,
        kind: str,
        digest: bytes | None,
        *,
        limit: int | None = None,
        on_end: Callable[[int, str], None] | None = None,
    ) -> Connection:
        """Register a new connection (`digest` None for an anonymous one); RegistryFull beyond `limit`."""
        if limit is not None and self.count(kind) >= limit:
            raise RegistryFull(kind)
        connection = Connection(kind, digest, on_end)
        self._counts[kind] = self.count(kind) + 1
        if digest is None:
            self._anonymous.add(connection)
        else:
            self._by_session.setdefault(digest, set()).add(connection)
        return connection

    def close(self, connection: Connection) -> None:
        """Forget a connection that has ended; closing it twice is harmless."""
        if not connection._registered:
            return
        connection._registered = False
        self._counts[connection.kind] -= 1
        if connection.digest is None:
            self._anonymous.discard(connection)
            return
        siblings = self._by_session.get(connection.digest)
        if siblings is not None:
            siblings.discard(connection)
            if not siblings:
                del self._by_session[connection.digest]

    def end_session(self, digest: bytes, reason: str) -> int:
        """End every connection of the session whose token has this digest (1008); how many there were."""
        connections = list(self._by_session.get(digest, ()))
        for connection in connections:
            connection.end(POLICY, reason)
        return len(connections)

    def end_all(self, code: int, reason: str) -> None:
        """End every connection, as at shutdown."""
        for connections in [self._anonymous, *self._by_session.values()]:
            for connection in list(connections):
                connection.end(code, reason)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One re-check of a connection's session."""

    # Why the session is over; None while it holds (or while CentralAuth cannot say).
    ended: str | None = None
    # True when CentralAuth was asked just now (it answered, or was unavailable): the next re-check is
    # due a whole TTL later. Otherwise the answer came from the cache and may be nearly a TTL old.
    asked: bool = False


Check = Callable[[], Awaitable[Verdict]]


async def keep_checking(
    connection: Connection,
    check: Check | None,
    ttl: Callable[[], float],
    deadlines: Sequence[tuple[float, str]] = (),
) -> None:
    """Until `connection` ends: run `check` on the session-check TTL and end the connection (1008) with
    the reason of the first verdict that says the session is over, or at the first of `deadlines`
    (event-loop times, each with its reason).

    The TTL is read before every wait, so a reload's new value applies. After an answer from CentralAuth
    (or an outage) the next check comes a TTL later, when that answer leaves the cache; after a cached
    answer, whose age is unknown (the handshake's, or one a browser request refreshed), a quarter TTL
    later, so that the first check after it leaves the cache is at most a quarter TTL late. A session
    ended at CentralAuth therefore ends its connections within 1.25 TTL, and within one TTL once the
    connection is the only one refreshing its cache entry. A check that fails unexpectedly ends the
    connection (1011): a watcher that silently stopped would leave it open for good.
    """
    loop = asyncio.get_running_loop()
    next_check = loop.time() + _period(ttl()) / 4
    while not connection.ended.done():
        now = loop.time()
        for when, reason in deadlines:
            if now >= when:
                connection.end(POLICY, reason)
                return
        if check is not None and now >= next_check:
            try:
                verdict = await check()
            except Exception:
                log.exception("connection.check_failed", kind=connection.kind)
                connection.end(INTERNAL, "session check failed")
                return
            if verdict.ended is not None:
                connection.end(POLICY, verdict.ended)
                return
            period = _period(ttl())
            next_check = loop.time() + (period + _SLACK if verdict.asked else period / 4)
            continue
        wake = [when for when, _ in deadlines]
        if check is not None:
            wake.append(next_check)
        if not wake:
            return
        # Wakes early when the connection ends meanwhile, so a finished watcher never lingers.
        await asyncio.wait((connection.ended,), timeout=max(0.0, min(wake) - now))


def _period(ttl: float) -> float:
    return ttl if ttl > 0 else _UNCACHED_PERIOD
