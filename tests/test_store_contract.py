"""The session store contract (`authproxy.session.store.SessionStore`), one suite for both stores.

Every test runs against the cookie store (the session sealed into the cookie) and the Redis store (the
cookie holds a sealed reference; the session lives encrypted in a real redis-server of the test's own).
The contract: what `save` returns fits a cookie and `load`s back as an equal session; `load` of anything
else — empty, garbage, unknown, expired, tampered, truncated, sealed under another secret or for another
cookie — is None and never raises; `delete` leaves nothing server-side. Time is a `FakeClock` the tests
advance. Where a point holds for one store only by design (a cookie store keeps nothing it could
forget), that parametrization is an expected failure with the reason, and the store's own behaviour is
asserted next to it. The Redis store's own limits (reference size, record size, TTL, an outage) close
the file.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support.harness import FakeClock
from support.redis_server import RedisServer
from support.sessions import LIFETIME, NOW, session

from authproxy.core.seal import Sealer
from authproxy.errors import SessionStoreUnavailable, SessionTooLarge
from authproxy.session.model import Session
from authproxy.session.redis import KEY_PREFIX, RedisClient, RedisStore, make_client
from authproxy.session.store import MAX_COOKIE_VALUE, CookieStore, SessionStore

SECRET = "contract-secret-0123456789abcdefghijklmnopqrstuv"
OTHER_SECRET = "contract-other-0123456789abcdefghijklmnopqrstuv"
NEW_SECRET = "contract-newer-0123456789abcdefghijklmnopqrstuv"
NAME = "_authproxy"
# A Redis reference is 32 bytes of id and 32 of key; sealed (17 bytes of header, 16 of tag) and in
# unpadded base64 that is 130 characters, whatever the session's size.
REFERENCE_LENGTH = (4 * (17 + 64 + 16) + 2) // 3


@dataclass
class Case:
    """One store under the contract, and what a test needs to look behind it."""

    kind: str  # "cookie" or "redis"
    store: SessionStore
    clock: FakeClock
    client: RedisClient | None  # the Redis store's connection; None for the cookie store

    @property
    def purpose(self) -> str:
        """What the store's values are sealed for (the cookie's name, bound as associated data)."""
        return f"session:{NAME}" if self.client is None else f"session-ref:{NAME}"

    def replica(self, secrets: Sequence[str] = (SECRET,), cookie_name: str = NAME) -> SessionStore:
        """Another instance of the same store over the same backing (another replica of the proxy)."""
        sealer = Sealer(list(secrets))
        if self.client is None:
            return CookieStore(sealer, cookie_name, clock=self.clock)
        return RedisStore(self.client, sealer, cookie_name, clock=self.clock)

    async def records(self) -> int:
        """How many sessions the store keeps server-side."""
        return 0 if self.client is None else len(await self.client.keys(KEY_PREFIX + "*"))


@pytest.fixture(params=["cookie", "redis"])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    clock = FakeClock(NOW)
    if request.param == "cookie":
        yield Case("cookie", CookieStore(Sealer([SECRET]), NAME, clock=clock), clock, None)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = make_client(server.url)
    try:
        yield Case("redis", RedisStore(client, Sealer([SECRET]), NAME, clock=clock), clock, client)
    finally:
        await client.aclose()


async def only_record(client: RedisClient) -> tuple[str, bytes]:
    (key,) = await client.keys(KEY_PREFIX + "*")
    record = await client.get(key)
    assert isinstance(record, bytes)
    return key.decode() if isinstance(key, bytes) else key, record


def reseal_record(reference: bytes, plaintext: bytes) -> bytes:
    """A record as the Redis store writes it (nonce, then AES-GCM under the per-session key, bound to the
    session id), holding `plaintext`: what only the holder of the cookie's reference can make."""
    session_id, key = reference[:32], reference[32:]
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, session_id)


def fails_on_the_cookie_store(reason: str) -> pytest.MarkDecorator:
    """Run on both stores; on the cookie store the point fails by design, for `reason`."""
    return pytest.mark.parametrize(
        "case",
        [
            pytest.param(
                "cookie", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)
            ),
            "redis",
        ],
        indirect=True,
    )


# --- save and load ----------------------------------------------------------------------------------------

SESSIONS = {
    "typical": session(),
    "non-ascii-email": session(email="zoë.ångström@exämple.com"),
    "fractional-times": session(created_at=NOW - 0.125, expires_at=NOW + 90.5),
    "integer-times": session(created_at=int(NOW), expires_at=int(NOW) + 60),
    "quotes-and-backslashes": session(access_token='a"b\\c', user_id="{}[]"),
}


