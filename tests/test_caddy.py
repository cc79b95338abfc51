"""`deploy/caddy/Caddyfile` in a real Caddy (its `forward_auth` directive) in front of the echo app.

Caddy runs the example over TLS on loopback (see support/caddy.py), asking a real authproxy that
trusts it (`trusted_proxies = ["127.0.0.1/32"]`, `public_url` = the Caddy URL, secure cookies as in
production) and has a route table: `/open/` is public, `/staff/` admits staff.example only, `/forms/`
is public for GET only. The browser only ever talks to Caddy and to the fake CentralAuth's login form.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import ProxyFactory
from support import frontsite
from support.caddy import Caddy, caddy_binary, start_caddy
from support.frontsite import ADA, BOB, IDENTITY, JSON, PATH_TRICKS, Answer, fetch, sites
from support.harness import Browser
from support.nginx import site_tls
from yarl import URL

# What a client may send to pass for someone: the app must never see any of it.
SPOOFED = {
    "X-Auth-Request-User": "forged-user",
    "X-Auth-Request-Email": "forged@evil.example",
    "X-Auth-Request-Preferred-Username": "forged@evil.example",
    "X-Forwarded-User": "forged-user",
    "X-Forwarded-Email": "forged@evil.example",
    "Remote-User": "forged-user",
}


Site = frontsite.Site[Caddy]
SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site_factory(proxy_factory: ProxyFactory, echo_url: str) -> AsyncIterator[SiteFactory]:
    async def start_front(port: int, authproxy: str) -> Caddy:
        return await start_caddy(port=port, authproxy=authproxy, app=URL(echo_url).raw_authority)

    async for start in sites(proxy_factory, start_front):
        yield start


@pytest.fixture
async def site(site_factory: SiteFactory) -> Site:
    return await site_factory()


async def sign_in(site: Site, browser: Browser, email: str, path: str = "/") -> Answer:
    """The whole login through Caddy: the app page, the fake CentralAuth's form, back to the page."""
    async with browser.http.get(site.url + path, ssl=site_tls().client_context) as response:
        form = response.url
        assert form.path == "/login", (response.status, form)
    return await fetch(browser, form, method="POST", data={"email": email}, follow=True)


def raw(site: Site, path: str) -> URL:
    return URL(site.url + path, encoded=True)


def test_caddy_is_installed() -> None:
    """Without Caddy every test below fails too (never skips); this one says so first, and plainly."""
    assert caddy_binary()


async def test_signed_out_browsers_are_sent_to_sign_in_and_programs_get_401(
    site: Site, browser: Browser
) -> None:
    page = await fetch(browser, f"{site.url}/reports?year=2024")
    assert page.status == 302 and page.headers["Location"] == "/oauth2/start?rd=/reports?year=2024"
    start = await fetch(browser, site.url + page.headers["Location"])
    assert start.status == 302 and start.headers["X-Authproxy"] == "1"  # Caddy proxied it to authproxy
    assert URL(start.headers["Location"]).query["redirect_uri"] == f"{site.url}/oauth2/callback"

    api = await fetch(browser, f"{site.url}/api/items", headers=JSON)
    assert api.status == 401 and api.json()["error"] == "unauthorized"
    assert (await fetch(browser, f"{site.url}/api/items", headers={"X-Requested-With": "x"})).status == 401


async def test_signed_in_requests_reach_the_app_with_authproxys_identity_only(
    site: Site, browser: Browser
) -> None:
    landed = await sign_in(site, browser, ADA, "/reports?year=2024")
    method, path, headers = landed.received
    assert (method, path) == ("GET", "/reports?year=2024")
    whoami = await fetch(browser, f"{site.url}/oauth2/userinfo", headers=JSON)
    assert headers["x-auth-request-user"] == whoami.json()["user"] != ADA
    assert headers["x-auth-request-email"] == headers["x-auth-request-preferred-username"] == ADA

    _, _, headers = (await fetch(browser, f"{site.url}/reports", headers=SPOOFED)).received
    assert headers["x-auth-request-email"] == ADA
    assert not {name: value for name, value in headers.items() if "forged" in value}
    # POST keeps its method and body: forward_auth only sends authproxy a GET copy of the head.
    answer = await fetch(browser, f"{site.url}/api/items", method="POST", data=b"payload")
    assert answer.received[0] == "POST" and answer.json()["body"] == "payload"


async def test_public_routes_pass_anonymously_and_never_with_a_forged_identity(
    site: Site, browser: Browser
) -> None:
    method, path, headers = (await fetch(browser, f"{site.url}/open/x?q=1", headers=SPOOFED)).received
    assert (method, path) == ("GET", "/open/x?q=1")
    assert not [name for name in headers if name in IDENTITY or "forged" in headers[name]]
    # /forms/ is public for GET only: Caddy sends the real method (X-Forwarded-Method).
    assert (await fetch(browser, f"{site.url}/forms/x")).received[0] == "GET"
    assert (await fetch(browser, f"{site.url}/forms/x", method="POST", headers=JSON)).status == 401


async def test_a_routes_allow_list_refuses_with_403(
    site: Site, browser: Browser, second_browser: Browser
) -> None:
    await sign_in(site, browser, ADA)
    denied = await fetch(browser, f"{site.url}/staff/x", headers=JSON)
    assert denied.status == 403 and denied.json()["error"] == "access_denied"
    assert denied.headers.get("X-Upstream") != "echo"
    assert (await fetch(browser, f"{site.url}/other")).received[2]["x-auth-request-email"] == ADA

    landed = await sign_in(site, second_browser, BOB, "/staff/x")
    _, path, headers = landed.received
    assert path == "/staff/x" and headers["x-auth-request-email"] == BOB


@pytest.mark.parametrize("spelling", PATH_TRICKS)
async def test_a_path_trick_gets_no_public_leniency(site: Site, browser: Browser, spelling: str) -> None:
    answer = await fetch(browser, raw(site, spelling), headers=JSON)
    assert answer.status in (400, 401), (spelling, answer.status, answer.text[:200])
    assert answer.headers.get("X-Upstream") != "echo"


async def test_a_client_cannot_name_another_target(site: Site, browser: Browser) -> None:
    """Caddy writes X-Forwarded-Uri/-Method itself but passes other headers on: a client's
    X-Original-URL reaches authproxy beside Caddy's X-Forwarded-Uri, and the two disagree."""
    lies = [
        {"X-Original-URL": f"{site.url}/open/x"},
        {"X-Original-URL": "/open/x", "X-Original-Method": "GET"},
        {"X-Forwarded-Uri": "/open/x"},
    ]
    for lie in lies:
        answer = await fetch(browser, f"{site.url}/private", headers={**JSON, **lie})
        assert answer.status in (400, 401), (lie, answer.status)
        assert answer.headers.get("X-Upstream") != "echo"


async def test_success_status_200_works_too(site_factory: SiteFactory, browser: Browser) -> None:
    site = await site_factory(forward_auth={"success_status": 200})
    assert (await fetch(browser, f"{site.url}/open/x")).received[1] == "/open/x"
    landed = await sign_in(site, browser, ADA, "/reports")
    assert landed.received[2]["x-auth-request-email"] == ADA
