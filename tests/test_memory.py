"""Per-session state is dropped when it can no longer be used, not only when a size bound is reached.

Found by the soak (soak/README.md): under steady logins the session-check cache kept one entry per
session ever seen, about 700 bytes each, until `cache_max_entries` (100 000 by default) pushed them out,
so a worker's memory grew for hours before levelling off.
"""

from __future__ import annotations

from authproxy.provider.checker import SessionChecker
from authproxy.provider.user import User

USER = User(
    id="u", email="ada@example.com", verified=True, blocked=False, organization_id=None, affirmation_date=None
)


def checker(
    now: list[float], *, ttl: float, stale_grace: float = 0.0, max_entries: int = 100_000
) -> SessionChecker:
    async def fetch(token: str, client_ip: str, user_agent: str) -> User:
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
