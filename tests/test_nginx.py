"""The forward-auth deployment examples: `deploy/nginx/authproxy.conf` in real nginx, and the Traefik files.

nginx runs the example site over TLS on loopback (see support/nginx.py) in front of the echo upstream,
with `auth_request` against a real authproxy that trusts it (`trusted_proxies = ["127.0.0.1/32"]`,
`public_url` = the nginx URL, secure cookies as in production) and the fake CentralAuth. The browser
only ever talks to nginx and to the fake's login form. Traefik cannot run here, so its configuration is
checked for the wiring that matters, against the headers a running authproxy really answers with.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientResponse
from conftest import DevIdp, ProxyFactory
from multidict import CIMultiDictProxy
from support.echo import received_headers
from support.harness import Browser, Proxy, deep_merge, free_port
from support.nginx import CACHED_SITE, SITE, Nginx, nginx_binary, site_tls, start_nginx
from yarl import URL

from authproxy.runtime import LIVE

EMAIL = "ada@example.com"
JSON = {"Accept": "application/json"}
TRAEFIK = Path(__file__).resolve().parents[1] / "deploy" / "traefik"
IDENTITY_HEADERS = ["X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Preferred-Username"]


@dataclass
class Site:
    """The example nginx site in front of the echo app, and the authproxy it asks."""

    url: str
    proxy: Proxy
    nginx: Nginx

    @property
    def cookie_name(self) -> str:
        return self.proxy.app[LIVE].runtime.cookie.name


@dataclass
class Answer:
    status: int
    url: URL
    headers: CIMultiDictProxy[str]
    text: str
    history: tuple[ClientResponse, ...]

    def json(self) -> Any:
        return json.loads(self.text)


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site_factory(proxy_factory: ProxyFactory, echo_url: str) -> AsyncIterator[SiteFactory]:
    """Start an authproxy configured for life behind nginx, then nginx; overrides are config tables."""
    started: list[Nginx] = []

    async def start(*, cached: bool = False, cache_lifetime: int | None = None, **overrides: Any) -> Site:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        behind_nginx = {
            "server": {"public_url": url, "trusted_proxies": ["127.0.0.1/32"]},
            "session": {"cookie_secure": True},
        }
        proxy = await proxy_factory(**deep_merge(behind_nginx, overrides))
        nginx = await start_nginx(
            https_port=port,
            authproxy_url=proxy.url,
            app_url=echo_url,
            cached=cached,
            cache_lifetime=cache_lifetime,
        )
        started.append(nginx)
        return Site(url, proxy, nginx)

    yield start
    for nginx in started:
        await nginx.stop()


@pytest.fixture
async def site(site_factory: SiteFactory) -> Site:
    return await site_factory()


async def fetch(
    browser: Browser,
    url: str | URL,
    *,
    method: str = "GET",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    follow: bool = False,
    **kwargs: Any,
) -> Answer:
    """One request from the browser, trusting the test nginx's certificate."""
    async with browser.http.request(
        method, url, headers=headers, allow_redirects=follow, ssl=site_tls().client_context, **kwargs
    ) as response:
        text = await response.text()
        return Answer(response.status, response.url, response.headers, text, response.history)


async def sign_in(site: Site, browser: Browser, path: str = "/", email: str = EMAIL) -> tuple[Answer, Answer]:
    """The whole login, only through nginx: the app page, the fake CentralAuth's form, back to the page.

    Returns the answer that showed the form and the one the form's submission ended on.
    """
    form = await fetch(browser, site.url + path, follow=True)
    assert form.url.path == "/login" and 'name="email"' in form.text, (form.status, form.url, form.text[:300])
    landed = await fetch(browser, form.url, method="POST", data={"email": email}, follow=True)
    return form, landed


def echoed(answer: Answer) -> tuple[str, dict[str, str]]:
    """What the echo app behind nginx received: its request path and headers (names lower-cased)."""
    assert answer.status == 200 and answer.headers.get("X-Upstream") == "echo", (answer.status, answer.text)
    payload = answer.json()
    return payload["path"], received_headers(payload)


