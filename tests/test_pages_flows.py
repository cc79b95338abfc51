"""The ways on from the proxy's own pages, followed link by link as a browser would.

Access denied offers "Use another account" and "Sign out" and says whether a session exists; a
CentralAuth outage during the callback offers "Try again", a new login to the same target; sign-out
without `rd` ends on "You are signed out", whose "Sign in again" keeps the `rd` it was given; the
upstream's failures and CentralAuth's have headings of their own. Real browsers follow the same links
in test_browser.py; here every step is an HTTP request with the headers a browser would send.
"""

from __future__ import annotations

import re
from html import unescape

from conftest import DevIdp, ProxyFactory
from support.harness import Browser, Proxy, free_port
from yarl import URL

from authproxy.runtime import LIVE

# What a browser sends when it follows a link on one of the proxy's own pages.
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def link(page: str, label: str) -> str:
    """The href of the button-link labelled `label` on `page`."""
    match = re.search(rf'<a class="button[^"]*" href="([^"]+)"[^>]*>{re.escape(label)}</a>', page)
    assert match, f"no {label!r} link in {page}"
    return unescape(match.group(1))


def heading(page: str) -> str:
    match = re.search(r"<h1>(.*?)</h1>", page)
    assert match, page
    return unescape(match.group(1))


def session_cookie(proxy: Proxy, browser: Browser) -> str | None:
    return browser.cookie(proxy.app[LIVE].runtime.cookie.name) or None


