"""`/oauth2/auth`, `/oauth2/userinfo`, `/ping`, `/ready` and the metrics listener."""

from __future__ import annotations

import re

from aiohttp import ClientSession
from conftest import DevIdp, ProxyFactory
from support.harness import Browser, Proxy, free_port
from support.logins import signed_in

JSON = {"Accept": "application/json"}


async def test_auth_202_with_identity_when_signed_in(proxy: Proxy, browser: Browser) -> None:
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/oauth2/auth", allow_redirects=False) as response:
        assert response.status == 202
        assert response.headers["X-Auth-Request-Email"] == "ada@example.com"
        assert response.headers["X-Auth-Request-Preferred-Username"] == "ada@example.com"
        assert response.headers["X-Auth-Request-User"]
        assert "X-Auth-Request-Access-Token" not in response.headers


async def test_auth_passes_the_access_token_when_configured(
    proxy_factory: ProxyFactory, browser: Browser
) -> None:
    proxy = await proxy_factory(headers={"pass_access_token": True})
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/oauth2/auth") as response:
        assert response.headers["X-Auth-Request-Access-Token"].count(".") == 4


async def test_auth_401_never_redirects(proxy: Proxy) -> None:
    async with ClientSession() as http:
        for headers in ({"Accept": "text/html"}, JSON, {"Cookie": "_authproxy=garbage"}):
            async with http.get(f"{proxy.url}/oauth2/auth", headers=headers, allow_redirects=False) as r:
                assert r.status == 401, headers
                assert "Location" not in r.headers


async def test_auth_narrowing_by_query(proxy: Proxy, browser: Browser) -> None:
    await signed_in(proxy, browser)
    cases = [
        ("allowed_email_domains=example.com", 202),
        ("allowed_email_domains=corp.example,other.example", 403),
        ("allowed_emails=ada@example.com", 202),
        ("allowed_emails=bob@example.com", 403),
    ]
    for query, expected in cases:
        async with browser.http.get(f"{proxy.url}/oauth2/auth?{query}") as response:
            assert response.status == expected, query


async def test_auth_honours_forwarded_uri_from_trusted_proxies_only(proxy_factory: ProxyFactory) -> None:
    trusting = await proxy_factory(
        routes={"skip_auth": ["GET ^/public/"]}, server={"trusted_proxies": ["127.0.0.1/32"]}
    )
    untrusting = await proxy_factory(routes={"skip_auth": ["GET ^/public/"]})
    async with ClientSession() as http:
        public = {"X-Forwarded-Uri": "/public/logo.png", "X-Forwarded-Method": "GET"}
        async with http.get(f"{trusting.url}/oauth2/auth", headers=public) as response:
            assert response.status == 202
            assert "X-Auth-Request-User" not in response.headers
        post = {**public, "X-Forwarded-Method": "POST"}
        async with http.get(f"{trusting.url}/oauth2/auth", headers=post) as response:
            assert response.status == 401
        dressed = {"X-Forwarded-Uri": "/public/../admin", "X-Forwarded-Method": "GET"}
        async with http.get(f"{trusting.url}/oauth2/auth", headers=dressed) as response:
            assert response.status == 401
        async with http.get(f"{untrusting.url}/oauth2/auth", headers=public) as response:
            assert response.status == 401


async def test_auth_reflects_revocation(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    proxy = await proxy_factory(centralauth={"session_check_ttl": 0})
    await signed_in(proxy, browser)
    await devidp.end_sessions("ada@example.com")
    async with browser.http.get(f"{proxy.url}/oauth2/auth") as response:
        assert response.status == 401


async def test_userinfo(proxy: Proxy, browser: Browser) -> None:
    async with ClientSession() as http, http.get(f"{proxy.url}/oauth2/userinfo") as response:
        assert response.status == 401
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/oauth2/userinfo") as response:
        assert response.status == 200
        body = await response.json()
    assert body["email"] == body["preferredUsername"] == "ada@example.com"
    assert body["user"] and body["verified"] is True and body["affirmationDate"]


async def test_ping_and_ready(proxy: Proxy, devidp: DevIdp) -> None:
    async with ClientSession() as http:
        async with http.get(f"{proxy.url}/ping") as response:
            assert response.status == 200 and await response.text() == "OK"
        async with http.get(f"{proxy.url}/ready") as response:
            assert response.status == 200
            assert (await response.text()).startswith("ready")


async def test_ready_reports_degraded_without_failing(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(centralauth={"base_url": f"http://127.0.0.1:{free_port()}"})
    async with ClientSession() as http, http.get(f"{proxy.url}/ready") as response:
        assert response.status == 200
        text = await response.text()
    assert text.startswith("degraded: centralauth")
    assert "centralauth: unreachable" in text


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_exist_and_move(proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp) -> None:
    port = free_port()
    proxy = await proxy_factory(server={"metrics_listen": f"127.0.0.1:{port}"})
    scrape_url = f"http://127.0.0.1:{port}/metrics"
    async with ClientSession() as http:
        async with http.get(scrape_url) as response:
            before = await response.text()
        await signed_in(proxy, browser)
        for _ in range(5):
            async with browser.http.get(f"{proxy.url}/page") as response:
                assert response.status == 200
        await devidp.fault("userinfo", status=503, count=1)
        await devidp.end_sessions("ada@example.com")
        async with http.get(f"{proxy.url}/x", headers=JSON) as response:
            assert response.status == 401
        async with http.get(scrape_url) as response:
            after = await response.text()
        # The metrics port is not the proxy port, and the proxy does not serve /metrics itself.
        async with http.get(f"{proxy.url}/metrics", headers=JSON) as response:
            assert response.status == 401
    assert metric(after, "authproxy_requests_total", route="proxy", status="200") >= 6
    assert metric(after, "authproxy_requests_total", route="proxy", status="401") >= 1
    assert metric(after, "authproxy_request_duration_seconds_count", route="proxy") >= 7
    assert metric(after, "authproxy_logins_total", outcome="success") == 1
    assert metric(after, "authproxy_userinfo_calls_total", outcome="ok") >= 2
    assert metric(after, "authproxy_session_checks_total", source="hit") >= 4
    assert metric(after, "authproxy_session_checks_total", source="miss") >= 1
    assert metric(after, "authproxy_upstream_response_seconds_count") >= 6
    assert metric(after, "authproxy_session_cache_entries") >= 1
    assert re.search(r"^authproxy_requests_in_flight \d", after, re.M)
    assert metric(before, "authproxy_logins_total", outcome="success") == 0


async def test_revocations_are_counted(proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp) -> None:
    port = free_port()
    proxy = await proxy_factory(
        server={"metrics_listen": f"127.0.0.1:{port}"}, centralauth={"session_check_ttl": 0}
    )
    await signed_in(proxy, browser)
    await devidp.end_sessions("ada@example.com")
    async with browser.http.get(f"{proxy.url}/x", headers=JSON) as response:
        assert response.status == 401
    async with ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    assert metric(text, "authproxy_sessions_revoked_total") == 1
    assert metric(text, "authproxy_userinfo_calls_total", outcome="rejected") == 1