def test_nginx_is_installed_with_auth_request() -> None:
    """Without nginx every test below fails too (never skips); this one says so first, and plainly."""
    version = subprocess.run([nginx_binary(), "-V"], capture_output=True, text=True, check=True).stderr
    assert "--with-http_auth_request_module" in version, f"this nginx cannot run the example:\n{version}"


# --- signed out ------------------------------------------------------------------------------------------


async def test_signed_out_browser_is_sent_to_sign_in(site: Site, browser: Browser) -> None:
    answer = await fetch(browser, f"{site.url}/reports?year=2024")
    assert answer.status == 302
    assert answer.headers["Location"] == "/oauth2/start?rd=/reports?year=2024"

    start = await fetch(browser, site.url + answer.headers["Location"])
    assert start.status == 302 and start.headers["X-Authproxy"] == "1"  # nginx proxied it to authproxy
    login = URL(start.headers["Location"])
    assert login.path == "/login"
    assert login.query["redirect_uri"] == f"{site.url}/oauth2/callback"


@pytest.mark.parametrize(
    "headers",
    [JSON, {"X-Requested-With": "XMLHttpRequest"}, {"Accept": "*/*"}],
    ids=["accept-json", "x-requested-with", "accept-any"],
)
async def test_signed_out_programs_get_401(site: Site, browser: Browser, headers: dict[str, str]) -> None:
    answer = await fetch(browser, f"{site.url}/api/items", headers=headers)
    assert answer.status == 401
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "unauthorized"


async def test_the_auth_endpoint_is_not_public(site: Site, browser: Browser) -> None:
    assert (await fetch(browser, f"{site.url}/oauth2/auth", headers=JSON)).status == 404


# --- signed in -------------------------------------------------------------------------------------------


async def test_login_through_nginx_reaches_the_app_with_identity(
    site: Site, browser: Browser, devidp: DevIdp
) -> None:
    form, landed = await sign_in(site, browser, "/reports?year=2024")
    # Every hop of the flow that is not the fake CentralAuth went through nginx.
    page, start = form.history
    assert str(page.url) == f"{site.url}/reports?year=2024"
    assert start.url.path == "/oauth2/start" and str(start.url.origin()) == site.url
    to_callback, callback = landed.history
    assert str(to_callback.url.origin()) == devidp.url  # the form was posted to the fake CentralAuth
    assert str(callback.url).startswith(f"{site.url}/oauth2/callback?")
    assert str(landed.url) == f"{site.url}/reports?year=2024"
    assert "GET /oauth2/callback?" in site.nginx.log("access.log")

    path, headers = echoed(landed)
    assert path == "/reports?year=2024"
    whoami = await fetch(browser, f"{site.url}/oauth2/userinfo", headers=JSON)
    assert whoami.status == 200
    assert headers["x-forwarded-user"] == whoami.json()["user"] != EMAIL  # CentralAuth's user id
    assert headers["x-forwarded-email"] == headers["x-forwarded-preferred-username"] == EMAIL
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-real-ip"] == "127.0.0.1"
    for name in ("x-forwarded-access-token", "x-forwarded-groups", "x-auth-request-user"):
        assert name not in headers
    assert browser.cookie(site.cookie_name) and site.cookie_name.startswith("__Host-")


@pytest.mark.parametrize(
    ("asked", "landed_on"),
    [
        (
            "//evil.example/x",
            "/",
        ),  # nginx passes $request_uri as is; authproxy refuses a protocol-relative rd
        ("/x?a=1&rd=https://evil.example/", "/x?a=1"),  # an unencoded "&" ends rd; the first rd wins
    ],
)
async def test_the_return_trip_never_leaves_the_site(
    site: Site, browser: Browser, asked: str, landed_on: str
) -> None:
    _, landed = await sign_in(site, browser, asked)
    assert str(landed.url) == site.url + landed_on
    echoed(landed)


