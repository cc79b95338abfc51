"""Per-session state is dropped when it can no longer be used, not only when a size bound is reached.

Found by the soak (soak/README.md): under steady logins the session-check cache kept one entry per
session ever seen, about 700 bytes each, until `cache_max_entries` (100 000 by default) pushed them out,
so a worker's memory grew for hours before levelling off. A review then found each entry kept the raw
user agent (up to 8 KB): one client varying it grew a worker by 180 MiB in 15 s. The entries now keep
fixed-size digests, and the tests below hold them to the sizes the documentation states.
"""

from __future__ import annotations

import gc
import hashlib
import os
import secrets
import tracemalloc
from pathlib import Path

from authproxy.core.user import User
from authproxy.provider.checker import DeadTokens, SessionChecker

USER = User(
    id="u", email="ada@example.com", verified=True, blocked=False, organization_id=None, affirmation_date=None
)


def checker(
    now: list[float], *, ttl: float, stale_grace: float = 0.0, max_entries: int = 100_000
) -> SessionChecker:
    async def fetch(token: str, client_ip: str, user_agent: str, device_id: str = "") -> User:
        return USER

    return SessionChecker(
        fetch, ttl=ttl, stale_grace=stale_grace, max_entries=max_entries, clock=lambda: now[0]
    )


async def test_entries_past_ttl_are_dropped_as_new_ones_arrive() -> None:
    now = [0.0]
    cache = checker(now, ttl=30)
    for index in range(1000):
        await cache.check(f"token-{index}", "127.0.0.1", "agent")
    assert len(cache) == 1000
    now[0] = 31.0
    await cache.check("a-newcomer", "127.0.0.1", "agent")
    assert len(cache) == 1


async def test_the_stale_window_keeps_entries_it_may_still_need() -> None:
    now = [0.0]
    cache = checker(now, ttl=30, stale_grace=60)
    for index in range(100):
        await cache.check(f"token-{index}", "127.0.0.1", "agent")
    now[0] = 89.0
    await cache.check("a-newcomer", "127.0.0.1", "agent")
    assert len(cache) == 101  # each may still serve as the stale answer during an outage
    now[0] = 150.0
    await cache.check("another", "127.0.0.1", "agent")
    assert len(cache) == 2


async def test_recently_used_entries_survive_and_the_bound_still_holds() -> None:
    now = [0.0]
    cache = checker(now, ttl=30, max_entries=10)
    for index in range(25):
        await cache.check(f"token-{index}", "127.0.0.1", "agent")
    assert len(cache) == 10
    now[0] = 10.0
    assert (await cache.check("token-24", "127.0.0.1", "agent")).source == "hit"


# --- what an entry costs --------------------------------------------------------------------------------
#
# The bounds below are the ones authproxy/provider/checker.py documents and README.md quotes for
# `cache_max_entries`; tracemalloc counts every Python allocation the cache makes, so the numbers hold
# for CPython 3.11 and leave some room for other versions' object sizes.

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
EXTRA_ENTRY_BOUND = 400  # documented "under 400 bytes", for another IP or user agent of a known token
SESSION_ENTRY_BOUND = 780  # documented "about 700 bytes", for a session's entry with its own User
DEAD_ENTRY_BOUND = 220  # documented "about 200 bytes"


def rss_bytes() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def a_user(index: int) -> User:
    user = User.from_json(
        {
            "id": f"7d0a1f3c-5b2e-4c8d-9a6f-{index:012d}",
            "email": f"user{index}@example.com",
            "verified": True,
            "blocked": False,
            "organizationId": "3f1c2a9e-7b4d-4e8a-9c61-0d2b5e8f7a10",
            "affirmationDate": "2024-01-01T00:00:00.000Z",
        }
    )
    assert user is not None
    return user


async def test_20000_distinct_8kb_user_agents_of_one_token_stay_small() -> None:
    now = [0.0]
    cache = checker(now, ttl=3600)
    await cache.check("token", "203.0.113.9", "warm-up")
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    try:
        traced_before = tracemalloc.get_traced_memory()[0]
        for index in range(20_000):
            # A fresh 8 KB header per request, as a client varying it would send.
            await cache.check("token", "203.0.113.9", f"{index:08d}".ljust(8192, "x"))
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced_before
    finally:
        tracemalloc.stop()
    grown = rss_bytes() - rss_before
    print(f"20,000 8 KB user agents: RSS +{grown / 2**20:.1f} MiB, traced +{traced / 2**20:.1f} MiB")
    assert len(cache) == 20_001
    assert grown < 60 * 2**20
    assert traced < 20_000 * EXTRA_ENTRY_BOUND + 2**20  # the entries, plus the token's index set


async def test_an_entry_costs_what_the_documentation_says() -> None:
    now = [0.0]
    extra = checker(now, ttl=3600)
    agents = [f"{AGENT} #{index}" for index in range(10_000)]
    await extra.check("token", "203.0.113.9", AGENT)
    per_extra = await _traced_per_check(extra, [("token", agent) for agent in agents])

    async def fetch(token: str, client_ip: str, user_agent: str, device_id: str = "") -> User:
        return a_user(int(token[:5]))  # parsed afresh from JSON, as every userinfo answer is

    # Tokens live in the sessions whatever the cache does, so they are made before measuring.
    sessions = SessionChecker(fetch, ttl=3600, clock=lambda: now[0])
    tokens = [f"{index:05d}" + secrets.token_urlsafe(200) for index in range(10_000)]
    per_session = await _traced_per_check(sessions, [(token, AGENT) for token in tokens])
    print(f"per entry: {per_extra:.0f} bytes for another agent of a token, {per_session:.0f} per session")
    assert per_extra < EXTRA_ENTRY_BOUND
    assert per_session < SESSION_ENTRY_BOUND


async def _traced_per_check(cache: SessionChecker, checks: list[tuple[str, str]]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for token, agent in checks:
            assert (await cache.check(token, "203.0.113.9", agent)).source == "miss"
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / len(checks)
    finally:
        tracemalloc.stop()


def test_the_dead_token_memory_is_bounded_and_forgets_in_time() -> None:
    now = [0.0]
    dead = DeadTokens(1000, lambda: now[0])
    for index in range(10_000):
        dead.add(hashlib.sha256(b"%d" % index).digest(), 60.0)
    assert len(dead) == 1000
    assert dead.holds(hashlib.sha256(b"9999").digest())
    assert not dead.holds(hashlib.sha256(b"0").digest())  # the least recently used went first
    now[0] = 59.0
    assert dead.holds(hashlib.sha256(b"9000").digest())
    now[0] = 60.0
    assert not dead.holds(hashlib.sha256(b"9001").digest())
    assert len(dead) == 999  # dropped when found past its time
    dead.add(b"new" * 11, 60.0)
    assert len(dead) == 1  # and the rest as a newcomer arrives


def test_a_dead_token_costs_what_the_documentation_says() -> None:
    dead = DeadTokens(100_000, lambda: 0.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100_000):
            dead.add(os.urandom(32), 60.0)
        per_token = (tracemalloc.get_traced_memory()[0] - before) / 100_000
    finally:
        tracemalloc.stop()
    print(f"per dead token: {per_token:.0f} bytes")
    assert per_token < DEAD_ENTRY_BOUND
