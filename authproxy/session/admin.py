"""Session administration for the Redis store: list the sessions, revoke some or all of them.

It reads the index `RedisStore.save` keeps beside each record (`META_PREFIX`, and one set of ids per
user), never the records themselves, which only their cookie can decrypt. What it shows is the id,
the user, and when the session was made, last checked with CentralAuth, and ends: never a token or a
cookie value.

Revoking a session deletes its record and index entry, records its token dead for the rest of its life,
and publishes the token's digest on the revocation channel, in one transaction per batch. Every replica
and worker listening on the channel then refuses the token and closes its websockets and event streams
at once; one that was not listening finds the record gone, and the token recorded dead. With
`centralauth`, the CentralAuth session is ended too (session-wide logout with the token, which the
index holds sealed with the cookie secret).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from authproxy.core.seal import Sealer
from authproxy.session.redis import CHANNEL, DEAD_PREFIX, KEY_PREFIX, META_PREFIX, USER_PREFIX, RedisClient

# How many index entries one round trip reads or revokes.
_BATCH = 500


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    user: str
    user_id: str
    created: float
    expires: float
    last_check: float | None  # None until the session is first checked after the index knew it
    token_digest: str  # hex SHA-256 of the access token: what the dead-token memory is keyed by
    sealed_token: str
    record: str  # the name of the session's record, under KEY_PREFIX

    def public(self) -> dict[str, object]:
        """What an operator may see (list --json): nothing that would let anyone use the session."""
        return {
            "id": self.id,
            "user": self.user,
            "user_id": self.user_id,
            "created": self.created,
            "last_check": self.last_check,
            "expires": self.expires,
        }


async def sessions(client: RedisClient, user: str | None = None) -> list[SessionInfo]:
    """The live sessions (of `user`, by e-mail, case-insensitively), oldest first."""
    found: list[SessionInfo] = []
    async for ids in _ids(client, user):
        async with client.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(META_PREFIX + session_id)
            entries = await pipe.execute()
        for session_id, entry in zip(ids, entries, strict=True):
            info = _info(session_id, entry)
            if info is not None and (user is None or info.user.lower() == user.lower()):
                found.append(info)
    return sorted(found, key=lambda info: (info.created, info.id))


async def revoke(client: RedisClient, chosen: list[SessionInfo], now: Callable[[], float] = time.time) -> int:
    """End `chosen` on every replica; the number revoked."""
    for start in range(0, len(chosen), _BATCH):
        async with client.pipeline(transaction=True) as pipe:
            for info in chosen[start : start + _BATCH]:
                remaining = max(1.0, info.expires - now())
                pipe.delete(KEY_PREFIX + info.record, META_PREFIX + info.id)
                pipe.srem(USER_PREFIX + info.user.lower(), info.id)
                pipe.set(DEAD_PREFIX + info.token_digest, b"1", px=int(remaining * 1000))
                pipe.publish(CHANNEL, info.token_digest)
            await pipe.execute()
    return len(chosen)


async def end_at_centralauth(
    chosen: list[SessionInfo], sealer: Sealer, purpose: str, logout: Callable[[str], Awaitable[None]]
) -> list[tuple[SessionInfo, str]]:
    """Session-wide logout at CentralAuth for each of `chosen`; the ones that failed, and why."""
    failed = []
    for info in chosen:
        token = sealer.unseal(info.sealed_token, purpose)
        if token is None:
            failed.append((info, "its token is sealed with a cookie secret this config does not hold"))
            continue
        try:
            await logout(token.decode("utf-8", "surrogateescape"))
        except Exception as exc:  # one failure must not stop the others; each is reported
            failed.append((info, getattr(exc, "error_code", None) or type(exc).__name__))
    return failed


async def _ids(client: RedisClient, user: str | None) -> AsyncIterator[list[str]]:
    if user is not None:
        members = await client.smembers(USER_PREFIX + user.lower())
        ids = sorted(_text(member) for member in members)
        for start in range(0, len(ids), _BATCH):
            yield ids[start : start + _BATCH]
        return
    batch: list[str] = []
    async for name in client.scan_iter(match=META_PREFIX + "*", count=_BATCH):
        batch.append(_text(name)[len(META_PREFIX) :])
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _info(session_id: str, entry: dict[bytes, bytes]) -> SessionInfo | None:
    fields = {_text(name): _text(value) for name, value in entry.items()}
    token = fields.get("token", "")
    if len(token) != 64 or token.strip("0123456789abcdef"):
        return None  # not an entry of ours: its digest would name some other key
    try:
        return SessionInfo(
            id=session_id,
            user=fields["user"],
            user_id=fields.get("user_id", ""),
            created=float(fields["created"]),
            expires=float(fields["expires"]),
            last_check=float(fields["last_check"]) if "last_check" in fields else None,
            token_digest=fields["token"],
            sealed_token=fields.get("sealed_token", ""),
            record=fields["record"],
        )
    except (KeyError, ValueError):
        return None  # gone meanwhile, or not an entry of ours


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
