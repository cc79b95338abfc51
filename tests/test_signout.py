"""Sign-out: local and session-wide, CSRF protection, CentralAuth failures, and the return URL."""

from __future__ import annotations

import re

from aiohttp import ClientSession
from conftest import DevIdp, ProxyFactory
from support.harness import BROWSER_UA, Browser, Proxy
from support.logins import signed_in
from yarl import URL

from authproxy.runtime import LIVE

API = {"Accept": "application/json"}


async def app_status(proxy: Proxy, browser: Browser) -> int:
    async with browser.http.get(f"{proxy.url}/private", headers=API, allow_redirects=False) as response:
        return response.status


async def test_same_origin_sign_out_ends_the_session_everywhere(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    token = (await signed_in(proxy, browser)).token
    headers = {"Sec-Fetch-Site": "same-origin"}
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out?rd=/goodbye", headers=headers, allow_redirects=False
    ) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/goodbye"
        assert response.headers["X-Authproxy"] == "1"
    assert browser.cookie(proxy.app[LIVE].runtime.cookie.name) in (None, "")
    assert await app_status(proxy, browser) == 401
    # The CentralAuth session itself is over: the token is refused even from the original browser.
    reply = await devidp.userinfo(token, domain=proxy.url, ip="127.0.0.1", user_agent=BROWSER_UA)
    assert reply.status >= 400
    logout_calls = [r for r in await devidp.recorded() if r["path"] == "/api/v1/logout"]
    assert len(logout_calls) == 1 and logout_calls[0]["body"] == token


async def test_post_from_the_proxy_origin_signs_out(proxy: Proxy, browser: Browser) -> None:
    await signed_in(proxy, browser)
    async with browser.http.post(
        f"{proxy.url}/oauth2/sign_out", headers={"Origin": proxy.url}, allow_redirects=False
    ) as response:
        # Without `rd` the sign-out ends on the signed-out page, not on `/` (which would log in again).
        assert response.status == 302 and response.headers["Location"] == "/oauth2/signed_out"
    assert await app_status(proxy, browser) == 401


async def test_local_only_sign_out(proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp) -> None:
    proxy = await proxy_factory(centralauth={"logout_session_wide": False})
    token = (await signed_in(proxy, browser)).token
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status == 302
    assert await app_status(proxy, browser) == 401
    assert not [r for r in await devidp.recorded() if r["path"] == "/api/v1/logout"]
    assert (
        await devidp.userinfo(token, domain=proxy.url, ip="127.0.0.1", user_agent=BROWSER_UA)
    ).status == 200


async def test_cross_site_get_only_shows_a_confirmation(proxy: Proxy, browser: Browser) -> None:
    await signed_in(proxy, browser)
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Referer": "https://evil.example/page"}, {}):
        async with browser.http.get(f"{proxy.url}/oauth2/sign_out?rd=/bye", headers=headers) as response:
            assert response.status == 200
            page = await response.text()
        assert 'method="post"' in page and 'name="csrf"' in page
        assert "ada@example.com" in page and 'href="/bye">Stay signed in</a>' in page
        assert await app_status(proxy, browser) == 200, headers  # still signed in
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    # Submitting the confirmation form signs out, even without same-origin headers.
    async with browser.http.post(
        f"{proxy.url}/oauth2/sign_out", data={"csrf": token.group(1), "rd": "/bye"}, allow_redirects=False
    ) as response:
        assert response.status == 302 and response.headers["Location"] == "/bye"
    assert await app_status(proxy, browser) == 401


async def test_forged_post_is_refused(proxy: Proxy, browser: Browser) -> None:
    await signed_in(proxy, browser)
    for form in ({}, {"csrf": "forged"}, {"csrf": ""}):
        async with browser.http.post(
            f"{proxy.url}/oauth2/sign_out", data=form, headers={"Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
    assert await app_status(proxy, browser) == 200


async def test_a_token_from_another_browser_is_refused(proxy: Proxy, browser: Browser) -> None:
    await signed_in(proxy, browser)
    async with ClientSession() as attacker:
        async with attacker.get(f"{proxy.url}/oauth2/sign_out") as response:
            page = await response.text()
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    async with browser.http.post(f"{proxy.url}/oauth2/sign_out", data={"csrf": token.group(1)}) as response:
        assert response.status == 403
    assert await app_status(proxy, browser) == 200


async def test_centralauth_failure_still_signs_out_locally_and_says_so(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    token = (await signed_in(proxy, browser)).token
    await devidp.fault("logout", status=503, count=2)
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status == 200
        page = await response.text()
    assert "signed out here, but the central" in page.lower()
    assert await app_status(proxy, browser) == 401
    assert len([r for r in await devidp.recorded() if r["path"] == "/api/v1/logout"]) == 2  # one retry
    assert (
        await devidp.userinfo(token, domain=proxy.url, ip="127.0.0.1", user_agent=BROWSER_UA)
    ).status == 200


async def test_one_retry_recovers_a_blip(proxy: Proxy, browser: Browser, devidp: DevIdp) -> None:
    token = (await signed_in(proxy, browser)).token
    await devidp.fault("logout", status=0, count=1)
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status == 302
    assert (
        await devidp.userinfo(token, domain=proxy.url, ip="127.0.0.1", user_agent=BROWSER_UA)
    ).status >= 400


async def test_return_url_is_validated(proxy: Proxy, browser: Browser) -> None:
    for target, expected in [
        ("https://evil.example/", "/oauth2/signed_out"),
        ("//evil.example", "/oauth2/signed_out"),
        ("/after?x=1", "/after?x=1"),
    ]:
        async with browser.http.get(
            f"{proxy.url}/oauth2/sign_out",
            params={"rd": target},
            headers={"Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        ) as response:
            assert response.headers["Location"] == expected, target
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out",
        headers={"Sec-Fetch-Site": "same-origin", "X-Auth-Request-Redirect": "/from-header"},
        allow_redirects=False,
    ) as response:
        assert response.headers["Location"] == "/from-header"


async def test_sign_out_without_a_session_just_redirects(proxy: Proxy) -> None:
    async with ClientSession() as http:
        async with http.post(
            f"{proxy.url}/oauth2/sign_out", headers={"Origin": proxy.url}, allow_redirects=False
        ) as response:
            assert response.status == 302
            assert URL(response.headers["Location"]).path == "/oauth2/signed_out"