@pytest.mark.parametrize("saved", SESSIONS.values(), ids=SESSIONS.keys())
async def test_save_then_load_returns_an_equal_session(case: Case, saved: Session) -> None:
    value = await case.store.save(saved)
    assert isinstance(value, str) and 0 < len(value) <= MAX_COOKIE_VALUE
    assert value.isascii() and set(value) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    ), "a cookie value needs no quoting"
    loaded = await case.store.load(value)
    assert loaded == saved
    assert await case.store.load(value) == saved  # and again (the cookie store's memo)
    assert await case.replica().load(value) == saved  # on any replica with the same secret


async def test_each_save_is_its_own_value(case: Case) -> None:
    first, second = session(email="ada@example.com"), session(email="grace@example.com")
    values = [await case.store.save(first), await case.store.save(first), await case.store.save(second)]
    assert len(set(values)) == 3  # fresh nonces (and, in Redis, fresh ids): nothing to correlate
    assert [await case.store.load(value) for value in values] == [first, first, second]
    assert await case.records() == (0 if case.kind == "cookie" else 3)


# --- anything else loads as None ----------------------------------------------------------------------------


GARBAGE = {
    "empty": "",
    "word": "garbage",
    "padding-only": "====",
    "base64-of-nothing-much": "A" * 86,
    "reference-length": "A" * REFERENCE_LENGTH,
    "not-the-alphabet": "!!!!$$$$" * 20,
    "standard-base64-alphabet": "ab+/" * 40,
    "whitespace": " \t\r\n",
    "nul": "\x00" * 40,
    "non-ascii": "sëssion-ü" * 10,
    "lone-surrogate": "\udcff" * 10,
    "over-16-kib": "A" * 20_000,
}


