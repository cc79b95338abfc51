"""The `[[routes]]` policy table end to end: per-route TTLs, optional and public routes, allow-lists,
methods and first-match order, route upstreams with `strip_prefix`, step-up by affirmation age, host
routes, forward-auth through real nginx, and the old `[routes]` table still working.

Everything is real and on loopback: the fake CentralAuth (`devidp`), aiohttp echo upstreams, the proxy,
and nginx for forward-auth. Time passes only when a test says so (`FakeClock` for the proxy, the fake's
own `/_devidp/clock` for CentralAuth), never by sleeping.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import DevIdp, ProxyFactory
from multidict import CIMultiDictProxy
from support.echo import make_echo_app, received_headers
from support.harness import Browser, FakeClock, Proxy, deep_merge, free_port
from support.logins import signed_in
from support.nginx import Nginx, site_tls, start_nginx
from yarl import URL

from authproxy.runtime import LIVE

ADA = "ada@example.com"
BOB = "bob@staff.example"
JSON = {"Accept": "application/json"}
# What a client may send to pass for someone: none of it may reach an upstream as sent.
SPOOFED = {
    "X-Forwarded-User": "admin",
    "X-Forwarded-Email": "boss@example.com",
    "X-Forwarded-Preferred-Username": "boss@example.com",
    "X-Auth-Request-User": "x",
    "Remote-User": "x",
}
IDENTITY = (
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "remote-user",
)
# The header each named upstream stamps on its answers (the fixture's default echo stamps none).
UPSTREAM_NAME = "X-Upstream-Name"


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def location(self) -> URL:
        return URL(self.headers["Location"], encoded=True)

    @property
    def upstream(self) -> str:
        """Which upstream answered: its name, "default" for the fixture's echo; fails if none did."""
        assert self.status == 200 and self.headers.get("X-Upstream") == "echo", (self.status, self.text[:300])
        return self.headers.get(UPSTREAM_NAME, "default")

    @property
    def received(self) -> tuple[str, dict[str, str]]:
        """The path and headers (names lower-cased) the echo upstream received."""
        assert self.upstream
        payload = self.json()
        return payload["path"], received_headers(payload)


async def fetch(
    client: Browser | aiohttp.ClientSession,
    url: str | URL,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    follow: bool = False,
    **kwargs: Any,
) -> Answer:
    http = client.http if isinstance(client, Browser) else client
    async with http.request(method, url, headers=headers, allow_redirects=follow, **kwargs) as response:
        return Answer(response.status, response.headers, await response.text())


def no_identity(headers: dict[str, str]) -> list[str]:
    """The identity headers an upstream received (should be none)."""
    return [name for name in IDENTITY if name in headers]


def session_cookie(proxy: Proxy) -> str:
    return proxy.app[LIVE].runtime.cookie.name


def clears(answer: Answer, name: str) -> bool:
    """Whether `answer` expires the cookie `name` (Max-Age=0 or an expiry in 1970)."""
    for line in answer.headers.getall("Set-Cookie", ()):
        if line.startswith(f"{name}=") and ("Max-Age=0" in line or "1970" in line):
            return True
    return False


async def user_id(proxy: Proxy, browser: Browser) -> str:
    answer = await fetch(browser, f"{proxy.url}/oauth2/userinfo", headers=JSON)
    assert answer.status == 200, answer.text
    return str(answer.json()["user"])


async def open_form(browser: Browser, url: str | URL, **kwargs: Any) -> URL:
    """Follow `url`'s redirects to the fake CentralAuth's login form; its URL (the form posts there)."""
    async with browser.http.get(url, **kwargs) as response:
        page = await response.text()
        assert response.url.path == "/login" and 'name="email"' in page, (response.url, page[:300])
        return response.url


async def userinfo_calls(devidp: DevIdp) -> int:
    return (await devidp.stats())["userinfo"]


UpstreamFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def upstream_factory(aiohttp_server: Any) -> UpstreamFactory:
    """More real echo upstreams, each stamping its `name` on its answers so a test sees who answered."""

    async def start(name: str) -> str:
        app = make_echo_app()

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[UPSTREAM_NAME] = name

        app.on_response_prepare.append(stamp)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


# --- 1, 2: per-route session-check TTL ----------------------------------------------------------------

TTL_ROUTES = [{"path": "/live/", "session_check_ttl": 0}]