async def test_client_sent_identity_never_reaches_the_app(site: Site, browser: Browser) -> None:
    forged = [
        ("X-Forwarded-Email", "forged@evil.example"),
        ("X-Forwarded-Email", "forged-again@evil.example"),
        ("x-forwarded-user", "forged-user"),
        ("X-FORWARDED-PREFERRED-USERNAME", "forged@evil.example"),
        ("X-Forwarded-Groups", "forged-admins"),
        ("X-Forwarded-Access-Token", "forged-token"),
        ("X-Auth-Request-User", "forged-user"),
        ("X-Auth-Request-Email", "forged@evil.example"),
        ("X_Forwarded_Email", "forged@evil.example"),
        ("X.Forwarded.User", "forged-user"),
        # Other single-sign-on proxies' names, which apps configured for them read.
        ("Remote-User", "forged-user"),
        ("remote-email", "forged@evil.example"),
        ("Remote-Groups", "forged-admins"),
        ("X-Remote-User", "forged-user"),
        ("X-WEBAUTH-USER", "forged-user"),
    ]
    signed_out = await fetch(browser, f"{site.url}/reports", headers=forged)
    assert signed_out.status == 302 and signed_out.headers["Location"].startswith("/oauth2/start?")

    await sign_in(site, browser)
    _, headers = echoed(await fetch(browser, f"{site.url}/reports", headers=forged))
    leaked = {name: value for name, value in headers.items() if "forged" in value}
    assert not leaked, f"client-sent identity reached the app: {leaked}"
    assert headers["x-forwarded-email"] == EMAIL
    assert headers["x-forwarded-user"] and headers["x-forwarded-user"] != "forged-user"


async def test_websockets_pass_through_after_the_check(site: Site, browser: Browser) -> None:
    await sign_in(site, browser)
    ws_url = site.url.replace("https://", "wss://") + "/_ws"
    async with browser.http.ws_connect(ws_url, ssl=site_tls().client_context) as ws:
        await ws.send_str("hello through nginx")
        assert await ws.receive_str(timeout=5) == "hello through nginx"


async def test_skip_auth_routes_follow_the_original_request(
    site_factory: SiteFactory, browser: Browser
) -> None:
    site = await site_factory(routes={"skip_auth": ["GET ^/public/"]})

    public = await fetch(browser, f"{site.url}/public/page", headers={"X-Forwarded-User": "forged-user"})
    path, headers = echoed(public)
    assert path == "/public/page"
    assert not [name for name in headers if name.startswith(("x-forwarded-user", "x-forwarded-email"))]

    # The rule says GET: nginx passes the real method, so a POST to the same path needs a session.
    assert (await fetch(browser, f"{site.url}/public/page", method="POST", headers=JSON)).status == 401
    # nginx writes X-Forwarded-Uri/-Method itself: a client cannot name a public path for a private one.
    lie = {**JSON, "X-Forwarded-Uri": "/public/page", "X-Forwarded-Method": "GET"}
    assert (await fetch(browser, f"{site.url}/private", headers=lie)).status == 401
    # authproxy judges the normalized path, the one the app will resolve.
    escaped = URL(f"{site.url}/public/%2e%2e/private", encoded=True)
    assert (await fetch(browser, escaped, headers=JSON)).status == 401


@pytest.mark.parametrize(
    "raw",
    [
        "/admin/x;.css",  # `;.css` is a parameter to a servlet container: the app serves /admin/x
        "/admin/x;a=1.css",
        "/admin/x%3b.css",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public/%2e%2e/admin",
        "/public/%%32e%%32e/admin",
        "/public/%25%32%65%25%32%65/admin",
        "/public//../admin",
        "/%70ublic/x.css/../../admin",
    ],
)
async def test_forward_auth_judges_the_canonical_path(
    site_factory: SiteFactory, browser: Browser, raw: str
) -> None:
    """In `auth_request` mode nginx, not authproxy, sends the request on, as the client spelled it. No
    spelling may pass anonymously unless it already is the canonical public path: an ambiguous one
    is refused by authproxy (nginx then answers 500), the others need a session."""
    site = await site_factory(routes={"skip_auth": ["GET ^/public/", "\\.css$"]})
    answer = await fetch(browser, URL(f"{site.url}{raw}", encoded=True), headers=JSON)
    assert answer.status in (400, 401, 500), (raw, answer.status, answer.text[:200])
    assert answer.headers.get("X-Upstream") != "echo"
    # The plain spellings of the same rules still pass without a session.
    for public in ("/public/page", "/assets/site.css"):
        assert (await fetch(browser, f"{site.url}{public}", headers=JSON)).status == 200


