"""Session-check answers shared by every replica through Redis: one userinfo call per key per TTL.

On a miss of its own caches, a replica looks for the key's answer in Redis. If none is there (or it is
older than the asking route's TTL), the replica takes a short lock for the key (`SET NX PX`) and makes
the call, stores the answer, and drops the lock; a replica that finds the lock taken polls, with a
growing pause, for the answer, the token's death, or the lock's end, and makes the call itself when
the holder ended without an answer (an outage) or the wait ran past the CentralAuth timeout.

An answer is stored under the SHA-256 of (token digest, client IP, user-agent digest) with a Redis TTL
of the longest session-check TTL any route uses; its age is what that TTL has run down, so the answer
is never used later than its TTL after the call, on any replica, whatever their clocks say. It is
encrypted and authenticated (AES-GCM) with a key derived from the token itself, which Redis never
holds: a Redis dump reveals no user, and write access to Redis cannot forge an answer for a token.

Refusals are not stored here: a token CentralAuth ended goes to the dead-token memory
(`authproxy.session.redis`), which the polling replicas look at too. Redis being away, slow or
returning nonsense never fails a request: the replica then makes the call itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError

from authproxy.core.user import User
from authproxy.provider.checker import Key, SessionKnownDead
from authproxy.session.redis import DEAD_PREFIX, RedisClient

log = structlog.get_logger("authproxy.session")

ANSWER_PREFIX = "authproxy:check:"
LOCK_PREFIX = "authproxy:check-lock:"
# The polling pauses of a replica waiting for another's call: short first (most calls take a few
# milliseconds), then no more than 50 ms, so a wait of several seconds costs a few dozen reads.
_PAUSES = (0.002, 0.005, 0.01, 0.02, 0.05)
# Deletes the lock only if it is still this replica's (it may have expired and been taken since).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisChecks:
    """`SharedChecks` in Redis. `keep` is how long an answer may serve some route (the longest TTL);
    `wait` bounds a wait for another replica's call, and is the lock's own life."""

    def __init__(self, client: RedisClient, *, keep: float, wait: float) -> None:
        self._client = client
        self.keep_for(keep)
        self._wait = wait
        self._lock_ms = max(1000, int(wait * 1000))
        self._release = client.register_script(_RELEASE)

    def keep_for(self, seconds: float) -> None:
        self._keep_ms = max(1, int(seconds * 1000))

    async def answer(
        self, key: Key, token: str, fresh_for: float, call: Callable[[], Awaitable[tuple[User, float]]]
    ) -> tuple[User, float]:
        name = _name(key)
        secret = _answer_key(token)
        try:
            found = await self._lookup(name, secret)
            if found is not None and found[1] < fresh_for:
                return found
            mine = os.urandom(16)
            if await self._client.set(LOCK_PREFIX + name, mine, nx=True, px=self._lock_ms):
                return await self._hold(name, secret, mine, call)
            waited = await self._wait_for_holder(name, secret, key[0], fresh_for)
        except (RedisError, OSError) as exc:
            log.warning("redis.shared_check_failed", error=type(exc).__name__, fallback="own call")
            return await call()
        return waited if waited is not None else await call()

    async def _hold(
        self, name: str, secret: bytes, mine: bytes, call: Callable[[], Awaitable[tuple[User, float]]]
    ) -> tuple[User, float]:
        try:
            user, age = await call()
            if age < self._keep_ms / 1000:
                sealed = _seal(secret, name, user, age, self._keep_ms)
                await self._client.set(ANSWER_PREFIX + name, sealed, px=self._keep_ms - int(age * 1000))
            return user, age
        finally:
            # Released on every ending (answer, refusal, outage, cancellation), so waiters stop polling.
            try:
                await self._release(keys=[LOCK_PREFIX + name], args=[mine])
            except (RedisError, OSError) as exc:
                log.warning("redis.shared_check_unlock_failed", error=type(exc).__name__)

    async def _wait_for_holder(
        self, name: str, secret: bytes, digest: bytes, fresh_for: float
    ) -> tuple[User, float] | None:
        """The answer of the replica holding the lock; None when this replica should call itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        pauses = iter(_PAUSES)
        while True:  # until an answer, the token's death, the lock's end, or the deadline
            await asyncio.sleep(next(pauses, _PAUSES[-1]))
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(ANSWER_PREFIX + name)
                pipe.pttl(ANSWER_PREFIX + name)
                pipe.pttl(DEAD_PREFIX + digest.hex())
                pipe.exists(LOCK_PREFIX + name)
                value, answer_ttl, dead_ttl, locked = await pipe.execute()
            if dead_ttl != -2:  # the holder's call ended the token
                raise SessionKnownDead(None if dead_ttl < 0 else dead_ttl / 1000)
            found = _open(secret, name, value, answer_ttl)
            if found is not None and found[1] < fresh_for:
                return found
            if not locked or loop.time() >= deadline:
                return None

    async def _lookup(self, name: str, secret: bytes) -> tuple[User, float] | None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(ANSWER_PREFIX + name)
            pipe.pttl(ANSWER_PREFIX + name)
            value, answer_ttl = await pipe.execute()
        return _open(secret, name, value, answer_ttl)


def _name(key: Key) -> str:
    digest, client_ip, agent = key
    return hashlib.sha256(
        b"\x00".join((digest, client_ip.encode("utf-8", "surrogateescape"), agent))
    ).hexdigest()


def _answer_key(token: str) -> bytes:
    """The answer's encryption key: derived from the token, and from nothing Redis or a replica keeps."""
    return hashlib.blake2b(
        token.encode("utf-8", "surrogateescape"), digest_size=32, person=b"authproxy-answer"
    ).digest()


def _seal(secret: bytes, name: str, user: User, age: float, keep_ms: int) -> bytes:
    # `stored` is the answer's age in milliseconds when it was stored and `keep` the TTL it was given:
    # its age when read is stored + (keep - the TTL left).
    body = json.dumps({"user": user.to_dict(), "stored": int(age * 1000), "keep": keep_ms}).encode()
    nonce = os.urandom(12)
    return nonce + AESGCM(secret).encrypt(nonce, body, name.encode())


def _open(secret: bytes, name: str, value: Any, ttl_ms: Any) -> tuple[User, float] | None:
    if not isinstance(value, bytes) or len(value) < 12 + 16 or not isinstance(ttl_ms, int) or ttl_ms < 0:
        return None
    try:
        body = json.loads(AESGCM(secret).decrypt(value[:12], value[12:], name.encode()))
    except (InvalidTag, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    user, stored, keep = User.from_dict(body.get("user")), body.get("stored"), body.get("keep")
    if user is None or not isinstance(stored, int) or not isinstance(keep, int):
        return None
    return user, (stored + max(0, keep - stored - ttl_ms)) / 1000