async def test_a_ttl_0_route_asks_centralauth_on_every_request_while_others_stay_cached(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    proxy = await proxy_factory(centralauth={"session_check_ttl": 30}, routes=TTL_ROUTES)
    await signed_in(proxy, browser)  # lands on /, which checks the session once
    before = await userinfo_calls(devidp)
    for i in range(5):
        assert (await fetch(browser, f"{proxy.url}/live/{i}")).status == 200
    assert await userinfo_calls(devidp) - before == 5
    # The default route keeps using the cached answer (which the /live/ calls keep fresh).
    for i in range(5):
        assert (await fetch(browser, f"{proxy.url}/other/{i}")).status == 200
    assert await userinfo_calls(devidp) - before == 5
    # And the TTL-0 route still asks every time, whatever the cache holds.
    assert (await fetch(browser, f"{proxy.url}/live/again")).status == 200
    assert await userinfo_calls(devidp) - before == 6
    # Only the userinfo endpoint counts: the log agrees call for call.
    logged = [r for r in await devidp.recorded() if r["path"] == "/api/v1/userinfo"]
    assert len(logged) == await userinfo_calls(devidp)


async def test_a_central_logout_is_seen_at_once_on_a_ttl_0_route_and_a_ttl_later_elsewhere(
    proxy_factory: ProxyFactory, browser: Browser, second_browser: Browser, devidp: DevIdp
) -> None:
    ttl_clock = FakeClock()  # the proxy's monotonic clock: the TTL cache moves only with it
    proxy = await proxy_factory(centralauth={"session_check_ttl": 30}, routes=TTL_ROUTES, monotonic=ttl_clock)
    name = session_cookie(proxy)
    ada = await signed_in(proxy, browser, ADA)
    bob = await signed_in(proxy, second_browser, BOB)
    await devidp.end_sessions(ADA)
    await devidp.end_sessions(BOB)
    before = await userinfo_calls(devidp)

    # Within its TTL the cached route still lets the ended session through: that is the lag a TTL buys.
    assert (await fetch(browser, f"{proxy.url}/other")).upstream == "default"
    assert await userinfo_calls(devidp) == before
    # The TTL-0 route asks CentralAuth, which says the session is over: refused at once, cookie cleared.
    refused = await fetch(browser, f"{proxy.url}/live/x")
    assert refused.status == 302
    assert refused.location.path == "/oauth2/start" and refused.location.query["rd"] == "/live/x"
    assert clears(refused, name)
    assert await userinfo_calls(devidp) == before + 1
    # The token is now remembered dead: a JSON client with the old cookie gets 401, with no call made,
    # and the cached route refuses it too from now on.
    replay = {**JSON, "Cookie": ada.header}
    answer = await fetch(browser, f"{proxy.url}/live/x", headers=replay)
    assert answer.status == 401 and answer.json()["error"] == "unauthorized"
    assert (await fetch(browser, f"{proxy.url}/other", headers=replay)).status == 401
    assert await userinfo_calls(devidp) == before + 1

    # Bob's session, ended too, is never asked about on /live/: the cached route passes it until its
    # TTL runs out, and refuses it on the first request after.
    assert (await fetch(second_browser, f"{proxy.url}/other")).upstream == "default"
    ttl_clock.advance(29)
    assert (await fetch(second_browser, f"{proxy.url}/other")).upstream == "default"
    assert await userinfo_calls(devidp) == before + 1
    ttl_clock.advance(1)
    late = await fetch(second_browser, f"{proxy.url}/other", headers={"Cookie": bob.header, **JSON})
    assert late.status == 401
    assert await userinfo_calls(devidp) == before + 2


# --- 3: optional routes ----------------------------------------------------------------------------------


async def test_an_optional_route_passes_anonymous_requests_without_identity(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    proxy = await proxy_factory(routes=[{"path": "/blog", "auth": "optional", "session_check_ttl": 0}])
    name = session_cookie(proxy)

    # Anonymous: the page is served, with every client-sent identity header stripped.
    anonymous = await fetch(browser, f"{proxy.url}/blog/post?id=7", headers=SPOOFED)
    path, headers = anonymous.received
    assert path == "/blog/post?id=7"
    assert no_identity(headers) == []
    assert (await fetch(browser, f"{proxy.url}/blog", headers=SPOOFED)).status == 200
    # Outside the optional route a session is still required.
    assert (await fetch(browser, f"{proxy.url}/other")).status == 302

    # Signed in: the real identity, the spoofed values replaced or removed.
    await signed_in(proxy, browser)
    _, headers = (await fetch(browser, f"{proxy.url}/blog/post", headers=SPOOFED)).received
    assert headers["x-forwarded-email"] == headers["x-forwarded-preferred-username"] == ADA
    assert headers["x-forwarded-user"] == await user_id(proxy, browser) != "admin"
    assert "x-auth-request-user" not in headers and "remote-user" not in headers

    # Ended at CentralAuth: the route re-checks (TTL 0), finds it over, and serves the page anonymously,
    # clearing the dead cookie in the same answer.
    await devidp.end_sessions(ADA)
    revoked = await fetch(browser, f"{proxy.url}/blog/post", headers=SPOOFED)
    _, headers = revoked.received
    assert no_identity(headers) == []
    assert clears(revoked, name)
    assert browser.cookie(name) is None


# --- 4: public routes and the spellings that would sneak past them ---------------------------------------

PUBLIC_ROUTES = [{"path": "/assets/", "auth": "public"}, {"path": "/admin/", "api": True}]


async def test_a_public_route_needs_no_session_and_carries_no_identity(
    proxy_factory: ProxyFactory, browser: Browser
) -> None:
    proxy = await proxy_factory(routes=PUBLIC_ROUTES)
    path, headers = (await fetch(browser, f"{proxy.url}/assets/app.js", headers=SPOOFED)).received
    assert path == "/assets/app.js"
    assert no_identity(headers) == []
    # No session is read on a public route: a signed-in request gets no identity headers either.
    await signed_in(proxy, browser)
    _, headers = (await fetch(browser, f"{proxy.url}/assets/app.js", headers=SPOOFED)).received
    assert no_identity(headers) == []
    _, headers = (await fetch(browser, f"{proxy.url}/admin/x")).received
    assert headers["x-forwarded-email"] == ADA


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("/assets/../admin/x", 401),
        ("/assets/%2e%2e/admin/x", 401),
        ("/assets/%2E%2E/admin/x", 401),
        ("/assets;x/../admin/x", 401),
        ("/assets/./../admin/x", 401),
        ("/assets//../admin/x", 401),
        ("/%61ssets/../admin/x", 401),
        ("/assets/..;/admin/x", 400),  # a dot segment with parameters: refused, never judged
        ("/assets/.%2e/admin/x", 400),  # plain and encoded dots mixed: refused
        ("/assets/%252e%252e/admin/x", 400),  # double-encoded: refused
    ],
)
async def test_public_prefix_spellings_are_judged_as_the_path_they_resolve_to(
    proxy_factory: ProxyFactory, browser: Browser, raw: str, status: int
) -> None:
    """401 JSON (not the browser's 302) proves the request was judged under the `/admin/` API route."""
    proxy = await proxy_factory(routes=PUBLIC_ROUTES)
    answer = await fetch(browser, URL(f"{proxy.url}{raw}", encoded=True), headers=SPOOFED)
    assert answer.status == status, (raw, answer.status, answer.text[:200])
    assert answer.headers.get("X-Upstream") != "echo"
    if status == 401:
        assert answer.json()["error"] == "unauthorized"
        # Signed in, the upstream receives the path that was judged, not the spelling.
        await signed_in(proxy, browser)
        path, headers = (await fetch(browser, URL(f"{proxy.url}{raw}", encoded=True))).received
        assert path == "/admin/x"
        assert headers["x-forwarded-email"] == ADA


