"""Reload (`SIGHUP` in a served process, `app.reload` here): a new runtime swapped in at once.

Requests in flight finish on the runtime they started with; caches whose settings did not change
survive; the memory of dead tokens always does; `[logging]` applies at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp import ClientSession, web
from conftest import DevIdp, ProxyFactory
from pytest_aiohttp import AiohttpServer
from support.harness import Browser, FakeClock
from support.logins import signed_in

from authproxy import logs
from authproxy.app import reload
from authproxy.config import Config
from authproxy.runtime import LIVE

USERINFO = "/api/v1/userinfo"


def _changed(config: Config, **sections: dict[str, Any]) -> Config:
    return config.model_copy(
        update={name: getattr(config, name).model_copy(update=values) for name, values in sections.items()}
    )


async def _userinfo_calls(devidp: DevIdp) -> int:
    return sum(1 for call in await devidp.recorded() if call["path"] == USERINFO)


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
    proxy_factory: ProxyFactory, aiohttp_server: AiohttpServer
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        # No answer at all: the proxy renders its 502 page, with the branding of the runtime the
        # request runs on, after the reload below.
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    app = web.Application()
    app.router.add_get("/{tail:.*}", hold)
    upstream = await aiohttp_server(app)
    proxy = await proxy_factory(
        upstreams=[{"path": "/", "url": str(upstream.make_url("")).rstrip("/"), "timeout": 5}],
        routes={"skip_auth": ["^/"]},
        branding={"title": "Before Reload"},
    )
    async with ClientSession() as http:
        in_flight = asyncio.ensure_future(http.get(f"{proxy.url}/page", headers={"Accept": "text/html"}))
        await asyncio.wait_for(arrived.wait(), 5)
        old = proxy.app[LIVE].runtime
        assert reload(proxy.app, _changed(proxy.config, branding={"title": "After Reload"})) == []
        assert proxy.app[LIVE].runtime is not old
        release.set()
        async with await in_flight as response:
            assert response.status == 502
            page = await response.text()
        assert "Before Reload" in page and "After Reload" not in page
        # A request that starts now runs on the new runtime.
        arrived.clear()
        later = asyncio.ensure_future(http.get(f"{proxy.url}/page", headers={"Accept": "text/html"}))
        await asyncio.wait_for(arrived.wait(), 5)
        async with await later as response:
            assert "After Reload" in await response.text()


async def test_the_check_cache_survives_a_reload_that_leaves_centralauth_alone(
    proxy_factory: ProxyFactory, devidp: DevIdp, browser: Browser
) -> None:
    proxy = await proxy_factory(centralauth={"session_check_ttl": 60})
    status, _, _ = await browser.login(f"{proxy.url}/", "ada@example.com")
    assert status == 200
    calls = await _userinfo_calls(devidp)
    checker = proxy.app[LIVE].runtime.checker
    assert len(checker) == 1
    reload(
        proxy.app, _changed(proxy.config, branding={"title": "Renamed"}, headers={"strip_extra": ["X-Other"]})
    )
    assert proxy.app[LIVE].runtime.checker is checker
    for _ in range(3):
        status, _, _ = await browser.get(f"{proxy.url}/again")
        assert status == 200
    assert await _userinfo_calls(devidp) == calls, "a reload that kept [centralauth] must keep the cache"
    # Changing [centralauth] builds a new checker (its TTL, timeouts or client may differ): one new call.
    reload(proxy.app, _changed(proxy.config, centralauth={"session_check_ttl": 30}))
    assert proxy.app[LIVE].runtime.checker is not checker
    status, _, _ = await browser.get(f"{proxy.url}/again")
    assert status == 200
    assert await _userinfo_calls(devidp) == calls + 1


async def test_a_reload_that_lengthens_a_routes_ttl_keeps_answers_that_long(
    proxy_factory: ProxyFactory, devidp: DevIdp, browser: Browser, second_browser: Browser
) -> None:
    clock = FakeClock()  # the proxy's monotonic clock: cached answers age only with it
    proxy = await proxy_factory(
        centralauth={"session_check_ttl": 10},
        routes=[{"path": "/slow/", "session_check_ttl": 30}],
        monotonic=clock,
    )
    await signed_in(proxy, browser)  # lands on /, whose check stores Ada's answer
    checker = proxy.app[LIVE].runtime.checker
    table = [route.model_copy(update={"session_check_ttl": 120}) for route in proxy.config.routes.table]
    reload(proxy.app, _changed(proxy.config, routes={"table": table}))
    assert proxy.app[LIVE].runtime.checker is checker  # [centralauth] unchanged: the cache carries over
    clock.advance(60)
    # A new answer is stored; answers no route can use any more are dropped as it is. Ada's, 60 s old,
    # is past the old longest TTL (30 s) but within the new one (120 s): it must stay.
    await signed_in(proxy, second_browser, "bob@example.com")
    calls = await _userinfo_calls(devidp)
    status, _, _ = await browser.get(f"{proxy.url}/slow/page")
    assert status == 200
    assert await _userinfo_calls(devidp) == calls, "the kept cache must serve the route's new TTL"


async def test_a_signed_out_session_stays_out_across_a_reload_of_centralauth(
    proxy_factory: ProxyFactory, devidp: DevIdp, browser: Browser
) -> None:
    proxy = await proxy_factory()
    status, _, _ = await browser.login(f"{proxy.url}/", "ada@example.com")
    assert status == 200
    cookie = next(c for c in browser.jar if c.key == proxy.config.session.cookie_name)
    stolen = f"{cookie.key}={cookie.value}"
    # A same-origin GET signs out at once (a cross-site one would get a confirmation form instead).
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status in (302, 303)
    # A copy of the cookie, taken before the sign-out, is refused before and after the reload.
    async with ClientSession() as http:
        headers = {"Cookie": stolen, "Accept": "application/json"}
        async with http.get(f"{proxy.url}/x", headers=headers) as response:
            assert response.status == 401
        reload(proxy.app, _changed(proxy.config, centralauth={"session_check_ttl": 5}))
        calls = await _userinfo_calls(devidp)
        async with http.get(f"{proxy.url}/x", headers=headers) as response:
            assert response.status == 401
        assert await _userinfo_calls(devidp) == calls, "a known-dead token costs no call after a reload"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """structlog's configuration is the process's: put back whatever the test session had."""
    before = structlog.get_config()
    yield
    structlog.configure(**before)


async def test_a_changed_log_level_applies_at_once(
    proxy_factory: ProxyFactory, capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    proxy = await proxy_factory(logging={"format": "json", "level": "warning"})
    logs.configure("json", "warning")
    async with ClientSession() as http:
        # An ambiguous target is refused with a `request.error` line at level info.
        async with http.get(f"{proxy.url}/a%2Fb") as response:
            assert response.status == 400
        assert "request.error" not in capfd.readouterr().err
        reload(proxy.app, _changed(proxy.config, logging={"level": "info"}))
        async with http.get(f"{proxy.url}/a%2Fb") as response:
            assert response.status == 400
        assert '"event": "request.error"' in capfd.readouterr().err
        reload(proxy.app, _changed(proxy.config, logging={"level": "error"}))
        async with http.get(f"{proxy.url}/a%2Fb") as response:
            assert response.status == 400
        assert "request.error" not in capfd.readouterr().err
