"""The Redis session store: any replica can serve a session, and revoking it kills it everywhere at once.

The browser's cookie holds only a random session id and a per-session key, sealed like any cookie.
Redis holds the session encrypted with that per-session key under a hash of the id, so a Redis dump
alone reveals neither tokens nor cookie values. The record expires with the session.

Beside each record, an index entry for session administration (`authproxy sessions`, see
`authproxy.session.admin`) says who the session belongs to, when it was made, when it was last checked
with CentralAuth, and its token's SHA-256; the token itself is there only sealed with the cookie
secret (so that `revoke --centralauth` can end the CentralAuth session), which Redis does not hold.

Dead tokens (signed out, or refused by CentralAuth) are recorded under the SHA-256 of the token with a
TTL of the session's remaining life, and published on a channel: every replica drops its cached answers
for that token at once, and refuses the token without asking CentralAuth, even a replica that was not
listening when it died. Redis being unreachable while loading or saving a session is
`SessionStoreUnavailable` (a 503): never a crash, never a logout. The dead-token calls never raise: when
Redis is away each replica falls back on its own memory of dead tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio.connection import BlockingConnectionPool, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from authproxy.config import SessionConfig, split_host_port
from authproxy.core.seal import Sealer
from authproxy.errors import SessionStoreUnavailable, SessionTooLarge
from authproxy.session.model import Session
from authproxy.session.store import MAX_COOKIE_VALUE

log = structlog.get_logger("authproxy.session")

T = TypeVar("T")
RedisClient = aioredis.Redis
KEY_PREFIX = "authproxy:session:"
META_PREFIX = "authproxy:meta:"  # the administration index, one hash per session
USER_PREFIX = "authproxy:user-sessions:"  # the ids of one user's sessions, by lower-cased e-mail
DEAD_PREFIX = "authproxy:dead:"
CHANNEL = "authproxy:revoked"
# Sets last_check on an index entry only if the entry exists (Redis has no "HSET if exists").
_TOUCH = "if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], 'last_check', ARGV[1]) end"
# Connections to Redis per worker (the revocation subscription holds one more of its own).
MAX_CONNECTIONS = 128
_ID_BYTES = 32
_KEY_BYTES = 32


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis,
        sealer: Sealer,
        cookie_name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._sealer = sealer
        self._purpose = f"session-ref:{cookie_name}"
        self.admin_purpose = admin_purpose(cookie_name)
        self._clock = clock
        self._touch = client.register_script(_TOUCH)

    async def save(self, session: Session) -> str:
        session_id, key = os.urandom(_ID_BYTES), AESGCM.generate_key(bit_length=8 * _KEY_BYTES)
        nonce = os.urandom(12)
        record = nonce + AESGCM(key).encrypt(nonce, session.to_bytes(), session_id)
        ttl = max(1, int(session.expires_at - self._clock()))
        value = self._sealer.seal(session_id + key, self._purpose)
        if len(value) > MAX_COOKIE_VALUE:
            raise SessionTooLarge("sealed session reference does not fit a cookie")
        name = hashlib.sha256(session_id).hexdigest()
        meta, user_index = META_PREFIX + session_ref_id(name), USER_PREFIX + session.email.lower()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(KEY_PREFIX + name, record, ex=ttl)
            pipe.hset(
                meta,
                mapping={
                    "record": name,
                    "user": session.email,
                    "user_id": session.user_id,
                    "created": repr(session.created_at),
                    "expires": repr(session.expires_at),
                    "token": hashlib.sha256(
                        session.access_token.encode("utf-8", "surrogateescape")
                    ).hexdigest(),
                    "sealed_token": self._sealer.seal(session.access_token.encode(), self.admin_purpose),
                },
            )
            pipe.expire(meta, ttl)
            pipe.sadd(user_index, session_ref_id(name))
            # The index lives as long as the user's longest session: set when new, lengthened after.
            pipe.expire(user_index, ttl, nx=True)
            pipe.expire(user_index, ttl, gt=True)
            await self._call(pipe.execute())
        return value

    async def touch(self, value: str) -> None:
        """Note in the administration index that the session was just checked with CentralAuth.

        Never raises: the index is for operators, and a request must not fail for its sake.
        """
        reference = self._reference(value)
        if reference is None:
            return
        meta = META_PREFIX + session_ref_id(hashlib.sha256(reference[0]).hexdigest())
        try:
            # Only an entry that still exists: a revoked session must not come back as a stub.
            await self._touch(keys=[meta], args=[repr(self._clock())])
        except (RedisError, OSError) as exc:
            log.warning("redis.session_index_not_updated", error=type(exc).__name__)

    async def load(self, value: str) -> Session | None:
        reference = self._reference(value)
        if reference is None:
            return None
        session_id, key = reference
        record = await self._call(self.client.get(self._key(session_id)))
        if not isinstance(record, bytes) or len(record) < 12 + 16:
            return None
        try:
            plaintext = AESGCM(key).decrypt(record[:12], record[12:], session_id)
        except InvalidTag:
            return None
        session = Session.from_bytes(plaintext)
        return None if session is None or session.expired(self._clock()) else session

    async def delete(self, value: str) -> None:
        reference = self._reference(value)
        if reference is not None:
            name = hashlib.sha256(reference[0]).hexdigest()
            await self._call(self.client.delete(KEY_PREFIX + name, META_PREFIX + session_ref_id(name)))

    async def record_dead(self, digest: bytes, lifetime: float) -> None:
        """Remember the token with this SHA-256 dead for `lifetime` seconds, and tell every replica now.

        Replicas only ever see the digest, never the token.
        """
        name = digest.hex()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(DEAD_PREFIX + name, b"1", px=max(1000, int(lifetime * 1000)))
                pipe.publish(CHANNEL, name)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # This replica remembers it anyway; the others learn it from CentralAuth, one call each.
            log.warning("redis.dead_token_not_recorded", error=type(exc).__name__)

    async def dead_for(self, digest: bytes) -> float | None:
        """Seconds the token with this SHA-256 stays recorded dead; None if it is not, or Redis is away."""
        try:
            milliseconds = await self.client.pttl(DEAD_PREFIX + digest.hex())
        except (RedisError, OSError) as exc:
            log.warning("redis.dead_token_lookup_failed", error=type(exc).__name__)
            return None
        if milliseconds == -2:  # no such key
            return None
        return float("inf") if milliseconds < 0 else milliseconds / 1000

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    def _reference(self, value: str) -> tuple[bytes, bytes] | None:
        raw = self._sealer.unseal(value, self._purpose)
        if raw is None or len(raw) != _ID_BYTES + _KEY_BYTES:
            return None
        return raw[:_ID_BYTES], raw[_ID_BYTES:]

    @staticmethod
    def _key(session_id: bytes) -> str:
        return KEY_PREFIX + hashlib.sha256(session_id).hexdigest()

    @staticmethod
    async def _call(operation: Awaitable[T]) -> T:
        try:
            return await operation
        except (RedisError, OSError) as exc:
            raise SessionStoreUnavailable(f"redis: {type(exc).__name__}") from exc


def admin_purpose(cookie_name: str) -> str:
    """What the index's sealed token is sealed for: only session administration unseals it."""
    return f"session-admin:{cookie_name}"


