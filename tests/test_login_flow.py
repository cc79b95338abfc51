"""The login flow end to end: a browser-like client, the proxy, the real fake CentralAuth, an echo app.

Covers /oauth2/start, /oauth2/callback (error → state → exchange → userinfo → rules → session) and the
unauthenticated behaviour of proxied paths, with every failure path leaving no session behind.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

import ada_url
import pytest
from aiohttp import ClientSession, CookieJar
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp, ProxyFactory
from support.chaos import exchange, status_of
from support.echo import received_headers
from support.harness import BROWSER_UA, Browser, Proxy, start_proxy
from test_redirect import MAIN, TABLE, oracle_allows
from yarl import URL

from authproxy.core.redirect import RedirectPolicy
from authproxy.routes.auth import MAX_RETURN_URL
from authproxy.runtime import LIVE


def session_cookie(proxy: Proxy) -> str:
    return proxy.app[LIVE].runtime.cookie.name


async def test_login_lands_on_the_requested_url_with_identity(proxy: Proxy, browser: Browser) -> None:
    status, url, body = await browser.login(f"{proxy.url}/reports/q3?year=2026&q=1", "ada@example.com")
    assert status == 200
    assert str(url) == f"{proxy.url}/reports/q3?year=2026&q=1"
    echoed = json.loads(body)
    assert echoed["path"] == "/reports/q3?year=2026&q=1"
    headers = received_headers(echoed)
    assert headers["x-forwarded-email"] == "ada@example.com"
    assert headers["x-forwarded-preferred-username"] == "ada@example.com"
    assert headers["x-forwarded-user"]
    assert browser.cookie(session_cookie(proxy))
    # The login transaction is single use: its cookie is gone once the callback ran.
    assert not [c for c in browser.jar if "_login_" in c.key]
    # The session now works on its own, without going back to CentralAuth's login page.
    status, url, body = await browser.get(f"{proxy.url}/other")
    assert status == 200 and url.path == "/other" and json.loads(body)["path"] == "/other"


async def test_start_redirects_to_centralauth_with_pkce(proxy: Proxy, devidp: DevIdp) -> None:
    async with ClientSession() as http:
        async with http.get(f"{proxy.url}/oauth2/start?rd=/after", allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
            location = URL(response.headers["Location"])
            cookies = dict(response.cookies.items())
    assert str(location.with_query(None)) == f"{devidp.url}/login"
    query = location.query
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == f"{proxy.url}/oauth2/callback"
    assert query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43  # 256 bits
    (name,) = cookies
    assert name.endswith(query["state"])
    morsel = cookies[name]
    assert morsel["path"] == "/oauth2" and morsel["httponly"] and morsel["samesite"] == "Lax"
    assert int(morsel["max-age"]) <= 600


async def test_parallel_users_and_tabs(proxy: Proxy) -> None:
    async def one_user(index: int) -> None:
        browser = Browser()
        try:
            _, url, body = await browser.login(f"{proxy.url}/user/{index}", f"user{index}@example.com")
            assert url.path == f"/user/{index}"
            assert received_headers(json.loads(body))["x-forwarded-email"] == f"user{index}@example.com"
        finally:
            await browser.close()

    await asyncio.gather(*(one_user(i) for i in range(6)))


async def test_parallel_tabs_of_one_browser_do_not_clobber_each_other(proxy: Proxy, browser: Browser) -> None:
    # Every tab starts its login before any finishes: one shared verifier cookie would break all but one.
    forms = []
    for tab in range(4):
        async with browser.http.get(f"{proxy.url}/tab/{tab}") as response:
            forms.append(response.url)
    assert len({form.query["state"] for form in forms}) == 4

    async def finish(tab: int) -> URL:
        async with browser.http.post(forms[tab], data={"email": "tabs@example.com"}) as response:
            assert response.status == 200, await response.text()
            return response.url

    landed = await asyncio.gather(*(finish(tab) for tab in range(4)))
    assert [url.path for url in landed] == [f"/tab/{tab}" for tab in range(4)]


async def test_pending_logins_per_browser_are_capped(proxy: Proxy, browser: Browser) -> None:
    for _ in range(12):
        async with browser.http.get(f"{proxy.url}/oauth2/start", allow_redirects=False) as response:
            assert response.status == 302
    assert len([c for c in browser.jar if "_login_" in c.key]) <= 5


async def test_callback_error_shows_a_fixed_page(proxy: Proxy, browser: Browser) -> None:
    evil = "<script>alert(1)</script>"
    status, _, body = await browser.get(
        f"{proxy.url}/oauth2/callback", params={"error": "stateMissing", "error_description": evil}
    )
    assert status == 400
    assert "<script>" not in body and "alert(1)" not in body
    assert "Sign-in failed" in body and "/oauth2/start" in body
    assert browser.cookie(session_cookie(proxy)) is None


@pytest.mark.parametrize(
    "query",
    [{}, {"code": "abc"}, {"code": "abc", "state": "x" * 43}, {"code": "abc", "state": "../../etc"}],
    ids=["nothing", "no-state", "foreign-state", "malformed-state"],
)
async def test_callback_without_a_matching_transaction(
    proxy: Proxy, browser: Browser, query: dict[str, str]
) -> None:
    status, _, body = await browser.get(f"{proxy.url}/oauth2/callback", params=query)
    assert status == 400
    assert "expired or was started in another browser" in body
    assert 'href="/oauth2/start"' in body
    assert browser.cookie(session_cookie(proxy)) is None


async def test_callback_errors_are_json_for_api_clients(proxy: Proxy) -> None:
    async with ClientSession() as http:
        async with http.get(
            f"{proxy.url}/oauth2/callback", headers={"Accept": "application/json"}
        ) as response:
            assert response.status == 400
            body = await response.json()
    assert body["error"] == "login_expired" and body["request_id"]
    assert response.headers["X-Authproxy"] == "1"


async def _callback_url_of(browser: Browser, proxy: Proxy, path: str = "/") -> tuple[URL, URL]:
    """Start a login and complete it at the fake without following the redirect back to the proxy."""
    async with browser.http.get(f"{proxy.url}{path}") as response:
        form = response.url
    async with browser.http.post(
        form, data={"email": "replay@example.com"}, allow_redirects=False
    ) as response:
        assert response.status == 302
        return form, URL(response.headers["Location"])


async def test_replayed_callback_is_refused(proxy: Proxy, browser: Browser) -> None:
    form, callback = await _callback_url_of(browser, proxy)
    runtime = proxy.app[LIVE].runtime
    name = runtime.transactions.name(form.query["state"])
    transaction_cookie = browser.cookie(name)
    assert transaction_cookie
    status, _, _ = await browser.get(str(callback))
    assert status == 200
    async with ClientSession(headers={"Accept": "text/html"}) as attacker:
        async with attacker.get(
            str(callback), headers={"Cookie": f"{name}={transaction_cookie}"}, allow_redirects=False
        ) as response:
            assert response.status == 400
            set_cookies = response.headers.getall("Set-Cookie", [])
            assert not [c for c in set_cookies if c.startswith(f"{session_cookie(proxy)}=")]


async def test_code_with_another_logins_verifier_is_refused(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    _, first = await _callback_url_of(browser, proxy)
    second_form, _ = await _callback_url_of(browser, proxy)
    # The first login's code delivered with the second login's state: the verifier does not match.
    swapped = first.update_query(state=second_form.query["state"])
    status, _, body = await browser.get(str(swapped))
    assert status == 400 and "Sign-in failed" in body
    assert browser.cookie(session_cookie(proxy)) is None
    verify_calls = [r for r in await devidp.recorded() if r["path"] == "/api/v1/verify"]
    assert verify_calls, "the proxy must have tried the exchange"
    sent = parse_qs(verify_calls[-1]["body"])
    assert sent["redirect_uri"] == [f"{proxy.url}/oauth2/callback"]
    assert len(sent["code_verifier"][0]) == 43


@pytest.mark.parametrize("endpoint", ["verify", "userinfo"])
@pytest.mark.parametrize("status", [503, 0, 429])
async def test_centralauth_down_during_login(
    proxy: Proxy, browser: Browser, devidp: DevIdp, endpoint: str, status: int
) -> None:
    _, callback = await _callback_url_of(browser, proxy)
    # A userinfo call whose kept-alive connection is dropped is sent once more (tests/test_session_check):
    # two drops in a row are an outage. A verify call is never sent twice (its code is good once).
    resent = endpoint == "userinfo" and status == 0
    await devidp.fault(endpoint, status=status, count=2 if resent else 1)
    got, _, body = await browser.get(str(callback))
    assert got == 503
    assert "not answering" in body
    assert browser.cookie(session_cookie(proxy)) is None
    assert await devidp.control("GET", "/faults") == []


async def test_centralauth_slower_than_timeout_is_an_outage(
    proxy: Proxy, browser: Browser, devidp: DevIdp
) -> None:
    _, callback = await _callback_url_of(browser, proxy)
    await devidp.fault("verify", delay=3.0, count=1)  # proxy timeout is 2 s in the harness
    got, _, _ = await browser.get(str(callback))
    assert got == 503
    assert browser.cookie(session_cookie(proxy)) is None


@pytest.mark.parametrize(
    ("overrides", "email", "user_changes", "rule"),
    [
        ({}, "blocked@example.com", {"blocked": True}, "blocked"),
        (
            {"authorization": {"require_verified_email": True}},
            "new@example.com",
            {"verified": False},
            "verified",
        ),
        ({"authorization": {"allowed_email_domains": ["corp.example"]}}, "ada@example.com", {}, "domain"),
        ({"authorization": {"allowed_emails": ["bob@example.com"]}}, "ada@example.com", {}, "email"),
    ],
    ids=["blocked", "unverified", "domain", "email"],
)
async def test_authorization_rules_refuse_at_login(
    proxy_factory: ProxyFactory,
    browser: Browser,
    devidp: DevIdp,
    overrides: dict[str, Any],
    email: str,
    user_changes: dict[str, bool],
    rule: str,
) -> None:
    proxy = await proxy_factory(**overrides)
    if user_changes:
        await devidp.patch_user(email, **user_changes)
    status, _, body = await browser.login(f"{proxy.url}/secret", email)
    assert status == 403, body
    assert "not allowed to use this application" in body
    assert browser.cookie(session_cookie(proxy)) is None


async def test_allowed_users_pass_the_rules(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory(authorization={"allowed_email_domains": ["corp.example"]})
    status, url, _ = await browser.login(f"{proxy.url}/ok", "someone@corp.example")
    assert status == 200 and url.path == "/ok"


async def _signed_in(proxy: Proxy, browser: Browser) -> str:
    await browser.login(f"{proxy.url}/", "cookie@example.com")
    value = browser.cookie(session_cookie(proxy))
    assert value
    return value


def _tamper(value: str) -> str:
    middle = len(value) // 2
    return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]


async def test_bad_cookies_are_signed_out_never_500(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory()
    good = await _signed_in(proxy, browser)
    other = await proxy_factory(session={"cookie_secrets": ["another-secret-entirely-0123456789abcdef"]})
    foreign = await _signed_in(other, Browser())
    name = session_cookie(proxy)
    variants = {
        "tampered": _tamper(good),
        "truncated": good[: len(good) // 2],
        "foreign-secret": foreign,
        "empty": "",
        "garbage": "%%%not-a-cookie%%%",
        "huge": "A" * 8000,
    }
    async with ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
        for label, value in variants.items():
            headers = {"Cookie": f"{name}={value}", "Accept": "text/html"}
            async with http.get(f"{proxy.url}/private", headers=headers, allow_redirects=False) as response:
                assert response.status == 302, label
                assert URL(response.headers["Location"]).path == "/oauth2/start", label
            headers["Accept"] = "application/json"
            async with http.get(f"{proxy.url}/private", headers=headers, allow_redirects=False) as response:
                assert response.status == 401, label
        # And the untouched cookie still works.
        async with http.get(f"{proxy.url}/private", headers={"Cookie": f"{name}={good}"}) as response:
            assert response.status == 200


async def test_expired_session_cookie_is_signed_out(devidp: DevIdp, echo_url: str, browser: Browser) -> None:
    now = [1_900_000_000.0]
    proxy = await start_proxy(
        idp_url=devidp.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        upstream_url=echo_url,
        overrides={"session": {"max_age": 60}},
        clock=lambda: now[0],
    )
    try:
        await browser.login(f"{proxy.url}/", "expiry@example.com")
        value = browser.cookie(session_cookie(proxy))
        async with ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
            headers = {"Cookie": f"{session_cookie(proxy)}={value}", "Accept": "application/json"}
            async with http.get(f"{proxy.url}/x", headers=headers) as response:
                assert response.status == 200
            now[0] += 61
            async with http.get(f"{proxy.url}/x", headers=headers) as response:
                assert response.status == 401
    finally:
        await proxy.stop()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Accept": "text/html,application/xhtml+xml"}, 302),
        ({"Accept": "application/json"}, 401),
        ({"Accept": "*/*"}, 401),
        ({"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}, 401),
    ],
)
async def test_unauthenticated_browsers_and_api_clients(
    proxy: Proxy, headers: dict[str, str], expected: int
) -> None:
    async with ClientSession() as http:
        async with http.get(f"{proxy.url}/app/page?q=1", headers=headers, allow_redirects=False) as response:
            assert response.status == expected
            if expected == 302:
                location = URL(response.headers["Location"])
                assert location.path == "/oauth2/start" and location.query["rd"] == "/app/page?q=1"
            else:
                body = await response.json()
                assert body["error"] == "unauthorized"


async def test_api_routes_get_401_even_from_browsers(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(routes={"api": ["^/api/"]})
    async with ClientSession() as http:
        async with http.get(
            f"{proxy.url}/api/x", headers={"Accept": "text/html"}, allow_redirects=False
        ) as r:
            assert r.status == 401


async def test_sign_in_page(proxy: Proxy) -> None:
    async with ClientSession() as http:
        async with http.get(f"{proxy.url}/oauth2/sign_in?rd=/docs") as response:
            assert response.status == 200
            body = await response.text()
    assert 'href="/oauth2/start?rd=%2Fdocs"' in body
    assert "<link" not in body and "<script" not in body and "http" not in body.split("<body>")[1]


async def test_start_refuses_open_redirects(proxy: Proxy, browser: Browser) -> None:
    status, url, _ = await browser.login(
        f"{proxy.url}/oauth2/start?rd=https://evil.example/", "ada@example.com"
    )
    assert status == 200 and str(url) == f"{proxy.url}/"
    status, url, _ = await browser.login(
        f"{proxy.url}/oauth2/start?return_to=/from-return-to", "ada@example.com"
    )
    assert url.path == "/from-return-to"


REDIRECT_CASES = [param for param in TABLE if param.values[1] is MAIN]


async def test_emitted_location_for_every_redirect_table_case(
    proxy_factory: ProxyFactory, devidp: DevIdp
) -> None:
    """Run each validator table case through a real login and judge the callback's Location header."""
    proxy = await proxy_factory(redirects={"allowed_domains": list(MAIN.allowed_domains)})
    policy = RedirectPolicy(proxy.url, MAIN.allowed_domains)
    assert len(REDIRECT_CASES) >= 100
    async with ClientSession(headers={"Accept": "text/html"}, cookie_jar=CookieJar(unsafe=True)) as http:
        for param in REDIRECT_CASES:
            target = param.values[0]
            params = {} if target is None else {"rd": target}
            async with http.get(f"{proxy.url}/oauth2/start", params=params, allow_redirects=False) as r:
                login = r.headers["Location"]
            async with http.post(login, data={"email": "t@example.com"}, allow_redirects=False) as r:
                callback = r.headers["Location"]
            async with http.get(callback, allow_redirects=False) as r:
                assert r.status == 302, (target, await r.text())
                location = r.headers["Location"]
            resolved = ada_url.join_url(proxy.url + "/somewhere", location)
            parts = ada_url.parse_url(resolved)
            scheme, host = parts["protocol"].rstrip(":"), parts["hostname"]
            port = int(parts["port"] or {"http": 80, "https": 443}[scheme])
            assert parts["username"] == "" and oracle_allows(policy, scheme, host, port), (target, location)
            expected = param.values[2]
            if expected.startswith("/") and expected != "/fallback":
                # Deep links too long for the transaction cookie land on "/" instead of failing the login.
                assert location == (expected if len(expected) <= MAX_RETURN_URL else "/"), target