async def test_sign_out_through_nginx_ends_the_session(site: Site, browser: Browser, devidp: DevIdp) -> None:
    await sign_in(site, browser)
    session = browser.cookie(site.cookie_name)
    assert session

    # A sign-out link on another site (no same-origin evidence) only gets a confirmation page.
    confirm = await fetch(browser, f"{site.url}/oauth2/sign_out?rd=/goodbye")
    assert confirm.status == 200 and "Do you want to sign out?" in confirm.text
    echoed(await fetch(browser, f"{site.url}/reports"))

    signed_out = await fetch(
        browser, f"{site.url}/oauth2/sign_out?rd=/goodbye", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert signed_out.status == 302 and signed_out.headers["Location"] == "/goodbye"
    assert browser.cookie(site.cookie_name) is None
    assert (await devidp.stats())["logout"] == 1

    again = await fetch(browser, f"{site.url}/reports")
    assert again.status == 302 and again.headers["Location"] == "/oauth2/start?rd=/reports"
    # The old cookie, kept by a thief or a stale tab, names a session CentralAuth has ended.
    replayed = await fetch(
        browser, f"{site.url}/reports", headers={"Cookie": f"{site.cookie_name}={session}"}
    )
    assert replayed.status == 302 and replayed.headers["Location"].startswith("/oauth2/start?")


# --- authproxy-cached.conf: nginx caches the answers ------------------------------------------------------
#
# authproxy runs with session_check_ttl = 0, so it asks the fake CentralAuth on every check it answers:
# the fake's userinfo counter is exactly the number of checks nginx did not answer from its cache.

CACHE_LIFETIME = 2  # seconds; the file's 10 s, shortened by support/nginx.py:cache_edits()
MARGIN = 1.5  # nginx's cache clock ticks in whole seconds, and polling adds a little


@pytest.fixture
async def cached_site(site_factory: SiteFactory) -> Site:
    return await site_factory(
        cached=True, cache_lifetime=CACHE_LIFETIME, centralauth={"session_check_ttl": 0}
    )


async def userinfo_calls(devidp: DevIdp) -> int:
    return (await devidp.stats())["userinfo"]


async def identity(
    site: Site, browser: Browser, path: str = "/reports", headers: dict[str, str] | None = None
) -> str:
    """The e-mail the app received for this request, or a description of the refusal."""
    answer = await fetch(browser, site.url + path, headers={**JSON, **(headers or {})})
    if answer.status != 200:
        return f"refused {answer.status}"
    return echoed(answer)[1].get("x-forwarded-email", "anonymous")


def cache_entries(site: Site) -> list[Path]:
    return [path for path in (site.nginx.directory / "auth-cache").rglob("*") if path.is_file()]


def test_the_cached_site_only_adds_lines_to_the_plain_one() -> None:
    """authproxy-cached.conf is authproxy.conf plus the cache: nothing of the plain site may drift."""
    plain, cached = SITE.read_text().splitlines(), CACHED_SITE.read_text().splitlines()
    changes = difflib.SequenceMatcher(a=plain, b=cached, autojunk=False).get_opcodes()
    changed = [(tag, plain[i1:i2], cached[j1:j2]) for tag, i1, i2, j1, j2 in changes if tag != "equal"]
    assert changed and all(tag == "insert" for tag, _, _ in changed), changed
    added = "\n".join(line for _, _, lines in changed for line in lines)
    for directive in (
        "proxy_cache_path",
        "proxy_cache ",
        "proxy_cache_key",
        "proxy_cache_lock",
        "proxy_no_cache",
    ):
        assert directive in added, directive


async def test_cached_answers_carry_each_sessions_own_identity(cached_site: Site, devidp: DevIdp) -> None:
    """Many sessions of several users through one nginx, interleaved: each request gets its own
    session's identity, never another's, while nearly every check is answered from nginx's cache."""
    users = ["ada@example.com", "grace@example.com", "alan@example.com"]
    browsers = [Browser() for _ in range(2 * len(users))]  # two sessions per user
    try:
        for number, browser in enumerate(browsers):
            await sign_in(cached_site, browser, "/reports", email=users[number % len(users)])
        for _ in range(2):  # each round starts on a cold cache (the logins' own checks expired too)
            await asyncio.sleep(CACHE_LIFETIME + MARGIN)
            before = await userinfo_calls(devidp)
            wrong, asked = [], 0
            for batch in range(10):  # one request per session at a time, in a rotating order
                order = [(batch + number) % len(browsers) for number in range(len(browsers))]
                seen = await asyncio.gather(*(identity(cached_site, browsers[number]) for number in order))
                asked += len(order)
                wrong += [
                    (n, got) for n, got in zip(order, seen, strict=True) if got != users[n % len(users)]
                ]
            assert not wrong, f"answers with another session's identity, or refused: {wrong}"
            calls = await userinfo_calls(devidp) - before
            # One check per session (per cache lifetime), not one per request: the rest were cache hits.
            assert len(browsers) <= calls <= 2 * len(browsers) < asked, calls
    finally:
        for browser in browsers:
            await browser.close()


@pytest.mark.parametrize("how", ["logout-at-centralauth", "sign-out-through-authproxy"])
async def test_a_revoked_session_is_refused_within_the_cache_lifetime(
    cached_site: Site, browser: Browser, devidp: DevIdp, how: str
) -> None:
    await sign_in(cached_site, browser)
    cookie = {"Cookie": f"{cached_site.cookie_name}={browser.cookie(cached_site.cookie_name)}"}
    await asyncio.sleep(CACHE_LIFETIME + MARGIN)  # the login's own check has expired
    before = await userinfo_calls(devidp)
    assert await identity(cached_site, browser, headers=cookie) == EMAIL  # a miss: authproxy asked
    for _ in range(5):
        assert await identity(cached_site, browser, headers=cookie) == EMAIL
    assert await userinfo_calls(devidp) - before == 1  # the rest came from nginx's cache

    if how == "logout-at-centralauth":
        await devidp.end_sessions(EMAIL)
    else:
        signed_out = await fetch(
            browser, f"{cached_site.url}/oauth2/sign_out?rd=/", headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert signed_out.status == 302 and browser.cookie(cached_site.cookie_name) is None
    revoked = time.monotonic()
    # The same cookie, from the same client: still passed from the cache at first (that is its price) ...
    answers = [await identity(cached_site, browser, headers=cookie)]
    assert answers[0] == EMAIL, "the cached answer was not used"
    # ... and refused once it expires, within the lifetime.
    while answers[-1] == EMAIL and time.monotonic() - revoked < CACHE_LIFETIME + 5:
        await asyncio.sleep(0.1)
        answers.append(await identity(cached_site, browser, headers=cookie))
    lag = time.monotonic() - revoked
    assert answers[-1] == "refused 401", answers
    assert lag <= CACHE_LIFETIME + MARGIN, f"refused only after {lag:.2f} s"
    # And from then on, never passed again: a refusal is not cached, nor is the old answer revived.
    for _ in range(3):
        assert await identity(cached_site, browser, headers=cookie) == "refused 401"


async def test_a_renewed_answer_is_read_from_its_new_file_and_revocation_still_holds(
    cached_site: Site, browser: Browser, devidp: DevIdp
) -> None:
    """nginx keeps the cache's files open between hits (open_file_cache). A renewal writes a new file
    in the old one's place: the kept descriptor of the expired one must never be read again, or every
    request would go to authproxy (and an expired answer could be taken for the current one)."""
    await sign_in(cached_site, browser)
    cookie = {"Cookie": f"{cached_site.cookie_name}={browser.cookie(cached_site.cookie_name)}"}
    for _ in range(3):  # three lifetimes: each expiry, one check by authproxy, then hits on the new file
        await asyncio.sleep(CACHE_LIFETIME + MARGIN)
        before = await userinfo_calls(devidp)
        for _ in range(6):
            assert await identity(cached_site, browser, headers=cookie) == EMAIL
        assert await userinfo_calls(devidp) - before == 1
    await devidp.end_sessions(EMAIL)
    revoked = time.monotonic()
    while await identity(cached_site, browser, headers=cookie) == EMAIL:
        assert time.monotonic() - revoked <= CACHE_LIFETIME + MARGIN, "passed past the cache lifetime"
        await asyncio.sleep(0.1)
    for _ in range(3):
        assert await identity(cached_site, browser, headers=cookie) == "refused 401"


async def test_a_cached_answer_is_not_served_without_the_cookie_or_to_another_client(
    cached_site: Site, browser: Browser, devidp: DevIdp
) -> None:
    await sign_in(cached_site, browser)
    session = browser.cookie(cached_site.cookie_name)
    name = cached_site.cookie_name
    assert await identity(cached_site, browser) == EMAIL
    assert await identity(cached_site, browser) == EMAIL  # cached now

    async def asked(headers: dict[str, str]) -> tuple[str, int]:
        """What nginx answered a request from a client without a cookie jar, and how often it asked."""
        stranger = Browser()
        try:
            before = await userinfo_calls(devidp)
            got = await identity(cached_site, stranger, headers=headers)
            return got, await userinfo_calls(devidp) - before
        finally:
            await stranger.close()

    # No cookie, or no session cookie: authproxy is asked (it answers 401), never the cache.
    assert await asked({}) == ("refused 401", 0)
    assert await asked({"Cookie": "theme=dark"}) == ("refused 401", 0)
    assert await asked({"Cookie": f"{name}="}) == ("refused 401", 0)
    assert await asked({"Cookie": f"{name}=forged"}) == ("refused 401", 0)
    # The same session cookie with another cookie beside it is another key: authproxy is asked again.
    assert await asked({"Cookie": f"theme=dark; {name}={session}"}) == (EMAIL, 1)
    # With an Authorization header nginx always asks authproxy (a bearer token is checked every time),
    # even beside a valid session cookie.
    bearer = {"Cookie": f"{name}={session}", "Authorization": "Bearer not-a-token"}
    assert await asked(bearer) == (EMAIL, 1)
    # The session cookie from another client address (X-Forwarded-For, which nginx passes on and
    # authproxy believes from loopback) or another user agent: authproxy asks CentralAuth, whose hijack
    # protection refuses either; the cached answer is never served.
    other_ip = await asked({"Cookie": f"{name}={session}", "X-Forwarded-For": "203.0.113.9"})
    other_agent = await asked({"Cookie": f"{name}={session}", "User-Agent": "curl/8.0"})
    for got, calls in (other_ip, other_agent):
        assert got != EMAIL and calls <= 1, (other_ip, other_agent)


async def test_refusals_are_never_cached(cached_site: Site, browser: Browser, devidp: DevIdp) -> None:
    name = cached_site.cookie_name
    for _ in range(3):
        assert await identity(cached_site, browser, headers={"Cookie": f"{name}=forged"}) == "refused 401"
    assert cache_entries(cached_site) == []  # nothing was stored for a refused check

    # An ended session: refused, and the same browser's sign-in right after works at once.
    await sign_in(cached_site, browser)
    old = {"Cookie": f"{name}={browser.cookie(name)}"}
    await devidp.end_sessions(EMAIL)
    await asyncio.sleep(CACHE_LIFETIME + MARGIN)
    assert await identity(cached_site, browser, headers=old) == "refused 401"
    before = len(cache_entries(cached_site))
    assert await identity(cached_site, browser, headers=old) == "refused 401"
    assert len(cache_entries(cached_site)) == before
    _, landed = await sign_in(cached_site, browser)
    assert echoed(landed)[1]["x-forwarded-email"] == EMAIL
    assert await identity(cached_site, browser) == EMAIL


async def test_the_cached_site_runs_the_plain_sites_flows(cached_site: Site, browser: Browser) -> None:
    """The redirect, the 404 for /oauth2/auth, forged identity headers and websockets, with the cache."""
    answer = await fetch(browser, f"{cached_site.url}/reports?year=2024")
    assert answer.status == 302 and answer.headers["Location"] == "/oauth2/start?rd=/reports?year=2024"
    assert (await fetch(browser, f"{cached_site.url}/oauth2/auth", headers=JSON)).status == 404
    await sign_in(cached_site, browser)
    forged = {"X-Forwarded-Email": "forged@evil.example", "X-Auth-Request-Email": "forged@evil.example"}
    for _ in range(2):  # a miss, then a hit: the identity comes from the (cached) answer either way
        _, headers = echoed(await fetch(browser, f"{cached_site.url}/reports", headers=forged))
        assert headers["x-forwarded-email"] == EMAIL and "x-auth-request-email" not in headers
    ws_url = cached_site.url.replace("https://", "wss://") + "/_ws"
    async with browser.http.ws_connect(ws_url, ssl=site_tls().client_context) as ws:
        await ws.send_str("hello through the cache")
        assert await ws.receive_str(timeout=5) == "hello through the cache"


# --- Traefik ---------------------------------------------------------------------------------------------


def traefik(name: str) -> dict[str, Any]:
    return tomllib.loads((TRAEFIK / name).read_text())


def test_traefik_forward_auth_asks_authproxy() -> None:
    http = traefik("dynamic.toml")["http"]
    routers, middlewares, services = http["routers"], http["middlewares"], http["services"]

    auth = middlewares["authproxy-auth"]["forwardAuth"]
    address = urlsplit(auth["address"])
    assert address.path == "/oauth2/auth"
    assert auth["trustForwardHeader"] is True
    assert auth["authResponseHeaders"] == IDENTITY_HEADERS
    authproxy_urls = {
        urlsplit(server["url"]).netloc for server in services["authproxy"]["loadBalancer"]["servers"]
    }
    assert authproxy_urls == {address.netloc}

    # authproxy's own pages need no session; the app is guarded, outermost middleware first.
    assert "PathPrefix(`/oauth2/`)" in routers["authproxy"]["rule"]
    assert routers["authproxy"]["service"] == "authproxy" and "middlewares" not in routers["authproxy"]
    assert routers["app"]["middlewares"] == [
        "authproxy-strip-identity",
        "authproxy-sign-in",
        "authproxy-auth",
    ]
    sign_in_page = middlewares["authproxy-sign-in"]["errors"]
    assert sign_in_page == {"status": ["401"], "service": "authproxy", "query": "/oauth2/sign_in?rd={url}"}
    stripped = middlewares["authproxy-strip-identity"]["headers"]["customRequestHeaders"]
    assert stripped["X-Forwarded-User"] == stripped["X-Forwarded-Email"] == ""

    for router in routers.values():
        assert router["service"] in services
        assert all(name in middlewares for name in router.get("middlewares", []))


def test_traefik_static_config_loads_the_dynamic_file_and_keeps_forwarded_headers_honest() -> None:
    static = traefik("traefik.toml")
    assert Path(static["providers"]["file"]["filename"]).name == "dynamic.toml"
    for name, entry_point in static["entryPoints"].items():
        assert entry_point.get("forwardedHeaders", {}).get("insecure") is not True, name


async def test_traefik_passes_on_every_identity_header_authproxy_answers(
    proxy: Proxy, browser: Browser
) -> None:
    status, _, _ = await browser.login(f"{proxy.url}/", EMAIL)
    assert status == 200
    async with browser.http.get(f"{proxy.url}/oauth2/auth") as response:
        assert response.status == 202
        answered = {name.lower() for name in response.headers if name.lower().startswith("x-auth-request-")}
    listed = traefik("dynamic.toml")["http"]["middlewares"]["authproxy-auth"]["forwardAuth"]
    assert answered == {name.lower() for name in listed["authResponseHeaders"]}
