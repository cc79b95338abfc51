"""The per-request session check against the real fake CentralAuth: caching, coalescing, revocation,
hijack protection and outages (fail-closed and stale).

Time passes only when a test says so: the proxies whose TTLs matter run on a `FakeClock` (their
`monotonic`, what the session-check cache and the stale window run on), advanced instead of slept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientSession
from conftest import DevIdp, ProxyFactory
from support.echo import received_headers
from support.harness import BROWSER_UA, Browser, FakeClock, Proxy
from support.logins import signed_in_without_landing
from yarl import URL

from authproxy.runtime import LIVE

API = {"Accept": "application/json"}


async def userinfo_calls(devidp: DevIdp) -> int:
    return (await devidp.stats())["userinfo"]


async def get(browser: Browser, url: str, **kwargs: Any) -> tuple[int, str]:
    async with browser.http.get(url, allow_redirects=False, **kwargs) as response:
        return response.status, await response.text()


async def test_a_burst_of_30_requests_costs_one_userinfo_call(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    await signed_in_without_landing(proxy, browser)
    before = await userinfo_calls(devidp)
    results = await asyncio.gather(*(get(browser, f"{proxy.url}/asset/{i}.js") for i in range(30)))
    assert [status for status, _ in results] == [200] * 30
    assert await userinfo_calls(devidp) - before == 1
    # Steady state within the TTL: no more calls at all.
    for i in range(10):
        assert (await get(browser, f"{proxy.url}/again/{i}"))[0] == 200
    assert await userinfo_calls(devidp) - before == 1


async def test_userinfo_carries_the_end_users_ip_and_agent(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    await signed_in_without_landing(proxy, browser)
    await devidp.call("DELETE", "/_devidp/requests")
    assert (await get(browser, f"{proxy.url}/x"))[0] == 200
    (call,) = [r for r in await devidp.recorded() if r["path"] == "/api/v1/userinfo"]
    headers = {name.lower(): value for name, value in dict(call["headers"]).items()}
    assert headers["auth-ip"] == "127.0.0.1"
    assert headers["user-agent"] == BROWSER_UA
    assert headers["content-type"] == "text/plain"
    assert call["query"] == {"domain": proxy.url}  # the origin of public_url
    assert call["body"].count(".") == 4


SHORT_TTL = 0.5


@pytest.fixture
def ttl_clock() -> FakeClock:
    """The proxy's monotonic clock: the session-check TTL and the stale window move only with it."""
    return FakeClock()


@pytest.fixture
async def short_ttl_proxy(proxy_factory: ProxyFactory, ttl_clock: FakeClock) -> Proxy:
    return await proxy_factory(centralauth={"session_check_ttl": SHORT_TTL}, monotonic=ttl_clock)


async def test_central_logout_takes_effect_within_the_ttl(
    short_ttl_proxy: Proxy, browser: Browser, devidp: DevIdp, ttl_clock: FakeClock
) -> None:
    proxy = short_ttl_proxy
    await browser.login(f"{proxy.url}/", "ada@example.com")
    await devidp.end_sessions("ada@example.com")
    before = await userinfo_calls(devidp)
    ttl_clock.advance(SHORT_TTL - 0.1)
    status, _ = await get(browser, f"{proxy.url}/still-cached")
    assert status == 200  # inside the TTL the cached answer stands
    assert await userinfo_calls(devidp) == before  # without asking CentralAuth
    ttl_clock.advance(0.2)  # past session_check_ttl: the cached answer is gone
    async with browser.http.get(f"{proxy.url}/after", allow_redirects=False) as response:
        assert response.status == 302
        assert URL(response.headers["Location"]).path == "/oauth2/start"
        cleared = [c for c in response.headers.getall("Set-Cookie") if c.startswith("_authproxy=")]
        assert cleared and "Max-Age=0" in cleared[0]
    async with browser.http.get(f"{proxy.url}/after", headers=API) as response:
        assert response.status == 401


async def test_blocking_at_centralauth_takes_effect_within_the_ttl(
    short_ttl_proxy: Proxy, browser: Browser, devidp: DevIdp, ttl_clock: FakeClock
) -> None:
    await browser.login(f"{short_ttl_proxy.url}/", "ada@example.com")
    await devidp.patch_user("ada@example.com", blocked=True)
    before = await userinfo_calls(devidp)
    ttl_clock.advance(SHORT_TTL - 0.1)
    assert (await get(browser, f"{short_ttl_proxy.url}/still-cached"))[0] == 200  # the cached answer
    assert await userinfo_calls(devidp) == before
    ttl_clock.advance(0.2)  # past session_check_ttl
    status, body = await get(browser, f"{short_ttl_proxy.url}/x", headers={"Accept": "text/html"})
    assert status == 403 and "not allowed" in body
    assert await userinfo_calls(devidp) == before + 1