@pytest.mark.parametrize("value", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_loads_as_none_and_deletes_quietly(case: Case, value: str) -> None:
    await case.store.save(session())
    assert await case.store.load(value) is None
    await case.store.delete(value)  # a garbage cookie at sign-out deletes nothing and raises nothing
    assert await case.records() == (0 if case.kind == "cookie" else 1)


@pytest.mark.parametrize("size", [0, 16, 63, 64, 65, 300])
async def test_a_value_sealed_right_but_standing_for_no_session_loads_as_none(case: Case, size: int) -> None:
    """Correctly sealed for this store (only the key holder can make one), yet no session: random bytes
    where a session or a reference belongs, or a reference to a record that was never written."""
    value = Sealer([SECRET]).seal(os.urandom(size), case.purpose)
    assert await case.store.load(value) is None
    await case.store.delete(value)


async def test_a_sealed_value_of_the_wrong_shape_loads_as_none(case: Case) -> None:
    """Sealed JSON that is not a session (a field missing, a field of another type): refused, not raised."""
    good = session().to_bytes()
    for plaintext in (
        b"{}",
        b"[]",
        b"null",
        good.replace(b'"t":', b'"T":'),
        good.replace(b'"ada@example.com"', b"42"),
        good.replace(str(NOW + LIFETIME).encode(), b'"tomorrow"'),
    ):
        assert plaintext != good
        if case.client is None:
            value = Sealer([SECRET]).seal(plaintext, case.purpose)
        else:  # the Redis store's shape check runs on the record, so write one holding `plaintext`
            value = await case.store.save(session())
            key, record = await only_record(case.client)
            reference = Sealer([SECRET]).unseal(value, case.purpose)
            assert reference is not None
            await case.client.set(key, reseal_record(reference, plaintext))
            assert record != await case.client.get(key)
        assert await case.store.load(value) is None, plaintext
        if case.client is not None:
            await case.client.flushdb()


# --- delete and revocation ----------------------------------------------------------------------------------


@fails_on_the_cookie_store(
    "a cookie session is kept nowhere but in the cookie: `delete` cannot make a copied value stop "
    "loading; the session checker's dead-token memory refuses it instead (store.py)"
)
async def test_delete_makes_load_return_none(case: Case) -> None:
    value = await case.store.save(session())
    assert await case.store.load(value) == session()
    await case.store.delete(value)
    assert await case.store.load(value) is None


@fails_on_the_cookie_store(
    "revocation of a cookie session is the session checker's dead-token record, shared through Redis "
    "or kept per replica, not anything the cookie store holds"
)
async def test_a_revocation_on_one_replica_is_seen_by_every_other(case: Case) -> None:
    here, there = case.replica(), case.replica()
    value = await here.save(session())
    assert await there.load(value) == session()
    await here.delete(value)
    assert await there.load(value) is None
    assert await case.store.load(value) is None


async def test_delete_leaves_nothing_server_side(case: Case) -> None:
    kept = await case.store.save(session(email="grace@example.com"))
    value = await case.store.save(session())
    assert await case.records() == (0 if case.kind == "cookie" else 2)
    await case.store.delete(value)
    assert await case.records() == (0 if case.kind == "cookie" else 1)
    await case.store.delete(value)  # twice: a repeated sign-out raises nothing
    assert await case.store.load(kept) == session(email="grace@example.com")  # only that one went


async def test_the_cookie_store_keeps_nothing_to_delete() -> None:
    """The cookie store's documented `delete` (store.py): nothing server-side, so a value copied before the
    sign-out still unseals; clearing the browser's cookie and the dead-token memory do the rest."""
    clock = FakeClock(NOW)
    store = CookieStore(Sealer([SECRET]), NAME, clock=clock)
    value = await store.save(session())
    assert await store.load(value) == session()
    await store.delete(value)
    assert await store.load(value) == session()
    assert await CookieStore(Sealer([SECRET]), NAME, clock=clock).load(value) == session()


# --- expiry -----------------------------------------------------------------------------------------------


async def test_a_session_loads_until_it_expires(case: Case) -> None:
    saved = session(expires_at=NOW + 60)
    value = await case.store.save(saved)
    assert await case.store.load(value) == saved
    case.clock.advance(59.999)
    assert await case.store.load(value) == saved
    case.clock.advance(0.001)  # now == expires_at: over
    assert await case.store.load(value) is None
    assert await case.replica().load(value) is None
    case.clock.advance(86_400)
    assert await case.store.load(value) is None


async def test_a_session_saved_already_expired_never_loads(case: Case) -> None:
    for expires_at in (NOW - 86_400, NOW - 0.001, NOW):
        value = await case.store.save(session(created_at=NOW - 90_000, expires_at=expires_at))
        assert await case.store.load(value) is None, expires_at


async def test_a_clock_turned_back_does_not_revive_nor_end_a_session(case: Case) -> None:
    """Expiry is the session's own `expires_at` against the clock, nothing remembered from an earlier load."""
    value = await case.store.save(session(expires_at=NOW + 60))
    case.clock.advance(120)
    assert await case.store.load(value) is None
    case.clock.advance(-119)
    assert await case.store.load(value) == session(expires_at=NOW + 60)


# --- size ---------------------------------------------------------------------------------------------------

# The longest access token whose sealed session is exactly MAX_COOKIE_VALUE characters: 2850 bytes of
# header, ciphertext and tag make 3800 characters of unpadded base64.
FITS = (MAX_COOKIE_VALUE * 3) // 4 - 17 - 16 - len(session(access_token="").to_bytes())


@pytest.mark.parametrize("extra", [0, 1, 8_000], ids=["at-the-limit", "one-over", "8-kb-over"])
async def test_a_session_too_large_for_a_cookie(case: Case, extra: int) -> None:
    """The cookie store refuses, at save, a session that would not fit a browser's cookie; the Redis
    store's cookie holds a reference of one size whatever the session."""
    large = session(access_token="t" * (FITS + extra))
    if case.kind == "cookie" and extra:
        with pytest.raises(SessionTooLarge):
            await case.store.save(large)
        return
    value = await case.store.save(large)
    assert len(value) == (MAX_COOKIE_VALUE if case.kind == "cookie" else REFERENCE_LENGTH)
    assert await case.store.load(value) == large


# --- tampering ----------------------------------------------------------------------------------------------

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def flipped(value: str, index: int) -> str:
    """`value` with the character at `index` changed in its highest bit, which always carries data (the
    spare bits of unpadded base64 are the lowest of the last character)."""
    changed = ALPHABET[ALPHABET.index(value[index]) ^ 32]
    return value[:index] + changed + value[index + 1 :]


async def test_every_flipped_character_loads_as_none(case: Case) -> None:
    value = await case.store.save(session())
    for index in range(len(value)):
        assert await case.store.load(flipped(value, index)) is None, index
    assert await case.store.load(value) == session()  # the genuine value still opens


async def test_every_truncation_and_extension_loads_as_none(case: Case) -> None:
    value = await case.store.save(session())
    for length in range(len(value)):
        assert await case.store.load(value[:length]) is None, length
    # (Base64 padding is no extension: `value + "="` may spell the very same bytes, which then open.)
    for tail in ("A", "AA", "AAAA", "A==", "AAAAAAAA"):
        assert await case.store.load(value + tail) is None, tail
    assert await case.store.load(value[1:]) is None
    assert await case.store.load(value) == session()


async def test_a_store_with_another_secret_or_cookie_name_refuses_the_value(case: Case) -> None:
    value = await case.store.save(session())
    assert await case.replica(secrets=[OTHER_SECRET]).load(value) is None
    assert await case.replica(cookie_name="_other").load(value) is None
    assert await case.replica(cookie_name=NAME + "_csrf").load(value) is None
    # Rotation: a new secret in front, the old one still listed, still opens it; the old one dropped does not.
    assert await case.replica(secrets=[NEW_SECRET, SECRET]).load(value) == session()
    assert await case.replica(secrets=[NEW_SECRET]).load(value) is None


async def test_the_same_content_sealed_otherwise_loads_as_none(case: Case) -> None:
    """What the value carries (the session, or the Redis reference), resealed: under this store's secret
    and purpose it opens (so the resealing is sound); under another secret or purpose it does not."""
    value = await case.store.save(session())
    content = Sealer([SECRET]).unseal(value, case.purpose)
    assert content is not None
    assert await case.store.load(Sealer([SECRET]).seal(content, case.purpose)) == session()
    assert await case.store.load(Sealer([OTHER_SECRET]).seal(content, case.purpose)) is None
    for purpose in (
        f"session:{NAME}" if case.kind == "redis" else f"session-ref:{NAME}",  # the other store's
        f"{case.purpose.split(':')[0]}:_other",  # another cookie's
        f"{NAME}_login_{'S' * 43}",  # a pending login's transaction cookie's
        "",
    ):
        assert await case.store.load(Sealer([SECRET]).seal(content, purpose)) is None, purpose


# --- the Redis store's own limits ---------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisClient, FakeClock]]:
    clock = FakeClock(NOW)
    client = make_client(redis_server.url)
    yield RedisStore(client, Sealer([SECRET]), NAME, clock=clock), client, clock
    await client.aclose()


async def test_redis_record_lives_as_long_as_the_session(
    redis: tuple[RedisStore, RedisClient, FakeClock],
) -> None:
    store, client, _ = redis
    await store.save(session(expires_at=NOW + 600))
    key, _ = await only_record(client)
    assert 599_000 < await client.pttl(key) <= 600_000
    await client.flushdb()
    # Already over when saved: Redis takes no expiry under one second, so one second it is.
    await store.save(session(expires_at=NOW - 30))
    key, _ = await only_record(client)
    assert 0 < await client.pttl(key) <= 1000


async def test_redis_record_is_under_a_hash_of_the_id_and_holds_no_plaintext(
    redis: tuple[RedisStore, RedisClient, FakeClock],
) -> None:
    store, client, _ = redis
    value = await store.save(session())
    reference = Sealer([SECRET]).unseal(value, f"session-ref:{NAME}")
    assert reference is not None and len(reference) == 64
    key, record = await only_record(client)
    assert key == KEY_PREFIX + hashlib.sha256(reference[:32]).hexdigest()
    for secret in (b"ada@example.com", session().access_token.encode(), reference[:32], reference[32:]):
        assert secret not in record and base64.b64encode(secret) not in record


@pytest.mark.parametrize("length", [0, 1, 27, 28, 44])
async def test_redis_records_too_short_or_wrong_load_as_none(
    redis: tuple[RedisStore, RedisClient, FakeClock], length: int
) -> None:
    """A record must hold a 12-byte nonce and a 16-byte tag at least, and open under the session's key."""
    store, client, _ = redis
    value = await store.save(session())
    key, record = await only_record(client)
    await client.set(key, record[:length])
    assert await store.load(value) is None
    await client.set(key, bytes(length))
    assert await store.load(value) is None
    await client.set(key, record)
    assert await store.load(value) == session()


async def test_redis_away_is_an_outage_never_a_logout(
    redis: tuple[RedisStore, RedisClient, FakeClock], redis_server: RedisServer
) -> None:
    """With Redis stopped a genuine value raises SessionStoreUnavailable (a 503), rather than loading as
    None (a logout); a value that is no reference at all is still None, without asking Redis."""
    store, _, _ = redis
    value = await store.save(session())
    redis_server.stop()
    with pytest.raises(SessionStoreUnavailable):
        await store.load(value)
    with pytest.raises(SessionStoreUnavailable):
        await store.save(session())
    with pytest.raises(SessionStoreUnavailable):
        await store.delete(value)
    assert await store.load("garbage") is None
    await store.delete("garbage")
    redis_server.start()
    assert await store.load(value) == session()  # the record survived (append-only file)
