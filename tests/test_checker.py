"""The session-check cache in isolation: keys, coalescing, cancellation, eviction, the stale window, and
the memory of dead tokens.

The end-to-end behaviour against the real fake CentralAuth is in test_session_check.py; here the fetch
function is a plain coroutine so the clock and the timing of answers can be controlled exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from authproxy.core.user import User
from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.provider.checker import SessionChecker, SessionKnownDead

USER = User("u1", "ada@example.com", True, False, "org", None)


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.answer: User | Exception = USER
        self.gate: asyncio.Event | None = None

    async def fetch(self, token: str, ip: str, agent: str, device_id: str = "") -> User:
        self.calls.append((token, ip, agent))
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def make(backend: Backend, now: list[float], *, ttl: float = 30.0, **kwargs: Any) -> SessionChecker:
    return SessionChecker(backend.fetch, clock=lambda: now[0], ttl=ttl, **kwargs)


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


@pytest.mark.parametrize("code", ["noPermission", "domainInvalid", "genericError", "unknown"])
async def test_a_refusal_not_about_the_session_is_not_remembered(code: str) -> None:
    """Bad client credentials or a domain not yet whitelisted refuse every token; once the operator
    fixes that, the same tokens must work again without a new login."""
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    backend.answer = SessionRejected(code)
    with pytest.raises(SessionRejected) as refused:
        await checker.check("t", "ip", "ua")
    assert not isinstance(refused.value, SessionKnownDead)
    backend.answer = USER
    assert (await checker.check("t", "ip", "ua")).source == "miss"
    assert len(backend.calls) == 2


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


# --- dead tokens and coalescing across keys -------------------------------------------------------------


class SharedMemory:
    """An in-process stand-in for the Redis dead-token record, with the same two calls."""

    def __init__(self) -> None:
        self.dead: dict[bytes, float] = {}
        self.lookups = 0

    async def dead_for(self, digest: bytes) -> float | None:
        self.lookups += 1
        return self.dead.get(digest)

    async def record_dead(self, digest: bytes, lifetime: float) -> None:
        self.dead[digest] = lifetime


async def test_a_rejected_token_is_refused_from_any_ip_and_agent_without_a_call() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    backend.answer = SessionRejected("sessionInvalid")
    with pytest.raises(SessionRejected) as first:
        await checker.check("t", "ip1", "ua1")
    assert not isinstance(first.value, SessionKnownDead)  # the first one is news, to be audited
    for index in range(300):
        with pytest.raises(SessionKnownDead):
            await checker.check("t", f"ip{index % 7}", f"agent {index}")
    assert len(backend.calls) == 1
    backend.answer = USER
    assert (await checker.check("other", "ip1", "ua1")).source == "miss"  # other tokens are unaffected


async def test_a_dead_token_is_remembered_for_the_sessions_remaining_life_only() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now, dead_lifetime=1000.0)
    backend.answer = SessionRejected("sessionInvalid")
    with pytest.raises(SessionRejected):
        await checker.check("t", "ip", "ua", lifetime=100.0)
    now[0] = 99.0
    with pytest.raises(SessionKnownDead):
        await checker.check("t", "ip", "ua2")
    now[0] = 100.0  # the session has expired anyway: its cookie no longer loads, the memory may go
    with pytest.raises(SessionRejected) as again:
        await checker.check("t", "ip", "ua3")
    assert not isinstance(again.value, SessionKnownDead)
    assert len(backend.calls) == 2
    # Without a lifetime, or a longer one than any session can have, `dead_lifetime` bounds it.
    with pytest.raises(SessionRejected):
        await checker.check("u", "ip", "ua", lifetime=10**9)
    now[0] = 100.0 + 999.0
    with pytest.raises(SessionKnownDead):
        await checker.check("u", "ip", "ua")
    now[0] = 100.0 + 1000.0
    assert not checker.dead.holds(_sha256("u"))


async def test_concurrent_misses_under_300_agents_wait_for_the_one_call_in_flight() -> None:
    backend, now = Backend(), [0.0]
    backend.gate = asyncio.Event()
    backend.answer = SessionRejected("sessionInvalid")
    checker = make(backend, now)
    checks = [asyncio.ensure_future(checker.check("t", "ip", f"agent {index}")) for index in range(300)]
    await asyncio.sleep(0.01)
    assert len(backend.calls) == 1
    backend.gate.set()
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert len(backend.calls) == 1
    fresh = [r for r in results if isinstance(r, SessionRejected) and not isinstance(r, SessionKnownDead)]
    assert len(fresh) == 1
    assert sum(isinstance(r, SessionKnownDead) for r in results) == 299


async def test_waiters_on_the_same_key_learn_of_a_rejection_as_already_known() -> None:
    backend, now = Backend(), [0.0]
    backend.gate = asyncio.Event()
    backend.answer = SessionRejected("sessionInvalid")
    checker = make(backend, now)
    checks = [asyncio.ensure_future(checker.check("t", "ip", "ua")) for _ in range(30)]
    await asyncio.sleep(0)
    backend.gate.set()
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert len(backend.calls) == 1
    assert sum(not isinstance(r, SessionKnownDead) for r in results) == 1  # one audit, not thirty


async def test_a_positive_answer_is_never_reused_for_another_key() -> None:
    backend, now = Backend(), [0.0]
    backend.gate = asyncio.Event()
    checker = make(backend, now)
    checks = [asyncio.ensure_future(checker.check("t", "ip", f"agent {index}")) for index in range(5)]
    await asyncio.sleep(0.01)
    assert len(backend.calls) == 1  # the others wait: the call in flight might find the token dead
    backend.gate.set()
    outcomes = await asyncio.gather(*checks)
    assert {outcome.source for outcome in outcomes} == {"miss"}
    # Every key made its own call with its own agent (hijack protection judges each), one at a time.
    assert sorted(agent for _, _, agent in backend.calls) == [f"agent {index}" for index in range(5)]


async def test_waiting_on_another_keys_call_is_bounded_by_the_wait() -> None:
    backend, now = Backend(), [0.0]
    stuck = asyncio.Event()

    async def fetch(token: str, ip: str, agent: str, device_id: str = "") -> User:
        backend.calls.append((token, ip, agent))
        if agent == "stuck":
            await stuck.wait()
        return USER

    checker = SessionChecker(fetch, ttl=30.0, wait=0.05, clock=lambda: now[0])
    hanging = asyncio.ensure_future(checker.check("t", "ip", "stuck"))
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    assert (await checker.check("t", "ip", "other")).source == "miss"
    assert 0.04 <= asyncio.get_running_loop().time() - started < 1.0
    stuck.set()
    await hanging


async def test_an_outage_of_the_call_waited_for_sends_the_next_key_to_ask_at_once() -> None:
    now = [0.0]
    gate = asyncio.Event()
    calls: list[str] = []

    async def fetch(token: str, ip: str, agent: str, device_id: str = "") -> User:
        calls.append(agent)
        if agent == "ua1":
            await gate.wait()
            raise CentralAuthUnavailable("down")
        return USER

    checker = SessionChecker(fetch, ttl=30.0, wait=60.0, clock=lambda: now[0])
    first = asyncio.ensure_future(checker.check("t", "ip", "ua1"))
    second = asyncio.ensure_future(checker.check("t", "ip", "ua2"))
    await asyncio.sleep(0.01)
    assert calls == ["ua1"]
    gate.set()
    with pytest.raises(CentralAuthUnavailable):
        await first
    # The outage says nothing about the second key: it asks for itself, not after the 60 s wait.
    assert (await asyncio.wait_for(second, 1.0)).source == "miss"
    assert calls == ["ua1", "ua2"]


async def test_sign_out_makes_the_token_dead_even_for_an_answer_still_in_flight() -> None:
    backend, now = Backend(), [0.0]
    backend.gate = asyncio.Event()
    checker = make(backend, now)
    in_flight = asyncio.ensure_future(checker.check("t", "ip", "ua"))
    await asyncio.sleep(0)
    await checker.revoke("t", lifetime=60.0)
    backend.gate.set()
    # CentralAuth answered before the sign-out reached it, but the answer is neither used nor cached.
    with pytest.raises(SessionKnownDead):
        await in_flight
    assert len(checker) == 0
    with pytest.raises(SessionKnownDead):
        await checker.check("t", "ip", "ua")
    assert len(backend.calls) == 1


async def test_a_death_seen_elsewhere_is_refused_here() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    await checker.check("t", "ip", "ua")
    checker.dead_elsewhere(_sha256("t"))
    checker.dead_elsewhere(b"not a digest")
    assert len(checker) == 0 and len(checker.dead) == 1
    with pytest.raises(SessionKnownDead):
        await checker.check("t", "ip", "ua")
    assert len(backend.calls) == 1


async def test_the_shared_memory_is_written_on_a_death_and_read_before_a_call() -> None:
    shared = SharedMemory()
    backend, now = Backend(), [0.0]
    first = SessionChecker(backend.fetch, ttl=30.0, shared=shared, clock=lambda: now[0])
    backend.answer = SessionRejected("sessionInvalid")
    with pytest.raises(SessionRejected):
        await first.check("t", "ip", "ua", lifetime=500.0)
    await first.revoke("signed-out", lifetime=60.0)
    assert shared.dead == {_sha256("t"): 500.0, _sha256("signed-out"): 60.0}
    second = SessionChecker(backend.fetch, ttl=30.0, shared=shared, clock=lambda: now[0])
    for token in ("t", "signed-out"):
        with pytest.raises(SessionKnownDead):
            await second.check(token, "ip", "ua")
        assert second.dead.holds(_sha256(token))
    assert len(backend.calls) == 1  # only the first replica's call, which found it dead


async def test_keys_hold_fixed_size_digests_not_header_values() -> None:
    backend, now = Backend(), [0.0]
    checker = make(backend, now)
    agent = "A" * 8192
    await checker.check("t", "ip", agent)
    ((digest, ip, agent_digest),) = list(checker._entries)
    assert len(digest) == 32 and ip == "ip" and len(agent_digest) == 16
    assert backend.calls == [("t", "ip", agent)]  # CentralAuth still gets the real header


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def test_the_synchronous_hit_agrees_with_check() -> None:
    """`cached` answers only what `check` would answer as a hit, and nothing else."""
    backend, now = Backend(), [0.0]
    checker = make(backend, now, ttl=30.0)
    assert checker.cached("t", "1.1.1.1", "ua") is None  # never seen
    await checker.check("t", "1.1.1.1", "ua")
    assert checker.cached("t", "1.1.1.1", "ua") == USER
    assert checker.cached("t", "2.2.2.2", "ua") is None  # another IP: another key
    assert checker.cached("t", "1.1.1.1", "other") is None  # another agent
    assert checker.cached("t", "1.1.1.1", "ua", device_id="d") is None  # a native client's key differs
    await checker.check("t", "1.1.1.1", "ua", device_id="d")
    assert checker.cached("t", "1.1.1.1", "ua", device_id="d") == USER
    long_agent = "x" * 600  # past the agent memo: always the full path
    await checker.check("t", "1.1.1.1", long_agent)
    assert checker.cached("t", "1.1.1.1", long_agent) is None
    assert (await checker.check("t", "1.1.1.1", long_agent)).source == "hit"
    now[0] = 10.0
    assert checker.cached("t", "1.1.1.1", "ua", ttl=5.0) is None  # a route's shorter TTL
    assert checker.cached("t", "1.1.1.1", "ua", ttl=0.0) is None
    assert checker.cached("t", "1.1.1.1", "ua") == USER
    await checker.revoke("t")
    assert checker.cached("t", "1.1.1.1", "ua") is None  # a dead token's entries are gone
    now[0] = 31.0
    await checker.check("u", "1.1.1.1", "ua")
    assert checker.cached("u", "1.1.1.1", "ua") == USER
    now[0] = 61.0
    assert checker.cached("u", "1.1.1.1", "ua") is None  # past the TTL