async def test_stolen_cookie_from_another_agent_is_rechecked_and_refused(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    await browser.login(f"{proxy.url}/", "victim@example.com")
    name = proxy.app[LIVE].runtime.cookie.name
    stolen = browser.cookie(name)
    before = await userinfo_calls(devidp)
    async with ClientSession(headers={"User-Agent": "curl/8.0", **API}) as thief:
        async with thief.get(f"{proxy.url}/x", headers={"Cookie": f"{name}={stolen}"}) as response:
            assert response.status == 401
    assert await userinfo_calls(devidp) - before == 1  # not served from the victim's cache entry
    # CentralAuth ended the whole session on the mismatch: the victim is signed out too.
    status, _ = await get(browser, f"{proxy.url}/y", headers=API)
    assert status == 401


async def test_stolen_cookie_from_another_ip_is_refused(proxy_factory: ProxyFactory, devidp: DevIdp) -> None:
    proxy = await proxy_factory(server={"trusted_proxies": ["127.0.0.1/32"]})
    victim = Browser(ip="198.51.100.7")  # seen as this IP by the fake (trusted XFF) and by the proxy
    try:
        status, _, _ = await victim.login(f"{proxy.url}/", "victim@example.com")
        assert status == 200
        name = proxy.app[LIVE].runtime.cookie.name
        stolen = victim.cookie(name)
        headers = {
            "Cookie": f"{name}={stolen}",
            "User-Agent": BROWSER_UA,
            "X-Forwarded-For": "203.0.113.66",
            **API,
        }
        async with ClientSession() as thief, thief.get(f"{proxy.url}/x", headers=headers) as response:
            assert response.status == 401
    finally:
        await victim.close()


@pytest.mark.parametrize("fault", [503, 429, 500, 0])
async def test_fail_closed_outage_is_a_503_that_keeps_the_session(
    proxy: Proxy, browser: Browser, devidp: DevIdp, fault: int
) -> None:
    await signed_in_without_landing(proxy, browser)
    # A dropped connection (0) is asked again once when it was a kept-alive one (see the next test):
    # two drops in a row are an outage.
    await devidp.fault("userinfo", status=fault, count=2 if fault == 0 else 1)
    status, body = await get(browser, f"{proxy.url}/x", headers={"Accept": "text/html"})
    assert status == 503 and "not answering" in body
    await devidp.control("DELETE", "/faults")
    # The session survived the outage: the next request, with CentralAuth back, passes.
    status, body = await get(browser, f"{proxy.url}/x")
    assert status == 200 and received_headers(json.loads(body))["x-forwarded-email"] == "ada@example.com"


async def test_a_kept_alive_connection_centralauth_closed_is_asked_again_not_an_outage(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    """CentralAuth (or a balancer in front of it) may close an idle kept-alive connection just as a
    check goes out on it; the check is sent once more on a new connection instead of failing."""
    await signed_in_without_landing(proxy, browser)  # the login's calls left a connection in the pool
    before = (await devidp.stats())["userinfo"]
    await devidp.fault("userinfo", status=0, count=1)
    status, _ = await get(browser, f"{proxy.url}/x")
    assert status == 200
    assert (await devidp.stats())["userinfo"] - before == 2


async def test_stale_mode_reuses_the_last_good_answer(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp, ttl_clock: FakeClock
) -> None:
    proxy = await proxy_factory(
        centralauth={"session_check_ttl": 0.3, "on_outage": "stale", "stale_grace": 60}, monotonic=ttl_clock
    )
    await browser.login(f"{proxy.url}/", "ada@example.com")
    ttl_clock.advance(0.35)  # past the TTL, well inside the stale window
    await devidp.fault("userinfo", status=503, count=5)
    before = await userinfo_calls(devidp)
    for _ in range(3):
        status, body = await get(browser, f"{proxy.url}/during-outage")
        assert status == 200
        assert received_headers(json.loads(body))["x-forwarded-email"] == "ada@example.com"
    # Each request asked CentralAuth and met the outage: stale answers, not cache hits.
    assert await userinfo_calls(devidp) - before == 3


async def test_stale_mode_without_a_previous_answer_fails_closed(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    proxy = await proxy_factory(centralauth={"on_outage": "stale", "stale_grace": 60})
    await signed_in_without_landing(proxy, browser)
    await devidp.fault("userinfo", status=503, count=1)
    assert (await get(browser, f"{proxy.url}/x"))[0] == 503


async def test_stale_window_ends(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp, ttl_clock: FakeClock
) -> None:
    proxy = await proxy_factory(
        centralauth={"session_check_ttl": 0.2, "on_outage": "stale", "stale_grace": 0.2}, monotonic=ttl_clock
    )
    await browser.login(f"{proxy.url}/", "ada@example.com")
    ttl_clock.advance(0.3)  # past the TTL, inside TTL + stale_grace: still answered stale
    await devidp.fault("userinfo", status=503, count=1)
    assert (await get(browser, f"{proxy.url}/x"))[0] == 200
    ttl_clock.advance(0.2)  # past TTL + stale_grace
    await devidp.fault("userinfo", status=503, count=1)
    assert (await get(browser, f"{proxy.url}/x"))[0] == 503


async def test_the_check_cache_is_bounded(proxy_factory: ProxyFactory, devidp: DevIdp) -> None:
    proxy = await proxy_factory(centralauth={"cache_max_entries": 3})
    browsers = [Browser(user_agent=f"{BROWSER_UA} #{i}") for i in range(6)]
    try:
        for i, browser in enumerate(browsers):
            status, _, _ = await browser.login(f"{proxy.url}/", f"user{i}@example.com")
            assert status == 200
        assert len(proxy.app[LIVE].runtime.checker) == 3
    finally:
        for browser in browsers:
            await browser.close()


# --- dead cookies -------------------------------------------------------------------------------------


async def replay(proxy: Proxy, cookie: str, agents: list[str], *, concurrently: bool) -> list[int]:
    """The statuses of one request per user agent, each carrying the same session cookie."""
    name = proxy.app[LIVE].runtime.cookie.name

    async def one(http: ClientSession, agent: str) -> int:
        headers = {"Cookie": f"{name}={cookie}", "User-Agent": agent, **API}
        async with http.get(f"{proxy.url}/x", headers=headers, allow_redirects=False) as response:
            return response.status

    async with ClientSession() as http:
        if concurrently:
            return list(await asyncio.gather(*(one(http, agent) for agent in agents)))
        return [await one(http, agent) for agent in agents]


async def test_a_session_ended_at_centralauth_costs_at_most_a_handful_of_calls_whatever_the_agent(
    short_ttl_proxy: Proxy, browser: Browser, devidp: DevIdp, ttl_clock: FakeClock
) -> None:
    proxy = short_ttl_proxy
    await browser.login(f"{proxy.url}/", "ada@example.com")
    cookie = browser.cookie(proxy.app[LIVE].runtime.cookie.name)
    assert cookie
    await devidp.end_sessions("ada@example.com")
    ttl_clock.advance(SHORT_TTL + 0.1)  # past session_check_ttl: the cached answer is gone
    before = await userinfo_calls(devidp)
    statuses = await replay(proxy, cookie, [f"agent {i}" for i in range(300)], concurrently=True)
    concurrent_calls = await userinfo_calls(devidp) - before
    statuses += await replay(proxy, cookie, [f"agent {i}" for i in range(300, 600)], concurrently=False)
    calls = await userinfo_calls(devidp) - before
    print(f"dead cookie, 300 agents: {concurrent_calls} userinfo calls concurrently, {calls} with sequential")
    assert statuses == [401] * 600
    assert calls <= 3
    revoked = proxy.app[LIVE].runtime.metrics.registry.get_sample_value("authproxy_sessions_revoked_total")
    assert revoked == 1  # one revocation audited, not 600


@pytest.mark.parametrize("session_wide", [True, False])
async def test_a_signed_out_cookie_replayed_costs_no_call(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp, session_wide: bool
) -> None:
    proxy = await proxy_factory(centralauth={"logout_session_wide": session_wide})
    await browser.login(f"{proxy.url}/", "ada@example.com")
    cookie = browser.cookie(proxy.app[LIVE].runtime.cookie.name)
    assert cookie
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status == 302
    before = await userinfo_calls(devidp)
    # Even from the browser that signed in, and even when the CentralAuth session lives on (local-only
    # sign-out), a copy of the cookie is refused here.
    assert await replay(proxy, cookie, [BROWSER_UA], concurrently=False) == [401]
    statuses = await replay(proxy, cookie, [f"agent {i}" for i in range(300)], concurrently=True)
    statuses += await replay(proxy, cookie, [f"agent {i}" for i in range(300)], concurrently=False)
    assert statuses == [401] * 600
    assert await userinfo_calls(devidp) - before == 0
    async with ClientSession() as http:
        headers = {"Cookie": f"{proxy.app[LIVE].runtime.cookie.name}={cookie}", "Accept": "text/html"}
        async with http.get(f"{proxy.url}/x", headers=headers, allow_redirects=False) as response:
            assert response.status == 302  # treated like no session: to the login, with the cookie cleared
            assert URL(response.headers["Location"]).path == "/oauth2/start"
            cleared = [c for c in response.headers.getall("Set-Cookie") if c.startswith("_authproxy=")]
            assert cleared and "Max-Age=0" in cleared[0]
