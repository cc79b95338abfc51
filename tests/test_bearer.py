"""Native and API clients: `Authorization: Bearer` with `device-id`, and the CentralAuth-compatible routes.

Everything runs against the fake CentralAuth with hijack protection on (IP, user agent and device id
compared with the login's), a real echo upstream and the proxy on loopback.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from conftest import BROWSER_IP, DevIdp, ProxyFactory
from conftest import BROWSER_UA as LOGIN_UA
from multidict import CIMultiDict
from support.echo import received_headers
from support.harness import BROWSER_UA, Browser, Proxy
from support.logins import signed_in

APP_ID = "com.example.notes"
DEVICE = "phone-7f3a"
# The proxy trusts X-Forwarded-For from loopback, so the test can present the phone's address: the
# one the fake recorded at its login, as a real client's would be.
NATIVE = {"User-Agent": LOGIN_UA, "X-Forwarded-For": BROWSER_IP}


async def userinfo_calls(devidp: DevIdp) -> int:
    return sum(1 for call in await devidp.recorded() if call["path"] == "/api/v1/userinfo")


async def native_sign_in(devidp: DevIdp, proxy: Proxy, email: str = "ada@example.com") -> str:
    """A native app's login at the fake (app_id, device_id, its app link on the proxy's origin, as the
    official native library does it); the access token it would then send to its backend."""
    link = f"{proxy.url}/native"
    await devidp.control(
        "PATCH",
        "/settings",
        {"appRegistrations": [{"type": "mobile", "bundleId": APP_ID, "appLink": link}]},
    )
    tokens = await devidp.sign_in(email, redirect_uri=link, app_id=APP_ID, device_id=DEVICE)
    return tokens.access_token


async def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, dict(response.headers), body


async def bearer_proxy(proxy_factory: ProxyFactory, **overrides: Any) -> Proxy:
    settings: dict[str, Any] = {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "centralauth": {"accept_bearer_tokens": True, "compat_routes": True},
    }
    for section, values in overrides.items():
        known = settings.get(section)
        settings[section] = {**known, **values} if isinstance(known, dict) else values
    return await proxy_factory(**settings)


async def test_a_native_client_signs_in_and_calls_the_api_with_its_device(
    proxy_factory: ProxyFactory, devidp: DevIdp
) -> None:
    proxy = await bearer_proxy(proxy_factory)
    token = await native_sign_in(devidp, proxy)
    headers = {**NATIVE, "Authorization": f"Bearer {token}", "device-id": DEVICE}
    status, _, body = await get(f"{proxy.url}/api/notes", {**headers, "Accept": "application/json"})
    assert status == 200
    seen = received_headers(body)
    assert seen["x-forwarded-email"] == "ada@example.com"
    # The token and the device id were the proxy's to judge: the app sees neither.
    assert "authorization" not in seen and "device-id" not in seen
    # What the fake was asked: the device id, the phone's address and agent.
    call = [c for c in await devidp.recorded() if c["path"] == "/api/v1/userinfo"][-1]
    assert call["headers"]["device-id"] == DEVICE and call["headers"]["auth-ip"] == BROWSER_IP

    # The same token from another device: CentralAuth ends the session as a hijack.
    before = await userinfo_calls(devidp)
    stolen = {**headers, "device-id": "attacker-laptop"}
    status, answer, body = await get(f"{proxy.url}/api/notes", stolen)
    assert status == 401
    assert answer["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body["error"] == "invalid_token"
    assert await userinfo_calls(devidp) == before + 1
    # Ended for the real device too, and the dead token costs no more calls, whatever it is sent with.
    for attempt in (headers, stolen, {**headers, "User-Agent": "other"}):
        assert (await get(f"{proxy.url}/api/notes", attempt))[0] == 401
    assert await userinfo_calls(devidp) == before + 1


async def test_bearer_requests_never_get_a_redirect(proxy_factory: ProxyFactory, devidp: DevIdp) -> None:
    proxy = await bearer_proxy(proxy_factory)
    browserish = {**NATIVE, "Accept": "text/html", "Authorization": "Bearer not-a-real-token"}
    status, headers, body = await get(f"{proxy.url}/page", browserish)
    assert status == 401 and body["error"] == "invalid_token"
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    # Without any credentials a browser is still sent to sign in, as before.
    status, headers, _ = await get(f"{proxy.url}/page", {"Accept": "text/html"})
    assert status == 302 and headers["Location"].startswith("/oauth2/start?")


async def test_ambiguous_bearer_credentials_are_refused(proxy_factory: ProxyFactory) -> None:
    proxy = await bearer_proxy(proxy_factory)
    async with aiohttp.ClientSession() as http:
        for lines in (
            [("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
            [("Authorization", "Bearer a"), ("device-id", "x"), ("device-id", "y")],
            [("Authorization", "Bearer a b")],
            [("Authorization", "Bearer ")],
        ):
            async with http.get(f"{proxy.url}/x", headers=CIMultiDict(lines)) as response:
                assert response.status == 400, lines


async def test_without_bearer_tokens_the_authorization_header_passes_as_before(
    proxy_factory: ProxyFactory, devidp: DevIdp, browser: Browser
) -> None:
    proxy = await proxy_factory()  # accept_bearer_tokens is off by default
    session = await signed_in(proxy, browser)
    headers = {"Cookie": session.header, "User-Agent": BROWSER_UA, "Authorization": "Basic YTpi"}
    status, _, body = await get(f"{proxy.url}/x", {**headers, "Accept": "application/json"})
    assert status == 200 and received_headers(body)["authorization"] == "Basic YTpi"
    # A bearer token alone is no session here.
    token = await native_sign_in(devidp, proxy)
    status, _, _ = await get(
        f"{proxy.url}/x", {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    assert status == 401


async def test_a_route_decides_about_bearer_tokens_and_the_authorization_header(
    proxy_factory: ProxyFactory, devidp: DevIdp
) -> None:
    proxy = await bearer_proxy(
        proxy_factory,
        centralauth={"accept_bearer_tokens": False},
        routes=[
            {"path": "/api/", "bearer": True, "pass_authorization": True},
            {"path": "/web/", "bearer": False},
        ],
    )
    token = await native_sign_in(devidp, proxy)
    headers = {
        **NATIVE,
        "Authorization": f"Bearer {token}",
        "device-id": DEVICE,
        "Accept": "application/json",
    }
    status, _, body = await get(f"{proxy.url}/api/x", headers)
    assert status == 200
    assert received_headers(body)["authorization"] == f"Bearer {token}"  # pass_authorization
    assert "device-id" not in received_headers(body)  # never, whatever the route says
    assert (await get(f"{proxy.url}/web/x", headers))[0] == 401


async def test_the_user_route_answers_as_the_react_hooks_expect(
    proxy_factory: ProxyFactory, devidp: DevIdp, browser: Browser
) -> None:
    proxy = await bearer_proxy(proxy_factory)
    # useUser(): fetch("/api/auth/user") with the browser's cookies; null when signed out.
    status, headers, body = await get(f"{proxy.url}/api/auth/user", {"Accept": "application/json"})
    assert (status, body) == (200, None)
    assert headers["Content-Type"].startswith("application/json") and headers["Cache-Control"] == "no-store"
    session = await signed_in(proxy, browser)
    cookie = {"Cookie": session.header, "User-Agent": BROWSER_UA}
    status, _, body = await get(f"{proxy.url}/api/auth/user", cookie)
    assert status == 200
    assert body["email"] == "ada@example.com" and body["id"] and body["verified"] is True
    assert body["affirmationDate"]
    # A native app asks its backend the same, with Bearer and device-id.
    token = await native_sign_in(devidp, proxy, "grace@example.com")
    native = {**NATIVE, "Authorization": f"Bearer {token}", "device-id": DEVICE}
    status, _, body = await get(f"{proxy.url}/api/auth/user", native)
    assert status == 200 and body["email"] == "grace@example.com"
    # Signed out at CentralAuth: null again, never an error page for the hook to choke on.
    await devidp.end_sessions("ada@example.com")
    proxy_runtime_ttl = proxy.config.centralauth.session_check_ttl
    assert proxy_runtime_ttl > 0  # the cache would still vouch: evict by a fresh, short-TTL proxy below
    fresh = await bearer_proxy(proxy_factory, centralauth={"session_check_ttl": 0})
    status, _, body = await get(f"{fresh.url}/api/auth/user", cookie)
    assert (status, body) == (200, None)


async def test_the_compat_login_affirm_and_logout_routes(
    proxy_factory: ProxyFactory, browser: Browser
) -> None:
    proxy = await bearer_proxy(proxy_factory)
    status, headers, _ = await get(f"{proxy.url}/api/auth/login?return_to=/notes", {})
    assert status == 302 and headers["Location"] == "/oauth2/start?rd=%2Fnotes"
    status, headers, _ = await get(f"{proxy.url}/api/auth/affirm?return_to=/notes", {})
    assert status == 302 and headers["Location"] == "/oauth2/start?rd=%2Fnotes&affirm=1"
    # A foreign return URL is never followed.
    status, headers, _ = await get(f"{proxy.url}/api/auth/login?return_to=https://evil.example/", {})
    assert headers["Location"] == "/oauth2/start?rd=%2F"
    # Logout is the proxy's sign-out: a same-origin request ends the session.
    session = await signed_in(proxy, browser)
    async with browser.http.get(
        f"{proxy.url}/api/auth/logout", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    ) as response:
        assert response.status in (302, 303)
    cookie = {"Cookie": session.header, "Accept": "application/json"}
    assert (await get(f"{proxy.url}/x", cookie))[0] == 401


async def test_without_compat_routes_those_paths_belong_to_the_app(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(routes={"skip_auth": ["^/api/auth/"]})
    status, _, body = await get(f"{proxy.url}/api/auth/user", {"Accept": "application/json"})
    assert status == 200 and body["path"] == "/api/auth/user"  # the echo upstream answered


async def test_forward_auth_checks_a_bearer_client_like_a_proxied_one(
    proxy_factory: ProxyFactory, devidp: DevIdp
) -> None:
    proxy = await bearer_proxy(proxy_factory)
    token = await native_sign_in(devidp, proxy)
    headers = {**NATIVE, "Authorization": f"Bearer {token}", "device-id": DEVICE}
    status, answer, _ = await get(f"{proxy.url}/oauth2/auth", headers)
    assert status == 202 and answer["X-Auth-Request-Email"] == "ada@example.com"
    # Another device: CentralAuth ends the session; the check says so the RFC 6750 way.
    status, answer, body = await get(f"{proxy.url}/oauth2/auth", {**headers, "device-id": "other"})
    assert status == 401 and answer["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body["error"] == "invalid_token"
    assert (await get(f"{proxy.url}/oauth2/auth", headers))[0] == 401
    # Where bearer tokens are off, a token alone is no session: the plain 401.
    plain = await proxy_factory(server={"trusted_proxies": ["127.0.0.1/32"]})
    status, answer, body = await get(f"{plain.url}/oauth2/auth", headers)
    assert status == 401 and body["error"] == "unauthorized" and "WWW-Authenticate" not in answer
