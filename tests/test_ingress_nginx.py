"""`deploy/kubernetes/ingress-nginx.yaml`: its annotations, rendered into a real nginx the way
ingress-nginx renders them (see support/ingress_nginx.py), in front of the echo app.

authproxy trusts the controller (`trusted_proxies = ["127.0.0.1/32"]`, `public_url` = the controller's
URL, secure cookies) and has a route table: `/open/` is public, `/staff/` admits staff.example only,
`/forms/` is public for GET only. The check reads X-Original-URL and X-Original-Method, which
ingress-nginx writes; it passes every other client header on, so a client's X-Forwarded-* reach
authproxy too, where they must not count for more than a refusal.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import DevIdp, ProxyFactory
from support import frontsite
from support.frontsite import ADA, BOB, IDENTITY, JSON, PATH_TRICKS, Answer, fetch, sites
from support.harness import Browser
from support.ingress_nginx import (
    IngressNginx,
    auth_location,
    read_example,
    sign_in_url,
    start_ingress_nginx,
)
from yarl import URL

SPOOFED = {
    "X-Auth-Request-User": "forged-user",
    "X-Auth-Request-Email": "forged@evil.example",
    "X-Auth-Request-Preferred-Username": "forged@evil.example",
}


Site = frontsite.Site[IngressNginx]
SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site_factory(proxy_factory: ProxyFactory, echo_url: str) -> AsyncIterator[SiteFactory]:
    async def start_front(port: int, authproxy: str) -> IngressNginx:
        return await start_ingress_nginx(port=port, authproxy=authproxy, app=URL(echo_url).raw_authority)

    async for start in sites(proxy_factory, start_front):
        yield start


@pytest.fixture
async def site(site_factory: SiteFactory) -> Site:
    return await site_factory()


def on_site(site: Site, location: str) -> URL:
    """auth-signin is `https://$host/...`: the host without the port, right on 443 in a cluster; the
    test's controller listens on another port, so the redirect is followed there."""
    url = URL(location)
    assert url.scheme == "https" and url.host == "127.0.0.1" and url.explicit_port is None, location
    return URL(site.url).with_path(url.path).with_query(url.query)


async def sign_in(site: Site, browser: Browser, email: str, path: str) -> Answer:
    """Ask for `path`, follow the 302 to auth-signin, log in at the fake CentralAuth, land back."""
    page = await fetch(browser, site.url + path)
    assert page.status == 302, (page.status, page.text[:200])
    start = await fetch(browser, on_site(site, page.headers["Location"]))
    assert start.status == 302 and start.headers["X-Authproxy"] == "1"
    async with browser.http.get(start.headers["Location"]) as response:
        form = response.url
    return await fetch(browser, form, method="POST", data={"email": email}, follow=True)


def checked(site: Site) -> list[str]:
    """authproxy's answers to the controller's auth subrequests, oldest first (from nginx's log)."""
    return [re.sub(r".* upstream=", "", line) for line in site.front.checks()]


def test_the_example_is_what_the_renderer_reads() -> None:
    example = read_example()
    assert example.auth_url.endswith("/oauth2/auth") and example.auth_url.startswith("http://")
    assert example.signin_url == "https://$host/oauth2/start"
    assert sign_in_url(example.signin_url).endswith(
        "?rd=$pass_access_scheme://$http_host$escaped_request_uri"
    )
    assert example.response_headers == [
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X-Auth-Request-Preferred-Username",
    ]
    assert (example.app_path, example.authproxy_path) == ("/", "/oauth2/")
    assert auth_location("/") == "/_external-auth-Lw"


async def test_signed_out_requests_go_to_auth_signin_with_the_full_url(site: Site, browser: Browser) -> None:
    for headers in ({}, JSON):  # ingress-nginx sends every 401 to auth-signin, programs' too
        page = await fetch(browser, f"{site.url}/reports?year=2024", headers=headers)
        assert page.status == 302
        location = URL(page.headers["Location"])
        assert location.path == "/oauth2/start"
        assert location.query["rd"] == f"{site.url}/reports?year=2024"
    assert checked(site) == ["401", "401"]