async def test_secure_cookie_attributes(proxy_factory: ProxyFactory) -> None:
    """With cookie_secure the session cookie is __Host- prefixed; the transaction cookie __Secure-."""
    proxy = await proxy_factory(session={"cookie_secure": True, "cookie_samesite": "strict"})
    headers = {"Accept": "text/html", "User-Agent": BROWSER_UA}
    async with ClientSession(headers=headers, cookie_jar=CookieJar(unsafe=True)) as http:
        async with http.get(f"{proxy.url}/oauth2/start?rd=/in", allow_redirects=False) as response:
            login = response.headers["Location"]
            (transaction,) = response.cookies.values()
        assert transaction.key.startswith("__Secure-_authproxy_login_")
        assert transaction["secure"] and transaction["httponly"] and transaction["samesite"] == "Lax"
        async with http.post(login, data={"email": "secure@example.com"}, allow_redirects=False) as response:
            callback = response.headers["Location"]
        cookie = f"{transaction.key}={transaction.value}"
        async with http.get(callback, headers={"Cookie": cookie}, allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/in"
            session = response.cookies["__Host-_authproxy"]
    assert session["secure"] and session["httponly"]
    assert session["path"] == "/" and not session["domain"]
    assert session["samesite"] == "Strict"
    assert 0 < int(session["max-age"]) <= 86400


async def test_cookie_domain_drops_the_host_prefix(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(session={"cookie_secure": True, "cookie_domain": ".example.com"})
    assert session_cookie(proxy) == "_authproxy"


async def test_start_takes_the_return_url_from_x_auth_request_redirect(
    proxy: Proxy, browser: Browser
) -> None:
    headers = {"X-Auth-Request-Redirect": "/reports?year=2024&q=x"}
    async with browser.http.get(f"{proxy.url}/oauth2/start", headers=headers) as response:
        form = response.url
    async with browser.http.post(form, data={"email": "ada@example.com"}) as response:
        assert response.url.path == "/reports" and response.url.query_string == "year=2024&q=x"
    headers = {"X-Auth-Request-Redirect": "https://evil.example/"}
    async with browser.http.get(f"{proxy.url}/oauth2/start", headers=headers) as response:
        form = response.url
    async with browser.http.post(form, data={"email": "ada@example.com"}) as response:
        assert str(response.url) == f"{proxy.url}/"


async def test_pages_carry_the_configured_branding(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(
        branding={
            "title": "Acme <Intranet>",
            "logo_url": "/static/logo.svg",
            "footer": "Help: it@acme.example",
        }
    )
    async with ClientSession() as http:
        for path in ("/oauth2/sign_in", "/oauth2/callback"):
            async with http.get(proxy.url + path, headers={"Accept": "text/html"}) as response:
                page = await response.text()
            assert "Acme &lt;Intranet&gt;" in page and "<Intranet>" not in page
            assert '<img src="/static/logo.svg"' in page
            assert "Help: it@acme.example" in page
            assert 'name="viewport"' in page


# --- planted pending-login cookies with names no Set-Cookie can carry -------------------------------------

# Suffixes after the pending-login prefix. Anyone who can set cookies for the host (a sibling subdomain, a
# script on an http page) can plant these; aiohttp reads several of them as cookie names, and http.cookies
# refuses to write any of them in a Set-Cookie.
ODD_SUFFIXES = [
    b"(",
    b"a b",
    "ä".encode(),
    b"=",
    b'"',
    b",",
    b"\xff",
    b"[x]",
    b"/",
    b"{",
    b":",
    b"\t",
    b"\\",
]


async def raw(proxy: Proxy, target: str, cookie: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """A raw GET with exactly this Cookie header: status, headers (in order) and body."""
    port = int(proxy.url.rsplit(":", 1)[1])
    start = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {BROWSER_UA}\r\n"
    start += "Accept: text/html\r\nConnection: close\r\n"
    request = start.encode() + b"Cookie: " + cookie + b"\r\n\r\n"
    answer = await exchange(port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])
    ]
    return status_of(answer), headers, body


def set_cookies(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Set-Cookie lines by cookie name; each must be a line http.cookies itself can read."""
    found = {}
    for name, value in headers:
        if name.lower() == "set-cookie":
            (morsel,) = SimpleCookie(value).values()
            found[morsel.key] = morsel.value
    return found


@pytest.mark.parametrize("suffix", ODD_SUFFIXES, ids=[repr(s)[2:-1] for s in ODD_SUFFIXES])
async def test_odd_pending_login_names_never_break_a_login(proxy: Proxy, suffix: bytes) -> None:
    prefix = proxy.app[LIVE].runtime.transactions.prefix.encode()
    # Five names of the proxy's own shape (their values unreadable, so first to go), an odd one before them.
    shaped = [prefix + secrets.token_urlsafe(32).encode() for _ in range(5)]
    planted = b"; ".join([prefix + suffix + b"=x", *(name + b"=garbage" for name in shaped), b"other=1"])
    status, headers, _ = await raw(proxy, "/oauth2/start?rd=/after", planted)
    assert status == 302
    location = dict(headers)["Location"]
    changed = set_cookies(headers)
    expired = {name for name, value in changed.items() if not value}
    (new,) = set(changed) - expired
    assert expired and expired <= {name.decode() for name in shaped}
    assert len(shaped) - len(expired) + 1 <= 5  # the cap holds, counting only names the proxy makes

    # The login goes through with the planted cookies still there.
    async with ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
        async with http.post(location, data={"email": "ada@example.com"}, allow_redirects=False) as response:
            callback = URL(response.headers["Location"])
    cookie = planted + b"; " + f"{new}={changed[new]}".encode()
    status, headers, _ = await raw(proxy, callback.raw_path_qs, cookie)
    assert status == 302 and dict(headers)["Location"] == "/after"
    assert set_cookies(headers)[session_cookie(proxy)]

    # A callback whose state names the odd cookie is a failed sign-in, not an error of the proxy.
    state = quote(bytes(prefix + suffix)[len(prefix) :], safe="")
    status, headers, body = await raw(proxy, f"/oauth2/callback?code=a&state={state}", planted)
    assert status == 400 and b"expired" in body
    assert not set_cookies(headers)


async def test_only_names_of_the_proxys_shape_are_counted_or_expired(proxy: Proxy) -> None:
    prefix = proxy.app[LIVE].runtime.transactions.prefix.encode()
    odd = b"; ".join(prefix + suffix + b"=x" for suffix in ODD_SUFFIXES if suffix != b"=")
    near_misses = [
        prefix + b"a" * 42,
        prefix + b"a" * 44,
        prefix + b"a" * 42 + b"!",
        prefix + b"a" * 42 + b".",
    ]
    cookie = odd + b"; " + b"; ".join(name + b"=x" for name in near_misses)
    for _ in range(3):
        status, headers, _ = await raw(proxy, "/oauth2/start", cookie)
        assert status == 302
        (name,) = set_cookies(headers)  # the new login's cookie, and nothing expired
        assert name.startswith(prefix.decode()) and len(name) == len(prefix) + 43


async def test_a_control_character_in_a_cookie_name_is_refused_by_the_parser(proxy: Proxy) -> None:
    """DEL (like any other control byte) never reaches a route: the whole request is a fixed 400."""
    prefix = proxy.app[LIVE].runtime.transactions.prefix.encode()
    for name in (prefix + b"\x7f", prefix + b"x\x7fy", b"\x7f"):
        status, _, body = await raw(proxy, "/oauth2/start", name + b"=x; other=1")
        assert status == 400 and body == b"400 Bad Request\n"