async def test_access_denied_at_login_offers_another_account(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    # The fake makes a user at their first sign-in; then CentralAuth's admin blocks them.
    status, _, _ = await browser.login(f"{proxy.url}/", "blocked@example.com")
    assert status == 200
    await devidp.patch_user("blocked@example.com", blocked=True)
    async with browser.http.get(f"{proxy.url}/oauth2/sign_out", headers=SAME_ORIGIN) as response:
        assert response.status == 200
    status, _, page = await browser.login(f"{proxy.url}/reports?q=1", "blocked@example.com")
    assert status == 403
    assert heading(page) == "Access denied"
    assert "Your account is blocked at CentralAuth." in page
    # No session was made at the callback, and the page does not pretend otherwise.
    assert "You are signed in" not in page and "you are not signed in here" in page
    assert session_cookie(proxy, browser) is None
    assert URL(link(page, "Sign out")).path == "/oauth2/sign_out"

    another = link(page, "Use another account")
    assert URL(another).path == "/oauth2/sign_out"
    assert URL(another).query["rd"] == "/oauth2/start?rd=%2Freports%3Fq%3D1"
    async with browser.http.get(f"{proxy.url}{another}", headers=SAME_ORIGIN) as response:
        # Through the sign-out and a new login, to CentralAuth's form: the login is to the same page.
        assert response.url.path == "/login" and response.url.origin() == URL(devidp.url).origin()
        assert 'name="email"' in await response.text()
        start = [r for r in response.history if r.url.path == "/oauth2/start"]
        assert start and start[0].url.query["rd"] == "/reports?q=1"


async def test_access_denied_with_a_session_says_so_and_signs_out(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    # Every request asks CentralAuth again, so blocking the user shows on the very next one.
    proxy = await proxy_factory(centralauth={"session_check_ttl": 0})
    status, _, _ = await browser.login(f"{proxy.url}/", "grace@example.com")
    assert status == 200
    await devidp.patch_user("grace@example.com", blocked=True)
    status, _, page = await browser.get(f"{proxy.url}/reports")
    assert status == 403 and heading(page) == "Access denied"
    assert "You are signed in, but cannot use this application with this account." in page
    assert session_cookie(proxy, browser) is not None

    async with browser.http.get(
        f"{proxy.url}{link(page, 'Use another account')}", headers=SAME_ORIGIN
    ) as response:
        assert response.url.path == "/login" and 'name="email"' in await response.text()
    assert session_cookie(proxy, browser) is None


async def test_outage_at_the_callback_offers_a_new_login_to_the_same_target(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    await devidp.fault("verify", status=503)
    status, _, page = await browser.login(f"{proxy.url}/reports?q=1", "ada@example.com")
    assert status == 503
    assert heading(page) == "Sign-in service unavailable"
    assert session_cookie(proxy, browser) is None
    again = link(page, "Try again")
    assert URL(again).path == "/oauth2/start" and URL(again).query["rd"] == "/reports?q=1"

    # The callback itself cannot be repeated: reloading it is the expired page, as before.
    status, url, _ = await browser.login(f"{proxy.url}{again}", "ada@example.com")
    assert status == 200 and url.path_qs == "/reports?q=1"
    assert session_cookie(proxy, browser) is not None


async def test_sign_out_without_rd_ends_on_the_signed_out_page(proxy: Proxy, browser: Browser) -> None:
    await browser.login(f"{proxy.url}/", "ada@example.com")
    async with browser.http.post(f"{proxy.url}/oauth2/sign_out", headers={"Origin": proxy.url}) as response:
        assert response.status == 200 and response.url.path == "/oauth2/signed_out"
        page = await response.text()
    assert heading(page) == "You are signed out"
    assert "every application that signs you in with CentralAuth" in page  # logout_session_wide is on
    assert link(page, "Sign in again") == "/oauth2/start?rd=%2F"
    assert session_cookie(proxy, browser) is None


async def test_sign_in_again_keeps_the_rd_it_was_given(proxy: Proxy, browser: Browser) -> None:
    await browser.login(f"{proxy.url}/", "ada@example.com")
    async with browser.http.post(
        f"{proxy.url}/oauth2/sign_out",
        params={"rd": "/oauth2/signed_out?rd=/reports"},
        headers={"Origin": proxy.url},
    ) as response:
        assert response.url.path_qs == "/oauth2/signed_out?rd=/reports"
        page = await response.text()
    again = link(page, "Sign in again")
    assert URL(again).query["rd"] == "/reports"
    status, url, _ = await browser.login(f"{proxy.url}{again}", "ada@example.com")
    assert status == 200 and url.path == "/reports"


async def test_an_explicit_rd_keeps_its_redirect(proxy: Proxy, browser: Browser) -> None:
    await browser.login(f"{proxy.url}/", "ada@example.com")
    async with browser.http.get(
        f"{proxy.url}/oauth2/sign_out?rd=/goodbye", headers=SAME_ORIGIN, allow_redirects=False
    ) as response:
        assert response.status == 302 and response.headers["Location"] == "/goodbye"


async def test_signed_out_page_refuses_a_foreign_rd(proxy: Proxy, browser: Browser) -> None:
    status, _, page = await browser.get(f"{proxy.url}/oauth2/signed_out?rd=https://evil.example/")
    assert status == 200
    assert link(page, "Sign in again") == "/oauth2/start?rd=%2F"


async def test_the_confirmation_says_what_signing_out_ends(
    proxy_factory: ProxyFactory, browser: Browser
) -> None:
    for session_wide, words in [
        (True, "also ends your CentralAuth session"),
        (False, "in this application only"),
    ]:
        proxy = await proxy_factory(centralauth={"logout_session_wide": session_wide})
        await browser.login(f"{proxy.url}/", "ada@example.com")
        status, _, page = await browser.get(f"{proxy.url}/oauth2/sign_out")
        assert status == 200 and heading(page) == "Sign out"
        assert words in page
        assert '<button type="submit">Sign out</button>' in page and ">Stay signed in</a>" in page
        # Without an `rd` none is carried into the form, so the sign-out ends on the signed-out page.
        assert 'name="rd"' not in page
        status, _, page = await browser.get(f"{proxy.url}/oauth2/signed_out")
        assert ("CentralAuth session has ended too" in page) is session_wide


async def test_the_confirmation_claims_no_session_it_does_not_see(proxy: Proxy, browser: Browser) -> None:
    status, _, page = await browser.get(f"{proxy.url}/oauth2/sign_out")
    assert status == 200 and "You are signed in" not in page
    assert '<button type="submit">Sign out</button>' in page


async def test_upstream_failure_and_centralauth_outage_are_told_apart(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    # Nothing listens on this port: the upstream refuses the connection.
    proxy = await proxy_factory(
        upstreams=[{"path": "/", "url": f"http://127.0.0.1:{free_port()}"}],
        centralauth={"session_check_ttl": 0},  # so that the outage below is not hidden by the cache
    )
    status, _, page = await browser.login(f"{proxy.url}/reports?q=1", "ada@example.com")
    assert status == 502
    assert heading(page) == "The application is not answering"
    assert link(page, "Try again") == "/reports?q=1"

    await devidp.fault("userinfo", status=503)
    async with browser.http.get(f"{proxy.url}/reports?q=1") as response:
        assert response.status == 503
        assert heading(await response.text()) == "Sign-in service unavailable"
