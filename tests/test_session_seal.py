"""Cookie sealing and the cookie store: rotation, binding to the cookie name, and hostile cookie values."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.core.seal import Sealer
from authproxy.errors import SessionTooLarge
from authproxy.session.model import Session
from authproxy.session.store import CookieStore

OLD = "o" * 32
NEW = "n" * 40
OTHER = "x" * 32


def make_session(**overrides: Any) -> Session:
    values: dict[str, Any] = {
        "access_token": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0..iv.ct.tag" + "A" * 300,
        "user_id": "6f1c2b9e-0d1e-4c5a-9a57-1d2f3e4a5b6c",
        "email": "ada@example.com",
        "created_at": 1_000.0,
        "expires_at": 2_000.0,
    }
    values.update(overrides)
    return Session(**values)


def test_round_trip() -> None:
    sealer = Sealer([NEW])
    assert sealer.unseal(sealer.seal(b"payload", "p"), "p") == b"payload"


def test_each_seal_is_fresh() -> None:
    sealer = Sealer([NEW])
    assert sealer.seal(b"same", "p") != sealer.seal(b"same", "p")


def test_rotation_first_seals_all_unseal() -> None:
    old_value = Sealer([OLD]).seal(b"made before rotation", "p")
    rotated = Sealer([NEW, OLD])
    assert rotated.unseal(old_value, "p") == b"made before rotation"
    new_value = rotated.seal(b"after", "p")
    assert Sealer([NEW]).unseal(new_value, "p") == b"after"
    assert Sealer([OLD]).unseal(new_value, "p") is None


def test_retired_secret_no_longer_opens() -> None:
    old_value = Sealer([OLD]).seal(b"x", "p")
    assert Sealer([NEW]).unseal(old_value, "p") is None


def test_value_is_bound_to_its_purpose() -> None:
    sealer = Sealer([NEW])
    assert sealer.unseal(sealer.seal(b"x", "session:_authproxy"), "session:_other") is None


def _flip(value: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[index % len(raw)] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


HOSTILE = [
    "",
    "=",
    "not base64 at all!",
    "AAAA",
    "A" * 40,
    "é" * 30,
    "\x00" * 30,
    "a" * 20000,
    "AQ" + "A" * 60,  # right version byte, unknown key id
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_unseal_to_none(value: str) -> None:
    assert Sealer([NEW]).unseal(value, "p") is None


def test_tampering_anywhere_is_detected() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal(b"some session payload", "p")
    length = len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    for index in range(length):
        assert sealer.unseal(_flip(value, index), "p") is None, index


def test_truncation_and_extension_are_detected() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal(b"some session payload", "p")
    for cut in range(len(value)):
        assert sealer.unseal(value[:cut], "p") is None
    assert sealer.unseal(value + "A", "p") is None
    assert sealer.unseal(value + "AAAA", "p") is None
    assert sealer.unseal(value[:10] + "!" + value[10:], "p") is None


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=600))
def test_arbitrary_text_never_raises(value: str) -> None:
    assert Sealer([NEW, OLD]).unseal(value, "p") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(min_value=0))
def test_bit_flips_of_real_values_never_open(payload: bytes, index: int) -> None:
    sealer = Sealer([NEW])
    value = sealer.seal(payload, "p")
    assert sealer.unseal(value, "p") == payload
    assert sealer.unseal(_flip(value, index), "p") is None


def test_sealer_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Sealer([])


async def test_cookie_store_round_trip_and_expiry() -> None:
    now = [1_500.0]
    store = CookieStore(Sealer([NEW]), "_authproxy", clock=lambda: now[0])
    session = make_session()
    value = await store.save(session)
    assert await store.load(value) == session
    now[0] = 2_000.0
    assert await store.load(value) is None


async def test_cookie_store_refuses_other_cookie_names_and_foreign_secrets() -> None:
    value = await CookieStore(Sealer([NEW]), "_authproxy", clock=lambda: 1_500.0).save(make_session())
    assert await CookieStore(Sealer([NEW]), "_other", clock=lambda: 1_500.0).load(value) is None
    assert await CookieStore(Sealer([OTHER]), "_authproxy", clock=lambda: 1_500.0).load(value) is None


async def test_sealed_but_malformed_payload_is_not_a_session() -> None:
    sealer = Sealer([NEW])
    store = CookieStore(sealer, "_authproxy", clock=lambda: 1_500.0)
    for payload in (b"{}", b"[]", b"null", b'{"t":1,"u":"a","e":"b","c":1,"x":9e9}', b"\xff"):
        assert await store.load(sealer.seal(payload, "session:_authproxy")) is None


async def test_real_sized_session_fits_a_cookie_and_huge_one_is_refused() -> None:
    store = CookieStore(Sealer([NEW]), "_authproxy")
    # A CentralAuth access token carries only a session id; 1 KB is several times a real one.
    assert len(await store.save(make_session(access_token="t" * 1024))) < 2000
    with pytest.raises(SessionTooLarge):
        await store.save(make_session(access_token="t" * 3000))


async def test_unsealed_sessions_are_memoized_bounded_and_still_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_500.0]
    sealer = Sealer([NEW])
    store = CookieStore(sealer, "_authproxy", clock=lambda: now[0], memo_size=2)
    values = [await store.save(make_session(user_id=f"u{i}")) for i in range(3)]
    calls = []
    original = sealer.unseal

    def counting(value: str, purpose: str) -> bytes | None:
        calls.append(value)
        return original(value, purpose)

    monkeypatch.setattr(sealer, "unseal", counting)
    for _ in range(3):
        assert (await store.load(values[0])) is not None
    assert len(calls) == 1  # decrypted once, then served from the memo
    for value in values:
        await store.load(value)
    assert len(store._memo) == 2
    assert await store.load(_tamper_text(values[0])) is None
    assert len(store._memo) == 2  # a bad value is never remembered
    now[0] = 2_000.0
    assert await store.load(values[2]) is None  # memoized, but expired all the same


def _tamper_text(value: str) -> str:
    return value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
