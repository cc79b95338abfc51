"""Shared fixtures: a real fake CentralAuth on loopback and a browser-like driver for it.

`devidp` is a running fake with the test defaults below (override per test with indirect
parametrization: `@pytest.mark.parametrize("devidp", [{"max_session_time": 60}], indirect=True)`);
`devidp_factory(**overrides)` starts more of them. The `DevIdp` object speaks to the fake over real
HTTP exactly as a browser and a relying party would: `login()` drives `GET`/`POST /login`,
`verify()`/`userinfo()`/`logout()` send what the official NPM library sends, and the remaining helpers
wrap the `/_devidp/` test-control API.

Around them: `proxy_factory`/`proxy` (the proxy under test in front of a real echo upstream), `kernel`
(a JupyterLab-like upstream), `browser` and `http` clients, `logs` (captured output checked for unhandled
exceptions) and `redis_server` (a real redis-server of the test's own). Signing a browser in is
`support.logins.signed_in`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from support.chaos import LogCheck
from support.echo import make_echo_app
from support.harness import Browser, Proxy, start_proxy
from support.kernel import KernelState, make_kernel_app
from support.redis_server import RedisServer
from yarl import URL

from authproxy.devidp import DevIdpSettings, make_app
from authproxy.devidp.context import CONTEXT

CLIENT_ID = "3f1c2a9e-7b4d-4e8a-9c61-0d2b5e8f7a10"
CLIENT_SECRET = "5d41402abc4b2a76b9719d911017c592" + "7e240de74eb0ad2b58bd5a1c2f7b3e91"
APP = "https://app.example.com"
OTHER_APP = "https://other.example.com"
WILDCARD = "https://*.apps.example.com"
CALLBACK = f"{APP}/api/auth/callback"
BROWSER_IP = "203.0.113.9"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# The no-cache request headers the NPM library's HTTP cache layer adds to userinfo calls.
NPM_CACHE_HEADERS = {
    "Accept": "application/json, text/plain, */*",
    "Cache-Control": "no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
TEST_DEFAULTS: dict[str, Any] = {
    "client_id": CLIENT_ID,
    "client_secret": CLIENT_SECRET,
    "whitelist": [APP, OTHER_APP, WILDCARD],
    # Lets a test choose the browser's IP with X-Forwarded-For; everything here comes from 127.0.0.1.
    "trust_forwarded_for": True,
}


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Login:
    """A completed browser login: where the fake sent the browser, and the PKCE pair used."""

    callback: URL
    redirect_uri: str
    state: str
    verifier: str
    page: Reply | None = None

    @property
    def code(self) -> str:
        return self.callback.query["code"]


@dataclass
class Tokens:
    access_token: str
    id_token: str
    body: dict[str, Any] = field(default_factory=dict)


class DevIdp:
    def __init__(self, url: str, app: web.Application, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.app = app
        self.http = http

    @property
    def settings(self) -> DevIdpSettings:
        """The fake's live settings (they change with `patch_settings`)."""
        return self.app[CONTEXT].settings

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        kwargs.setdefault("allow_redirects", False)
        async with self.http.request(method, self.url + path, **kwargs) as response:
            return Reply(response.status, response.headers, await response.read())

    # Browser side

    def login_url(
        self,
        *,
        redirect_uri: str = CALLBACK,
        state: str | None = None,
        challenge: str | None = None,
        **params: str,
    ) -> str:
        query = {
            "redirect_uri": redirect_uri,
            "client_id": CLIENT_ID,
            "response_type": "code",
            "state": state if state is not None else str(uuid.uuid4()),
            "code_challenge": challenge if challenge is not None else challenge_of(str(uuid.uuid4())),
            "code_challenge_method": "S256",
            **params,
        }
        return str(URL(self.url + "/login").with_query(query))

    @staticmethod
    def browser_headers(ip: str, user_agent: str, referer: str | None) -> dict[str, str]:
        headers = {"User-Agent": user_agent, "X-Forwarded-For": ip}
        if referer:
            headers["Referer"] = referer
        return headers

    async def complete_login(
        self,
        login_url: str,
        email: str = "alice@example.com",
        *,
        ip: str = BROWSER_IP,
        user_agent: str = BROWSER_UA,
        referer: str | None = f"{APP}/",
    ) -> tuple[URL, Reply]:
        """Opens a `/login` URL like a browser, submits the e-mail, returns the callback URL it lands on.

        Also returns the last page: the autologin page when autologin delivered extra codes.
        """
        headers = self.browser_headers(ip, user_agent, referer)
        async with self.http.get(login_url, headers=headers, allow_redirects=False) as response:
            page = Reply(response.status, response.headers, await response.read())
        if page.status == 200:
            headers["Referer"] = login_url
            async with self.http.post(
                login_url, data={"email": email}, headers=headers, allow_redirects=False
            ) as response:
                page = Reply(response.status, response.headers, await response.read())
        if page.status == 302:
            return URL(page.headers["Location"], encoded=True), page
        match = re.search(r'http-equiv="refresh" content="\d+;url=([^"]+)"', page.text)
        assert page.status == 200 and match, f"login did not complete: {page.status} {page.text[:500]}"
        return URL(unescape(match.group(1)), encoded=True), page

    async def login(
        self,
        email: str = "alice@example.com",
        *,
        redirect_uri: str = CALLBACK,
        state: str | None = None,
        verifier: str | None = None,
        ip: str = BROWSER_IP,
        user_agent: str = BROWSER_UA,
        referer: str | None = f"{APP}/",
        **params: str,
    ) -> Login:
        state = state if state is not None else str(uuid.uuid4())
        verifier = verifier if verifier is not None else str(uuid.uuid4())
        url = self.login_url(
            redirect_uri=redirect_uri, state=state, challenge=challenge_of(verifier), **params
        )
        callback, page = await self.complete_login(url, email, ip=ip, user_agent=user_agent, referer=referer)
        return Login(callback, redirect_uri, state, verifier, page)

    # Relying-party side, as the official NPM library sends it

    async def verify(
        self, code: str, *, redirect_uri: str = CALLBACK, verifier: str | None = None, auth: str | None = None
    ) -> Reply:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("code", code)
        form.add_field("redirect_uri", str(URL(redirect_uri).with_query(None)))
        form.add_field("code_verifier", verifier if verifier is not None else "undefined")
        headers = {"Authorization": auth or basic(), "User-Agent": "node", "Accept": "*/*"}
        return await self.call("POST", "/api/v1/verify", data=form, headers=headers)

    async def userinfo(
        self,
        token: str,
        *,
        domain: str | None = APP,
        ip: str | None = BROWSER_IP,
        user_agent: str | None = BROWSER_UA,
        device_id: str | None = None,
        auth: str | None = None,
    ) -> Reply:
        headers = {"Authorization": auth or basic(), "Content-Type": "text/plain", **NPM_CACHE_HEADERS}
        if ip is not None:
            headers["auth-ip"] = ip
        headers["User-Agent"] = user_agent if user_agent is not None else "native"
        if device_id is not None:
            headers["device-id"] = device_id
        params = {"domain": domain} if domain is not None else {}
        return await self.call(
            "POST", "/api/v1/userinfo", params=params, data=token.encode(), headers=headers
        )

    async def logout(self, token: str, *, auth: str | None = None) -> Reply:
        headers = {"Authorization": auth or basic(), "Content-Type": "text/plain"}
        return await self.call("POST", "/api/v1/logout", data=token.encode(), headers=headers)

    async def sign_in(self, email: str = "alice@example.com", **login_args: Any) -> Tokens:
        """Login + verify, as a relying party's callback does; fails the test if either step fails."""
        login = await self.login(email, **login_args)
        reply = await self.verify(login.code, redirect_uri=login.redirect_uri, verifier=login.verifier)
        assert reply.status == 200, reply.text
        body = reply.json()
        return Tokens(body["access_token"], body["id_token"], body)

    # Test-control API

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        reply = await self.call(method, "/_devidp" + path, json=body)
        assert reply.status < 300, f"{method} /_devidp{path}: {reply.status} {reply.text}"
        return reply.json()

    async def advance(self, seconds: float) -> Any:
        return await self.control("POST", "/clock", {"advance": seconds})

    async def stats(self) -> dict[str, int]:
        counts: dict[str, int] = await self.control("GET", "/stats")
        return counts

    async def recorded(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = await self.control("GET", "/requests")
        return calls

    async def fault(self, endpoint: str, **spec: Any) -> Any:
        return await self.control("POST", "/faults", {"endpoint": endpoint, **spec})

    async def patch_settings(self, **changes: Any) -> Any:
        return await self.control("PATCH", "/settings", changes)

    async def patch_user(self, email: str, **changes: Any) -> Any:
        return await self.control("PATCH", f"/users/{email}", changes)

    async def end_sessions(self, email: str) -> Any:
        return await self.control("POST", f"/users/{email}/logout")


DevIdpFactory = Callable[..., Awaitable[DevIdp]]


@pytest.fixture
async def devidp_factory(aiohttp_server: AiohttpServer) -> AsyncIterator[DevIdpFactory]:
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> DevIdp:
        app = make_app(DevIdpSettings(**{**TEST_DEFAULTS, **overrides}))
        server = await aiohttp_server(app)
        http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        sessions.append(http)
        return DevIdp(str(server.make_url("")).rstrip("/"), app, http)

    yield start
    for http in sessions:
        await http.close()


@pytest.fixture
async def devidp(request: pytest.FixtureRequest, devidp_factory: DevIdpFactory) -> DevIdp:
    return await devidp_factory(**getattr(request, "param", {}))


# --- the proxy under test -------------------------------------------------------------------------------

ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def echo_url(aiohttp_server: AiohttpServer) -> str:
    """A real echo upstream on loopback (see support/echo.py)."""
    server = await aiohttp_server(make_echo_app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def proxy_factory(devidp: DevIdp, echo_url: str) -> AsyncIterator[ProxyFactory]:
    """Start proxies in front of the echo upstream, talking to `devidp`; overrides are config tables.

    `clock` (wall time) and `monotonic` (what TTLs run on) replace the proxy's real clocks, e.g. with a
    `support.harness.FakeClock` a test advances instead of sleeping."""
    started: list[Proxy] = []

    async def start(
        *,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> Proxy:
        clocks = {"clock": clock, "monotonic": monotonic}
        proxy = await start_proxy(
            idp_url=devidp.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            upstream_url=echo_url,
            overrides=overrides,
            **{name: given for name, given in clocks.items() if given is not None},
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def proxy(proxy_factory: ProxyFactory) -> Proxy:
    return await proxy_factory()


@pytest.fixture
async def kernel(aiohttp_server: AiohttpServer) -> tuple[KernelState, str]:
    """A JupyterLab-like upstream (support/kernel.py): its state, and its URL."""
    state = KernelState()
    server = await aiohttp_server(make_kernel_app(state))
    return state, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    client = Browser()
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A bare HTTP client: it keeps no cookies and hands bodies over as sent (no decompression)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False) as session:
        yield session


# --- around the proxy ---------------------------------------------------------------------------------


@pytest.fixture
def logs(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> LogCheck:
    """Everything the test printed or logged, to check for unhandled exceptions (`logs.assert_clean()`)."""
    return LogCheck(capfd, caplog)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own on a free loopback port (support/redis_server.py)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


ReplicaFactory = Callable[[float], Awaitable[list[Proxy]]]


@pytest.fixture
def redis_replicas(proxy_factory: ProxyFactory, redis_server: RedisServer) -> ReplicaFactory:
    """Three proxies sharing `redis_server` as their session store, with the given session_check_ttl;
    one public URL, so a cookie from one is a session on all three."""

    async def start(ttl: float) -> list[Proxy]:
        settings = {
            "session": {"store": "redis", "redis_url": redis_server.url},
            "centralauth": {"session_check_ttl": ttl},
        }
        first = await proxy_factory(**settings)
        rest = [await proxy_factory(**settings, server={"public_url": first.url}) for _ in range(2)]
        return [first, *rest]

    return start


@pytest.fixture
def no_authproxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs in a test stand on their own: a developer's AUTHPROXY_* variables would be merged over
    them. Modules about configuration use it for every test (`pytestmark`)."""
    for name in list(os.environ):
        if name.upper().startswith("AUTHPROXY_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def second_browser() -> AsyncIterator[Browser]:
    """Another person's browser, beside `browser`."""
    client = Browser()
    yield client
    await client.close()