# --- 5: per-route allow-lists ----------------------------------------------------------------------------


async def test_a_route_allow_list_admits_only_its_domain(
    proxy_factory: ProxyFactory, browser: Browser, second_browser: Browser
) -> None:
    proxy = await proxy_factory(routes=[{"path": "/staff/", "allowed_email_domains": ["staff.example"]}])
    await signed_in(proxy, browser, ADA)
    denied = await fetch(browser, f"{proxy.url}/staff/x")
    assert denied.status == 403
    assert denied.headers.get("X-Upstream") != "echo"
    assert (await fetch(browser, f"{proxy.url}/staff/x", headers=JSON)).status == 403
    _, headers = (await fetch(browser, f"{proxy.url}/other")).received
    assert headers["x-forwarded-email"] == ADA
    # The denial refuses the request, not the session: Ada is still signed in.
    assert (await fetch(browser, f"{proxy.url}/other")).status == 200

    await signed_in(proxy, second_browser, BOB)
    path, headers = (await fetch(second_browser, f"{proxy.url}/staff/x")).received
    assert path == "/staff/x" and headers["x-forwarded-email"] == BOB
    assert (await fetch(second_browser, f"{proxy.url}/other")).status == 200


async def test_a_route_allow_list_may_admit_someone_the_global_lists_do_not(
    proxy_factory: ProxyFactory, browser: Browser
) -> None:
    proxy = await proxy_factory(
        authorization={"allowed_email_domains": ["example.com"]},
        routes=[{"path": "/partners/", "allowed_email_domains": ["staff.example"]}],
    )
    # Bob is refused by the global lists, so a login returning anywhere else refuses him...
    status, _, _ = await browser.login(f"{proxy.url}/other", BOB)
    assert status == 403
    # ...but a login returning to the route whose own list names his domain admits him, there only.
    await signed_in(proxy, browser, BOB, path="/partners/page")
    path, headers = (await fetch(browser, f"{proxy.url}/partners/x")).received
    assert path == "/partners/x" and headers["x-forwarded-email"] == BOB
    assert (await fetch(browser, f"{proxy.url}/other")).status == 403


