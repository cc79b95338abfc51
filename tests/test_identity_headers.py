"""What the upstream receives: the proxy's identity headers, never a client's forgery, no foreign cookies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientSession
from conftest import DevIdp, ProxyFactory
from support.echo import received_headers
from support.harness import Browser, Proxy

from authproxy.runtime import LIVE

IDENTITY = [
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Access-Token",
    "X-Real-IP",
    "auth-ip",
    "device-id",
]


def spellings(name: str) -> list[str]:
    lower = name.lower()
    return [
        name,
        lower,
        name.upper(),
        lower.replace("-", "_"),
        name.replace("-", "."),
        name.replace("-", "_", 1),
    ]


SPOOFS = sorted({variant for name in IDENTITY for variant in spellings(name)})


def test_the_spoof_table_is_large() -> None:
    assert len(SPOOFS) >= 30


async def _signed_in(proxy: Proxy, browser: Browser, email: str = "ada@example.com") -> None:
    status, _, _ = await browser.login(f"{proxy.url}/", email)
    assert status == 200


async def _echo(
    browser: Browser, url: str, headers: dict[str, str] | list[tuple[str, str]]
) -> dict[str, Any]:
    async with browser.http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return dict(json.loads(await response.text()))


@pytest.mark.parametrize("spoof", SPOOFS)
async def test_spoofed_identity_headers_never_arrive(proxy: Proxy, browser: Browser, spoof: str) -> None:
    await _signed_in(proxy, browser)
    echoed = await _echo(browser, f"{proxy.url}/who", [(spoof, "mallory@evil.example")])
    values = [value for _, value in echoed["headers"]]
    assert "mallory@evil.example" not in values
    headers = received_headers(echoed)
    assert headers["x-forwarded-email"] == "ada@example.com"


async def test_identity_headers_are_the_proxys(proxy: Proxy, browser: Browser, devidp: DevIdp) -> None:
    await _signed_in(proxy, browser)
    echoed = await _echo(
        browser, f"{proxy.url}/who", {"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "forged"}
    )
    headers = received_headers(echoed)
    assert headers["x-forwarded-user"] and headers["x-forwarded-user"] != "ada@example.com"
    assert headers["x-forwarded-email"] == headers["x-forwarded-preferred-username"] == "ada@example.com"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # no trusted proxies: the socket peer
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == proxy.url.removeprefix("http://")
    assert headers["x-request-id"] != "forged" and len(headers["x-request-id"]) >= 16
    assert "x-forwarded-access-token" not in headers


async def test_access_token_only_when_configured(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory(headers={"pass_access_token": True})
    await _signed_in(proxy, browser)
    headers = received_headers(await _echo(browser, f"{proxy.url}/who", {}))
    assert headers["x-forwarded-access-token"].count(".") == 4  # a compact JWE


async def test_skip_auth_requests_carry_no_identity(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory(routes={"skip_auth": ["^/public/"]})
    await _signed_in(proxy, browser)
    echoed = await _echo(
        browser, f"{proxy.url}/public/page", [("X-Forwarded-User", "forged"), ("x_auth_request_email", "f")]
    )
    headers = received_headers(echoed)
    for name in (
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x_auth_request_email",
    ):
        assert name not in headers
    async with ClientSession() as anonymous:
        async with anonymous.get(f"{proxy.url}/public/page") as response:
            assert response.status == 200
            assert "x-forwarded-user" not in received_headers(await response.json())


async def test_trusted_proxy_forwarded_headers(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory(server={"trusted_proxies": ["127.0.0.1/32"]})
    await _signed_in(proxy, browser)
    # The fake saw the browser as 127.0.0.1 at login, so the check must also see 127.0.0.1: a trusted
    # chain ending in the loopback proxy itself.
    echoed = await _echo(
        browser,
        f"{proxy.url}/who",
        {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com"},
    )
    headers = received_headers(echoed)
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "app.example.com"


async def test_proxy_cookies_are_stripped_and_app_cookies_pass(proxy: Proxy, browser: Browser) -> None:
    await _signed_in(proxy, browser)
    browser.jar.update_cookies({"theme": "dark", "app_session": "abc=def"})
    headers = received_headers(await _echo(browser, f"{proxy.url}/who", {}))
    cookie = headers["cookie"]
    assert "theme=dark" in cookie and "app_session=" in cookie
    assert proxy.app[LIVE].runtime.cookie.name not in cookie


async def test_one_users_upstream_cookie_never_reaches_another(proxy: Proxy) -> None:
    alice, bob = Browser(), Browser()
    try:
        await _signed_in(proxy, alice, "alice@example.com")
        await _signed_in(proxy, bob, "bob@example.com")
        async with alice.http.get(f"{proxy.url}/_set_cookie?value=alice-secret") as response:
            assert response.status == 200
            assert "alice-secret" in response.headers["Set-Cookie"]  # passed back to Alice's browser
        for _ in range(3):
            headers = received_headers(await _echo(bob, f"{proxy.url}/who", {}))
            assert "alice-secret" not in headers.get("cookie", "")
        headers = received_headers(await _echo(alice, f"{proxy.url}/who", {}))
        assert "app_cookie=alice-secret" in headers["cookie"]  # from Alice's own browser, not a shared jar
    finally:
        await alice.close()
        await bob.close()