async def test_a_login_through_the_controller_reaches_the_app_with_authproxys_identity(
    site: Site, browser: Browser, devidp: DevIdp
) -> None:
    landed = await sign_in(site, browser, ADA, "/reports?year=2024")
    method, path, headers = landed.received
    assert (method, path) == ("GET", "/reports?year=2024")
    assert headers["x-auth-request-email"] == headers["x-auth-request-preferred-username"] == ADA
    assert headers["x-auth-request-user"] and headers["x-auth-request-user"] != ADA
    assert checked(site)[-1] == "202"

    _, _, headers = (await fetch(browser, f"{site.url}/api/items", headers=SPOOFED)).received
    assert headers["x-auth-request-email"] == ADA
    assert not [name for name, value in headers.items() if "forged" in value]
    answer = await fetch(browser, f"{site.url}/api/items", method="POST", data=b"payload")
    assert answer.received[0] == "POST" and answer.json()["body"] == "payload"


async def test_public_routes_pass_anonymously_and_per_method(site: Site, browser: Browser) -> None:
    method, path, headers = (await fetch(browser, f"{site.url}/open/x?q=1", headers=SPOOFED)).received
    assert (method, path) == ("GET", "/open/x?q=1")
    assert not [name for name in headers if name in IDENTITY]  # empty answers: nginx sends none
    assert (await fetch(browser, f"{site.url}/forms/x")).received[0] == "GET"
    # X-Original-Method says POST: /forms/ is public for GET only.
    assert (await fetch(browser, f"{site.url}/forms/x", method="POST")).status == 302


async def test_a_routes_allow_list_refuses_with_403(
    site: Site, browser: Browser, second_browser: Browser
) -> None:
    await sign_in(site, browser, ADA, "/other")
    denied = await fetch(browser, f"{site.url}/staff/x")
    assert denied.status == 403 and denied.headers.get("X-Upstream") != "echo"
    assert checked(site)[-1] == "403"
    landed = await sign_in(site, second_browser, BOB, "/staff/x")
    _, path, headers = landed.received
    assert path == "/staff/x" and headers["x-auth-request-email"] == BOB


@pytest.mark.parametrize("spelling", PATH_TRICKS)
async def test_a_path_trick_gets_no_public_leniency(site: Site, browser: Browser, spelling: str) -> None:
    answer = await fetch(browser, URL(site.url + spelling, encoded=True))
    # 401 becomes the sign-in redirect; a refusal as ambiguous (400) is an error to auth_request (500).
    assert answer.status in (302, 500), (spelling, answer.status)
    assert answer.headers.get("X-Upstream") != "echo"
    assert checked(site)[-1] in ("400", "401")


async def test_a_clients_forwarded_headers_only_lead_to_a_refusal(site: Site, browser: Browser) -> None:
    """The controller passes a client's X-Forwarded-Uri/-Method/-Host on to authproxy beside its own
    X-Original-URL/-Method: they disagree, and authproxy refuses (auth_request then answers 500)."""
    lies = [
        {"X-Forwarded-Uri": "/open/x"},
        {"X-Forwarded-Method": "GET"},  # the request is a POST
        {"X-Forwarded-Host": "admin.test"},
    ]
    for lie in lies:
        answer = await fetch(browser, f"{site.url}/forms/x", method="POST", headers=lie)
        assert answer.status == 500 and answer.headers.get("X-Upstream") != "echo", lie
        assert checked(site)[-1] == "400", lie


async def test_success_status_200_works_too(site_factory: SiteFactory, browser: Browser) -> None:
    site = await site_factory(forward_auth={"success_status": 200})
    assert (await fetch(browser, f"{site.url}/open/x")).received[1] == "/open/x"
    landed = await sign_in(site, browser, ADA, "/reports")
    assert landed.received[2]["x-auth-request-email"] == ADA
    assert checked(site) == ["200", "401", "200"]