# --- 6: methods and first-match order --------------------------------------------------------------------


async def test_methods_and_the_first_matching_route(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory(
        routes=[{"path": "/api/", "methods": ["GET"], "auth": "public"}, {"path": "/api/", "api": True}]
    )
    path, headers = (await fetch(browser, f"{proxy.url}/api/items", headers=SPOOFED)).received
    assert path == "/api/items" and no_identity(headers) == []
    # POST falls through to the second route: an API route, so a browser too gets 401 JSON.
    for method in ("POST", "DELETE"):
        answer = await fetch(browser, f"{proxy.url}/api/items", method=method)
        assert answer.status == 401, method
        assert answer.json()["error"] == "unauthorized"
    # Outside both routes, the default: a browser is sent to sign in.
    assert (await fetch(browser, f"{proxy.url}/x", method="POST")).status == 302

    await signed_in(proxy, browser)
    answer = await fetch(browser, f"{proxy.url}/api/items", method="POST", data=b"{}")
    _, headers = answer.received
    assert answer.json()["method"] == "POST" and headers["x-forwarded-email"] == ADA


# --- 7: a route's own upstream, with strip_prefix --------------------------------------------------------


async def test_a_route_upstream_with_strip_prefix(
    proxy_factory: ProxyFactory, browser: Browser, upstream_factory: UpstreamFactory
) -> None:
    second = await upstream_factory("app2")
    proxy = await proxy_factory(routes=[{"path": "/app2/", "upstream": second, "strip_prefix": True}])
    await signed_in(proxy, browser)

    answer = await fetch(browser, f"{proxy.url}/app2/x?q=1")
    assert answer.upstream == "app2"
    path, headers = answer.received
    assert path == "/x?q=1"
    assert headers["x-forwarded-email"] == ADA
    assert (await fetch(browser, f"{proxy.url}/app2/")).received[0] == "/"
    assert (await fetch(browser, f"{proxy.url}/app2/a/b/../c")).received[0] == "/a/c"

    # Everything else goes to the first upstream, unchanged.
    for asked in ("/x?q=1", "/app2x/y", "/other/app2/x"):
        answer = await fetch(browser, f"{proxy.url}{asked}")
        assert answer.upstream == "default", asked
        assert answer.received[0] == asked


async def websocket_upstream(aiohttp_server: Any, name: str) -> str:
    """An upstream whose websockets say who they are and what they were asked for, then close."""

    async def hello(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(f"{name} {request.path_qs}")
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("route", "url_path", "host", "expected"),
    [
        ({"path": "/app2/", "strip_prefix": True}, "/app2/sock?x=1", None, "B /sock?x=1"),
        ({"host": "one.test", "path": "/"}, "/sock?x=1", "one.test", "B /sock?x=1"),
    ],
    ids=["prefix-route", "host-route"],
)
async def test_a_websocket_on_a_route_with_its_own_upstream_reaches_that_upstream(
    proxy_factory: ProxyFactory,
    browser: Browser,
    aiohttp_server: Any,
    route: dict[str, Any],
    url_path: str,
    host: str | None,
    expected: str,
) -> None:
    """Plain requests on these routes reach their upstream (the tests above); a websocket must too,
    and never the `[[upstreams]]` app (the echo, which would answer nothing until spoken to)."""
    upstream = await websocket_upstream(aiohttp_server, "B")
    proxy = await proxy_factory(routes=[{**route, "upstream": upstream}])
    await signed_in(proxy, browser)
    headers = {"Host": host} if host else {}
    async with browser.http.ws_connect(f"{proxy.url}{url_path}", headers=headers) as sock:
        assert await sock.receive_str(timeout=5) == expected


# --- 8: step-up ------------------------------------------------------------------------------------------

STEP_UP = [{"path": "/admin/", "step_up_max_age": 300}]


async def stale_affirmation(proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp) -> Proxy:
    """A proxy with a step-up route and a browser signed in as Ada whose affirmation is 400 s old."""
    # The proxy judges the affirmation's age on its wall clock; CentralAuth stamps affirmationDate with
    # its own. They start together (the fake's clock is real time plus an offset of 0).
    clock = FakeClock(start=time.time())
    proxy = await proxy_factory(clock=clock, routes=STEP_UP)
    await signed_in(proxy, browser, ADA)
    admin = await fetch(browser, f"{proxy.url}/admin/x")
    assert admin.received[1]["x-forwarded-email"] == ADA
    # 400 s pass: for the proxy and for CentralAuth alike, as they would in life. Were only the proxy's
    # clock moved, the affirmation login below would stamp the new session with a date 400 s in the
    # proxy's past, stale on arrival, and the browser would be sent round again and again.
    clock.advance(400)
    await devidp.advance(400)
    return proxy


async def test_a_stale_affirmation_sends_the_browser_through_an_affirmation_login(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    proxy = await stale_affirmation(proxy_factory, browser, devidp)
    name = session_cookie(proxy)
    old_cookie = browser.cookie(name)

    # Other routes do not care how old the affirmation is.
    assert (await fetch(browser, f"{proxy.url}/other")).upstream == "default"
    # A program gets a 401 it can act on.
    api = await fetch(browser, f"{proxy.url}/admin/x", headers=JSON)
    assert api.status == 401
    assert api.json()["error"] == "step_up_required"

    # A browser goes to an affirmation login that comes back here.
    step_up = await fetch(browser, f"{proxy.url}/admin/x?tab=1")
    assert step_up.status == 302
    assert step_up.location.path == "/oauth2/start"
    assert step_up.location.query["rd"] == "/admin/x?tab=1"
    assert step_up.location.query["affirm"] == "1"
    start = await fetch(browser, proxy.url + step_up.headers["Location"])
    assert start.status == 302
    login = start.location
    assert str(login.origin()) == devidp.url and login.path == "/login"
    assert login.query["affirm"] == "1"
    assert login.query["email"] == ADA
    assert login.query["redirect_uri"] == f"{proxy.url}/oauth2/callback"

    before = await userinfo_calls(devidp)
    status, landed, _ = await browser.login(str(login), ADA)
    assert status == 200 and landed.path_qs == "/admin/x?tab=1"
    new_cookie = browser.cookie(name)
    assert new_cookie and new_cookie != old_cookie  # a new session, freshly affirmed
    _, headers = (await fetch(browser, f"{proxy.url}/admin/x")).received
    assert headers["x-forwarded-email"] == ADA
    assert await userinfo_calls(devidp) > before  # the new session was checked with CentralAuth


async def test_an_affirmation_by_another_account_is_refused_and_the_session_kept(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    proxy = await stale_affirmation(proxy_factory, browser, devidp)
    name = session_cookie(proxy)
    original = browser.cookie(name)
    ada_id = await user_id(proxy, browser)

    # The fake pre-fills Ada's address, but the form lets anyone sign in; Bob does.
    status, landed, page = await browser.login(f"{proxy.url}/admin/x", BOB)
    assert status == 403
    assert landed.path == "/oauth2/callback"
    assert "different account" in page
    assert BOB not in page

    # Ada's session is untouched: same cookie, same user, and /admin/ still wants her affirmation.
    assert browser.cookie(name) == original
    _, headers = (await fetch(browser, f"{proxy.url}/other")).received
    assert headers["x-forwarded-email"] == ADA and headers["x-forwarded-user"] == ada_id
    again = await fetch(browser, f"{proxy.url}/admin/x")
    assert again.status == 302 and again.location.query["affirm"] == "1"


async def test_a_json_client_with_a_stale_affirmation_gets_401_on_forward_auth_too(
    proxy_factory: ProxyFactory, browser: Browser, devidp: DevIdp
) -> None:
    # Forward-auth judges the original request only from a trusted front proxy.
    clock = FakeClock(start=time.time())
    proxy = await proxy_factory(clock=clock, routes=STEP_UP, server={"trusted_proxies": ["127.0.0.1/32"]})
    await signed_in(proxy, browser, ADA)
    admin = {"X-Forwarded-Uri": "/admin/x", "X-Forwarded-Method": "GET"}
    other = {"X-Forwarded-Uri": "/other", "X-Forwarded-Method": "GET"}
    assert (await fetch(browser, f"{proxy.url}/oauth2/auth", headers=admin)).status == 202
    clock.advance(400)
    answer = await fetch(browser, f"{proxy.url}/oauth2/auth", headers={**admin, **JSON})
    assert answer.status == 401 and answer.json()["error"] == "step_up_required"
    # /auth never redirects, whoever asks: the front proxy decides what a browser sees.
    html = await fetch(browser, f"{proxy.url}/oauth2/auth", headers=admin)
    assert html.status == 401 and "Location" not in html.headers
    assert (await fetch(browser, f"{proxy.url}/oauth2/auth", headers=other)).status == 202


# --- 9: two hosts behind one proxy -----------------------------------------------------------------------


async def test_host_routes_send_each_host_to_its_upstream_with_one_sign_in(
    proxy_factory: ProxyFactory, browser: Browser, upstream_factory: UpstreamFactory
) -> None:
    one, two = await upstream_factory("one"), await upstream_factory("two")
    # No cookie_domain: the test connects to 127.0.0.1 and names the host in the Host header, so the
    # browser's jar sends the 127.0.0.1 session cookie along, as `cookie_domain` would make a real
    # browser do for hosts under a shared parent domain. The proxy only reads the cookie by name.
    proxy = await proxy_factory(
        routes=[
            {"host": "one.test", "path": "/", "upstream": one},
            {"host": "two.test", "path": "/", "upstream": two},
        ]
    )

    # Signed out, a browser on a routed host is sent to sign in on public_url's host, and the login
    # comes back to the full URL on the routed host.
    anonymous = await fetch(browser, f"{proxy.url}/x?q=1", headers={"Host": "one.test"})
    assert anonymous.status == 302
    start = anonymous.location
    assert str(start.origin()) == proxy.url and start.path == "/oauth2/start"
    assert start.query["rd"] == "http://one.test/x?q=1"
    form_url = await open_form(browser, start)
    to_callback = await fetch(browser, form_url, method="POST", data={"email": ADA})
    assert to_callback.status == 302
    callback = await fetch(browser, to_callback.headers["Location"])
    assert callback.status == 302 and callback.headers["Location"] == "http://one.test/x?q=1"
    assert browser.cookie(session_cookie(proxy))

    # One session, both hosts, each to its own upstream with the same identity.
    for host, name in (("one.test", "one"), ("two.test", "two"), ("TWO.test:8080", "two")):
        answer = await fetch(browser, f"{proxy.url}/page", headers={"Host": host})
        assert answer.upstream == name, host
        path, headers = answer.received
        assert path == "/page" and headers["host"] == host
        assert headers["x-forwarded-email"] == ADA
    # Any other host falls under the default route and the default upstream.
    assert (await fetch(browser, f"{proxy.url}/page")).upstream == "default"
    assert (await fetch(browser, f"{proxy.url}/page", headers={"Host": "three.test"})).upstream == "default"


# --- 10: forward-auth through real nginx -----------------------------------------------------------------


@dataclass
class Site:
    url: str
    proxy: Proxy
    nginx: Nginx


@pytest.fixture
async def nginx_site(proxy_factory: ProxyFactory, echo_url: str) -> AsyncIterator[Site]:
    """deploy/nginx/authproxy.conf in real nginx (TLS on loopback) in front of the echo app, asking an
    authproxy that trusts it (as tests/test_nginx.py sets it up) and has a route table."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    behind_nginx = {
        "server": {"public_url": url, "trusted_proxies": ["127.0.0.1/32"]},
        "session": {"cookie_secure": True},
    }
    routes = {
        "routes": [
            {"path": "/open/", "auth": "public"},
            {"path": "/staff/", "allowed_email_domains": ["staff.example"]},
        ]
    }
    proxy = await proxy_factory(**deep_merge(behind_nginx, routes))
    nginx = await start_nginx(https_port=port, authproxy_url=proxy.url, app_url=echo_url)
    yield Site(url, proxy, nginx)
    await nginx.stop()


NGINX_IDENTITY = (
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
)


async def through_nginx(browser: Browser, url: str | URL, **kwargs: Any) -> Answer:
    return await fetch(browser, url, ssl=site_tls().client_context, **kwargs)


async def sign_in_through_nginx(site: Site, browser: Browser, email: str, path: str) -> Answer:
    form_url = await open_form(browser, site.url + path, ssl=site_tls().client_context)
    return await through_nginx(browser, form_url, method="POST", data={"email": email}, follow=True)


async def test_forward_auth_through_nginx_applies_the_route_table(
    nginx_site: Site, browser: Browser, second_browser: Browser
) -> None:
    site = nginx_site
    # Anonymous: the public route passes (no identity, whatever the client sends), the others do not.
    path, headers = (await through_nginx(browser, f"{site.url}/open/x", headers=SPOOFED)).received
    # The identity headers the example nginx site owns (it sets them from authproxy's answer, empty
    # here). Other systems' names such as Remote-User are not in its list: see deploy/nginx.
    assert path == "/open/x"
    assert [name for name in NGINX_IDENTITY if name in headers] == []
    staff = await through_nginx(browser, f"{site.url}/staff/x")
    assert staff.status == 302 and staff.headers["Location"] == "/oauth2/start?rd=/staff/x"
    assert (await through_nginx(browser, f"{site.url}/staff/x", headers=JSON)).status == 401
    # nginx sends the spelling on as is; one that only resolves to the public route gets no free pass.
    for sneaky in ("/open/%2e%2e/staff/x", "/staff/%2e%2e/open/x", "/open;x/y"):
        answer = await through_nginx(browser, URL(f"{site.url}{sneaky}", encoded=True), headers=JSON)
        assert answer.status == 401, sneaky

    # Ada is signed in, but /staff/ admits staff.example only.
    landed = await sign_in_through_nginx(site, browser, ADA, "/other")
    assert landed.received[1]["x-forwarded-email"] == ADA
    denied = await through_nginx(browser, f"{site.url}/staff/x")
    assert denied.status == 403 and denied.headers.get("X-Upstream") != "echo"
    _, headers = (await through_nginx(browser, f"{site.url}/other")).received
    assert headers["x-forwarded-email"] == ADA

    landed = await sign_in_through_nginx(site, second_browser, BOB, "/staff/x")
    path, headers = landed.received
    assert path == "/staff/x" and headers["x-forwarded-email"] == BOB


# --- 11: the old [routes] table --------------------------------------------------------------------------


async def test_the_old_routes_table_behaves_as_before(proxy_factory: ProxyFactory, browser: Browser) -> None:
    proxy = await proxy_factory(routes={"skip_auth": ["^/public/"], "api": ["^/api/"]})
    path, headers = (await fetch(browser, f"{proxy.url}/public/x", headers=SPOOFED)).received
    assert path == "/public/x" and no_identity(headers) == []
    api = await fetch(browser, f"{proxy.url}/api/x")
    assert api.status == 401 and api.headers["Content-Type"].startswith("application/json")
    assert api.json()["error"] == "unauthorized"
    page = await fetch(browser, f"{proxy.url}/x")
    assert page.status == 302
    assert page.location.path == "/oauth2/start" and page.location.query["rd"] == "/x"
    # The old rules judge canonical paths too.
    escaped = await fetch(browser, URL(f"{proxy.url}/public/%2e%2e/x", encoded=True))
    assert escaped.status == 302 and escaped.location.query["rd"] == "/x"