def session_ref_id(name: str) -> str:
    """The id an operator sees for the session whose record is stored under `name`: the first 128 bits
    of the record's name, itself the SHA-256 of the random session id, so it gives nothing away."""
    return name[:32]


async def listen_for_revocations(
    client: aioredis.Redis, on_revoked: Callable[[str], None], retry_delay: float = 1.0
) -> None:
    """Feed every revoked-token digest published by any replica to `on_revoked`, until cancelled.

    Reconnects by itself when Redis goes away, so revocation broadcasts resume when it returns.
    """
    while True:
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message.get("data")
                        on_revoked(data.decode("ascii", "replace") if isinstance(data, bytes) else str(data))
        except (RedisError, OSError) as exc:
            log.warning("redis.subscription_lost", error=type(exc).__name__)
            await asyncio.sleep(retry_delay)


def client_for(session: SessionConfig) -> aioredis.Redis:
    """The client `[session]` describes (see `make_client`)."""
    return make_client(
        session.redis_url,
        sentinels=session.redis_sentinels,
        sentinel_master=session.redis_sentinel_master,
        ca_file=session.redis_ca_file,
        username=session.redis_username,
        password=session.redis_password.get_secret_value(),
    )


def make_client(
    url: str,
    *,
    sentinels: Sequence[str] = (),
    sentinel_master: str = "",
    ca_file: str = "",
    username: str = "",
    password: str = "",
) -> aioredis.Redis:
    """A client for `url`, or for the master the `sentinels` name `sentinel_master` (`url` then gives
    only the scheme, rediss:// for TLS, and the db number).

    `ca_file` verifies a rediss:// server (and the sentinels, which then speak TLS too); `username` and
    `password` (Redis ACL, or `requirepass` with no username) win over any in the URL and are sent to
    the data nodes only, never to the sentinels. Every wait has a bound: connecting, reading, and each
    sentinel asked where the master is.
    """
    # Short timeouts: a request waiting on a dead Redis should become a 503 quickly, not hang.
    options: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 1.0,
        "health_check_interval": 15,
        "retry_on_timeout": False,
    }
    tls = urlsplit(url).scheme == "rediss"
    if tls and ca_file:
        options["ssl_ca_certs"] = ca_file
    credentials = {name: value for name, value in (("username", username), ("password", password)) if value}
    if not sentinels:
        # At most MAX_CONNECTIONS per worker; a request that finds them all busy waits for one as
        # long as a read may take, then is a 503 like any Redis failure.
        pool = BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=1.0, **options)
        pool.connection_kwargs.update(credentials)
        return aioredis.Redis(connection_pool=pool)
    from_url = parse_url(url)
    if tls:
        options["ssl"] = True
    sentinel_options = {
        name: value
        for name, value in options.items()
        if name in ("socket_connect_timeout", "socket_timeout", "ssl", "ssl_ca_certs")
    }
    manager = Sentinel([split_host_port(address) for address in sentinels], sentinel_kwargs=sentinel_options)
    for name in ("username", "password"):
        if name in from_url and name not in credentials:
            credentials[name] = from_url[name]
    # redis-py has no blocking pool that follows the sentinels: past MAX_CONNECTIONS a request fails
    # at once (a 503) instead of waiting for a connection.
    options.update(credentials, db=int(from_url.get("db", 0)), max_connections=MAX_CONNECTIONS)
    master: aioredis.Redis = manager.master_for(sentinel_master, **options)
    return master
