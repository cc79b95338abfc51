"""The session-check cache in isolation: keys, coalescing, cancellation, eviction and the stale window.

The end-to-end behaviour against the real fake CentralAuth is in test_session_check.py; here the fetch
function is a plain coroutine so the clock and the timing of answers can be controlled exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.provider.checker import SessionChecker
from authproxy.provider.user import User

USER = User("u1", "ada@example.com", True, False, "org", None)


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.answer: User | Exception = USER
        self.gate: asyncio.Event | None = None

    async def fetch(self, token: str, ip: str, agent: str) -> User:
        self.calls.append((token, ip, agent))
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def make(backend: Backend, now: list[float], **kwargs: float) -> SessionChecker:
    return SessionChecker(backend.fetch, clock=lambda: now[0], **{"ttl": 30.0, **kwargs})  # type: ignore[arg-type]


async def test_key_is_token_ip_and_agent() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    assert (await checker.check("t", "1.1.1.1", "ua")).source == "miss"
    assert (await checker.check("t", "1.1.1.1", "ua")).source == "hit"
    assert (await checker.check("t", "2.2.2.2", "ua")).source == "miss"
    assert (await checker.check("t", "1.1.1.1", "other")).source == "miss"
    assert len(backend.calls) == 3


async def test_ttl_expiry_refetches() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    await checker.check("t", "ip", "ua")
    now[0] = 29.9
    assert (await checker.check("t", "ip", "ua")).source == "hit"
    now[0] = 30.0
    assert (await checker.check("t", "ip", "ua")).source == "miss"


async def test_concurrent_checks_share_one_call_even_if_the_first_caller_leaves() -> None:
    backend, now = Backend(), [0.0]
    backend.gate = asyncio.Event()
    checker = make(backend, now)
    first = asyncio.ensure_future(checker.check("t", "ip", "ua"))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(checker.check("t", "ip", "ua")) for _ in range(29)]
    await asyncio.sleep(0)
    first.cancel()  # the first browser tab is closed mid-check
    backend.gate.set()
    outcomes = await asyncio.gather(*others)
    assert {outcome.source for outcome in outcomes} == {"coalesced"}
    assert len(backend.calls) == 1


async def test_rejection_evicts_every_entry_of_the_token() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    await checker.check("t", "ip1", "ua")
    await checker.check("t", "ip2", "ua")
    await checker.check("other", "ip1", "ua")
    now[0] = 31.0
    backend.answer = SessionRejected("sessionInvalid")
    with pytest.raises(SessionRejected):
        await checker.check("t", "ip1", "ua")
    assert len(checker) == 1  # only the other token's entry is left


async def test_explicit_evict() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    await checker.check("t", "ip", "ua")
    checker.evict("t")
    assert (await checker.check("t", "ip", "ua")).source == "miss"


async def test_stale_window() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now, stale_grace=60.0)
    await checker.check("t", "ip", "ua")
    backend.answer = CentralAuthUnavailable("down")
    now[0] = 50.0
    assert (await checker.check("t", "ip", "ua")).source == "stale"
    now[0] = 90.0
    with pytest.raises(CentralAuthUnavailable):
        await checker.check("t", "ip", "ua")


async def test_no_stale_answers_when_fail_closed() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    await checker.check("t", "ip", "ua")
    backend.answer = CentralAuthUnavailable("down")
    now[0] = 31.0
    with pytest.raises(CentralAuthUnavailable):
        await checker.check("t", "ip", "ua")


async def test_outages_are_not_cached() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    backend.answer = CentralAuthUnavailable("down")
    with pytest.raises(CentralAuthUnavailable):
        await checker.check("t", "ip", "ua")
    backend.answer = USER
    assert (await checker.check("t", "ip", "ua")).source == "miss"


async def test_lru_bound() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now, max_entries=100)
    for i in range(1000):
        await checker.check(f"t{i}", "ip", "ua")
    assert len(checker) == 100
    assert len(checker._by_token) == 100
    assert (await checker.check("t999", "ip", "ua")).source == "hit"
    assert (await checker.check("t0", "ip", "ua")).source == "miss"
