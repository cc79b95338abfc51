"""Signing a browser in through the proxy under test and the fake CentralAuth, the one way every test does.

`signed_in(proxy, browser)` opens a page of the app, gets sent to the fake's login form, submits the
e-mail and follows the redirects back; `land=False` stops at the callback's redirect instead, so no
proxied request has been made (nor checked) yet. Either way it returns the session cookie the proxy set,
and the access token the session holds. Without a browser it signs in a throwaway one, for tests that
replay the cookie by hand on raw connections.
"""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from authproxy.runtime import LIVE
from support.harness import Browser, Proxy

EMAIL = "ada@example.com"


@dataclass(frozen=True)
class SignedIn:
    """The session a login left in the browser: its cookie, and the CentralAuth token it holds."""

    name: str
    value: str
    token: str

    @property
    def header(self) -> str:
        """The session as a `Cookie` header value."""
        return f"{self.name}={self.value}"


async def signed_in(
    proxy: Proxy,
    browser: Browser | None = None,
    email: str = EMAIL,
    *,
    path: str = "/",
    land: bool = True,
) -> SignedIn:
    """Log `browser` (or a throwaway one) in as `email`, starting from `path` on the app.

    With `land`, the browser follows every redirect and must land on `path` with a 200; without, it stops
    at the callback, whose redirect must point at `path`.
    """
    if browser is None:
        browser = Browser()
        try:
            return await signed_in(proxy, browser, email, path=path, land=land)
        finally:
            await browser.close()
    if land:
        status, url, _ = await browser.login(f"{proxy.url}{path}", email)
        assert status == 200 and url.path_qs == path, (status, url)
    else:
        start = URL(f"{proxy.url}/oauth2/start").with_query(rd=path)
        async with browser.http.get(start) as response:
            form = response.url
        async with browser.http.post(form, data={"email": email}, allow_redirects=False) as response:
            callback = response.headers["Location"]
        async with browser.http.get(callback, allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == path
    runtime = proxy.app[LIVE].runtime
    value = browser.cookie(runtime.cookie.name)
    assert value, "the login set no session cookie"
    session = await runtime.store.load(value)
    assert session is not None and session.email == email, session
    return SignedIn(runtime.cookie.name, value, session.access_token)


async def signed_in_without_landing(proxy: Proxy, browser: Browser, email: str = EMAIL) -> SignedIn:
    """Log in but stop at the callback's redirect (to /landing), so no proxied request has been checked."""
    return await signed_in(proxy, browser, email, path="/landing", land=False)
