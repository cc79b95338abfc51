"""The headers on every answer the proxy makes itself, and their absence from what it forwards.

Each kind of answer the proxy writes — the sign-in page, error pages, JSON errors, redirects into the
sign-in, the sign-out confirmation, the 404 for a path no application serves, /ping, /ready,
/oauth2/auth, /oauth2/userinfo, and aiohttp's own 400 (parser), 404, 413 and 500 — is asked for through
a real proxy on loopback and must forbid framing and sniffing, send no referrer and name no software
versions. Pages get a Content-Security-Policy they still render under, which a real Chromium checks.
Answers forwarded from an upstream keep the upstream's headers exactly, its `Server` header included,
and gain no `Server` header of aiohttp's when the upstream sent none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import ProxyFactory
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer
from support.chaos import RawRequest, RawServer, exchange, respond, status_of
from support.chromium import expect, launch, new_context
from support.harness import BROWSER_UA, HTML, Proxy
from support.logins import signed_in
from test_abuse import REFUSED

from authproxy.runtime import LIVE

JSON = "application/json"
OWN_SERVER = "authproxy"


def policy(headers: Mapping[str, str]) -> dict[str, str]:
    """The Content-Security-Policy as directive -> sources."""
    directives = [d.strip() for d in headers["Content-Security-Policy"].split(";") if d.strip()]
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else "" for d in directives}


def assert_own(headers: CIMultiDict[str] | Mapping[str, str], *, referrer: str = "no-referrer") -> None:
    """The headers every answer the proxy makes itself must carry."""
    assert headers["X-Frame-Options"] == "DENY"
    csp = policy(headers)
    assert csp["frame-ancestors"] == "'none'"
    assert csp["default-src"] == "'none'"
    assert csp["base-uri"] == "'none'"
    assert headers["Referrer-Policy"] == referrer
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Authproxy"] == "1"
    servers = headers.getall("Server") if isinstance(headers, CIMultiDict) else [headers["Server"]]
    assert servers == [OWN_SERVER]
    assert not re.search(r"\d", servers[0])


def assert_page(headers: Mapping[str, str], body: str) -> None:
    """A page's policy allows its own inline style (by hash) and nothing it does not use."""
    csp = policy(headers)
    (style,) = re.findall(r"<style>(.*?)</style>", body, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert csp["style-src"] == f"'sha256-{digest}'"
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert "script-src" not in csp and "<script" not in body.lower() and " style=" not in body.lower()


async def get(
    url: str, *, accept: str = HTML, headers: Mapping[str, str] | None = None, **kwargs: Any
) -> tuple[int, CIMultiDict[str], str]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        all_headers = {"Accept": accept, "User-Agent": BROWSER_UA, **(headers or {})}
        async with http.get(url, headers=all_headers, allow_redirects=False, **kwargs) as response:
            return response.status, CIMultiDict(response.headers), await response.text()


def parse_head(answer: bytes) -> CIMultiDict[str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return headers


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


# --- every kind of answer the proxy makes itself ----------------------------------------------------------


async def test_the_sign_in_page(proxy: Proxy) -> None:
    status, headers, body = await get(f"{proxy.url}/oauth2/sign_in?rd=/x")
    assert status == 200 and "Sign in" in body
    assert_own(headers)
    assert_page(headers, body)
    assert policy(headers)["form-action"] == "'none'"  # no form on it
    assert "img-src" not in policy(headers)  # no logo configured
    # The way into the sign-in still sends the proxy's origin on to CentralAuth (see the start route).
    assert 'referrerpolicy="origin"' in body


async def test_error_pages_and_json_errors(proxy: Proxy) -> None:
    status, headers, body = await get(f"{proxy.url}/oauth2/callback?code=a&state=b")
    assert status == 400 and "Sign-in expired" in body
    assert_own(headers)
    assert_page(headers, body)
    status, headers, body = await get(f"{proxy.url}/oauth2/callback?code=a&state=b", accept=JSON)
    assert status == 400 and '"login_expired"' in body
    assert_own(headers)


async def test_redirects_into_the_sign_in_and_unauthenticated_json(proxy: Proxy) -> None:
    status, headers, _ = await get(f"{proxy.url}/private")
    assert status == 302 and headers["Location"].startswith("/oauth2/start")
    assert_own(headers)
    status, headers, body = await get(f"{proxy.url}/private", accept=JSON)
    assert status == 401 and '"unauthorized"' in body
    assert_own(headers)


async def test_the_start_route_keeps_its_own_referrer_policy(proxy: Proxy) -> None:
    """CentralAuth's checkReferrer must still see the proxy's origin on the way to its login page."""
    status, headers, _ = await get(f"{proxy.url}/oauth2/start?rd=/x")
    assert status == 302
    assert_own(headers, referrer="strict-origin-when-cross-origin")
    assert headers.getall("Referrer-Policy") == ["strict-origin-when-cross-origin"]


async def test_the_sign_out_confirmation_and_redirect(proxy: Proxy) -> None:
    cookie = (await signed_in(proxy)).header
    status, headers, body = await get(
        f"{proxy.url}/oauth2/sign_out", headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site"}
    )
    assert status == 200 and "<form" in body
    assert_own(headers)
    assert_page(headers, body)
    # Its POST ends in a redirect chain (return URL, app, maybe CentralAuth) that form-action would hold.
    assert "form-action" not in policy(headers)
    status, headers, _ = await get(
        f"{proxy.url}/oauth2/sign_out", headers={"Cookie": cookie, "Sec-Fetch-Site": "same-origin"}
    )
    assert status == 302
    assert_own(headers)


async def test_the_404_for_a_path_no_application_serves(proxy_factory: ProxyFactory, echo_url: str) -> None:
    proxy = await proxy_factory(upstreams=[{"path": "/app", "url": echo_url}])
    status, headers, body = await get(f"{proxy.url}/elsewhere")
    assert status == 404 and "No application" in body
    assert_own(headers)
    assert_page(headers, body)


async def test_health_checks(proxy: Proxy) -> None:
    for path in ("/ping", "/ready"):
        status, headers, _ = await get(f"{proxy.url}{path}")
        assert status == 200, path
        assert_own(headers)


async def test_forward_auth_and_userinfo(proxy: Proxy) -> None:
    for path in ("/oauth2/auth", "/oauth2/userinfo"):
        status, headers, _ = await get(f"{proxy.url}{path}", accept=JSON)
        assert status == 401, path
        assert_own(headers)
    cookie = (await signed_in(proxy)).header
    for path, expected in (("/oauth2/auth", 202), ("/oauth2/userinfo", 200)):
        status, headers, _ = await get(f"{proxy.url}{path}", accept=JSON, headers={"Cookie": cookie})
        assert status == expected, path
        assert_own(headers)


async def test_aiohttps_own_404_and_413(proxy: Proxy) -> None:
    # A target that is not a path matches no route, not even the catch-all: aiohttp's own 404.
    answer = await exchange(port_of(proxy), b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 404
    assert_own(parse_head(answer))
    # The sign-out form is read with aiohttp's body limit (1 MiB): aiohttp's own 413.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy.url}/oauth2/sign_out", data={"rd": "x" * (2 * 1024 * 1024)}, allow_redirects=False
        ) as response:
            assert response.status == 413
            assert_own(CIMultiDict(response.headers))


async def test_an_unexpected_error_is_a_fixed_500(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(value: str) -> None:
        raise RuntimeError("a bug, not the client's doing")

    monkeypatch.setattr(proxy.app[LIVE].runtime.store, "load", broken)
    cookie = f"{proxy.app[LIVE].runtime.cookie.name}=anything"
    for accept in (HTML, JSON):
        status, headers, body = await get(f"{proxy.url}/private", accept=accept, headers={"Cookie": cookie})
        assert status == 500
        assert_own(headers)
        assert body == "500 Internal Server Error\n"


# --- parser refusals: a fixed answer, nothing of the request quoted back --------------------------------


@pytest.fixture
async def raw_proxy(proxy_factory: ProxyFactory) -> AsyncIterator[Proxy]:
    upstream = await RawServer().start()
    yield await proxy_factory(routes={"skip_auth": ["^/public/"]}, upstreams=[{"url": upstream.url}])
    await upstream.stop()


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
async def test_a_parser_refusal_is_fixed_text_with_the_own_headers(raw_proxy: Proxy, raw: bytes) -> None:
    answer = await exchange(port_of(raw_proxy), raw, wait=0.5)
    status = status_of(answer)
    assert status in (400, 413, 414, 431)
    headers = parse_head(answer)
    assert_own(headers)
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert re.fullmatch(rb"4\d\d [A-Za-z ]+\n", body), body[:200]


async def test_an_oversized_cookie_is_not_quoted_back(raw_proxy: Proxy) -> None:
    secret = b"SECRETSEALEDVALUE0123456789"
    for layout in (
        b"_authproxy=" + secret + b"; pad=" + b"x" * 9000,
        b"pad=" + b"x" * 9000 + b"; a=" + secret,
    ):
        answer = await exchange(
            port_of(raw_proxy), b"GET /public/x HTTP/1.1\r\nHost: a\r\nCookie: " + layout + b"\r\n\r\n"
        )
        assert status_of(answer) == 400
        assert answer.endswith(b"\r\n\r\n400 Bad Request\n")
        assert b"SECRET" not in answer and b"xxxx" not in answer and b"_authproxy" not in answer


# --- forwarded answers are the upstream's ----------------------------------------------------------------

UPSTREAM_HEADERS = {
    "Server": "upstream/1.0",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "default-src 'self'",
    "Referrer-Policy": "unsafe-url",
}


async def test_a_forwarded_answer_keeps_the_upstreams_headers(proxy_factory: ProxyFactory) -> None:
    upstream = await RawServer().start()

    async def own_headers(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(respond(200, b"app", UPSTREAM_HEADERS if request.target.endswith("/own") else {}))
        await writer.drain()
        return True

    upstream.behaviour = own_headers
    try:
        proxy = await proxy_factory(routes={"skip_auth": ["^/public/"]}, upstreams=[{"url": upstream.url}])
        answer = await exchange(
            port_of(proxy), b"GET /public/own HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        headers = parse_head(answer)
        for name, value in UPSTREAM_HEADERS.items():
            assert headers.getall(name) == [value], name
        assert "X-Authproxy" not in headers and "X-Content-Type-Options" not in headers
        # Without a Server header from the upstream, the answer has none: not aiohttp's versioned one.
        answer = await exchange(
            port_of(proxy), b"GET /public/bare HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert status_of(answer) == 200 and answer.endswith(b"app")
        headers = parse_head(answer)
        assert "Server" not in headers
        for name in (
            "X-Frame-Options",
            "Content-Security-Policy",
            "Referrer-Policy",
            "X-Content-Type-Options",
        ):
            assert name not in headers
    finally:
        await upstream.stop()


async def test_an_aiohttp_upstreams_own_server_header_passes(proxy_factory: ProxyFactory) -> None:
    """The echo upstream is aiohttp too: its Server header, the same text as aiohttp's default, is its own."""
    proxy = await proxy_factory(routes={"skip_auth": ["^/public/"]})
    status, headers, body = await get(f"{proxy.url}/public/x", accept=JSON)
    assert status == 200 and '"path": "/public/x"' in body
    assert headers.getall("Server") == [aiohttp.http.SERVER_SOFTWARE]
    assert "X-Frame-Options" not in headers and "Content-Security-Policy" not in headers


async def test_a_forwarded_websocket_handshake_names_no_versions(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(routes={"skip_auth": ["^/_ws"]})
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{proxy.url}/_ws") as ws:
            assert "Server" not in ws._response.headers
            await ws.close()


# --- branding: the logo's source, and a real browser rendering under the policy ----------------------------


@pytest.mark.parametrize(
    ("logo", "source"),
    [
        ("https://cdn.example.com/brand/logo.svg?v=2", "https://cdn.example.com"),
        ("http://Assets.Example.com:8080/logo.png", "http://assets.example.com:8080"),
        ("/static/logo.png", "'self'"),
        ("data:image/png;base64,iVBORw0KGgo=", "data:"),
        ("https://user@cdn.example.com/logo.png", "https:"),
    ],
)
async def test_the_logo_is_allowed_by_its_origin(proxy_factory: ProxyFactory, logo: str, source: str) -> None:
    proxy = await proxy_factory(branding={"logo_url": logo, "title": "Acme"})
    _, headers, body = await get(f"{proxy.url}/oauth2/sign_in")
    assert policy(headers)["img-src"] == source
    assert_page(headers, body)


# A 1x1 PNG.
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5"
    "ErkJggg=="
)


async def test_pages_render_in_chromium_and_cannot_be_framed(
    proxy_factory: ProxyFactory, aiohttp_server: AiohttpServer
) -> None:
    proxy = await proxy_factory(
        branding={"logo_url": PIXEL, "title": "Acme", "footer": "Acme Corp"},
        routes={"skip_auth": ["^/public/"]},
    )
    async with launch() as chromium:
        context = await new_context(chromium)
        try:
            page = await context.new_page()
            violations: list[str] = []
            page.on("console", lambda message: violations.append(message.text))
            await page.goto(f"{proxy.url}/oauth2/sign_in?rd=/x")
            button = page.get_by_role("link", name="Sign in")
            await expect(button).to_be_visible()
            # The inline style applied (the button's colour), and the logo loaded.
            colour = await button.evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(36, 87, 214)"
            assert await page.locator("header img").evaluate("e => e.complete && e.naturalWidth") == 1
            assert not [v for v in violations if "Content Security Policy" in v], violations

            # Another site framing the page gets nothing, while it can frame the application (the
            # proxied page next to it), so the frame really was tried. The other site is a server on
            # loopback: Chromium would block a public page from framing a loopback one anyway.
            frames = (
                f'<iframe id="own" src="{proxy.url}/oauth2/sign_in"></iframe>'
                f'<iframe id="app" src="{proxy.url}/public/framed"></iframe>'
            )
            elsewhere = web.Application()

            async def framing(request: web.Request) -> web.Response:
                return web.Response(text=frames, content_type="text/html")

            elsewhere.router.add_get("/", framing)
            server = await aiohttp_server(elsewhere)
            await page.goto(str(server.make_url("/")))
            await expect(page.frame_locator("#app").locator("body")).to_contain_text("/public/framed")
            assert await page.frame_locator("#own").get_by_role("link", name="Sign in").count() == 0
        finally:
            await context.close()
