"""A real HAProxy in front of authproxy as its trusted hop: who the client is, and what the app is told.

HAProxy's `option forwardfor` does not append to the client's `X-Forwarded-For`: it keeps every line the
client sent and adds its own line after them (`test_haproxy_adds_its_own_line_after_the_clients` pins
that). A proxy that reads only the first line therefore believes a forged client line, and a stolen
session cookie replayed with `X-Forwarded-For: <victim's IP>` would reach CentralAuth with the victim's
IP as `auth-ip`, defeating its hijack protection. The rule under test: all lines of the list header are
combined in order (RFC 9110, section 5.3) and walked from the right through `server.trusted_proxies`.

Everything runs on loopback: HAProxy connects to authproxy from 127.0.0.1, the only trusted address
(`trusted_proxies = ["127.0.0.1/32"]`), while the clients bind their sockets to 127.0.0.3 (the victim)
and 127.0.0.2 (the attacker), so each is seen by HAProxy and by the fake CentralAuth's login page as
the untrusted address it really connects from. Requests carrying forged headers are written byte for
byte on a raw socket: aiohttp's client folds header lines whose names differ only in case into one.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import pytest
from conftest import DevIdp, ProxyFactory
from support.haproxy import HOP_ADDRESS, HAProxy, haproxy_binary, render_config, start_haproxy
from support.harness import BROWSER_UA, HTML, Proxy, free_port

from authproxy.runtime import LIVE

VICTIM_IP = "127.0.0.3"
ATTACKER_IP = "127.0.0.2"
EMAIL = "victim@example.com"
PAGE = "/account"
JSON = "application/json"
TIMEOUT = 5.0
Lines = Sequence[tuple[str, str]]


@dataclass
class Site:
    """HAProxy at `url` in front of an authproxy that trusts it, in front of the echo app."""

    url: str
    proxy: Proxy
    haproxy: HAProxy

    @property
    def cookie_name(self) -> str:
        return self.proxy.app[LIVE].runtime.cookie.name

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site_factory(proxy_factory: ProxyFactory) -> AsyncIterator[SiteFactory]:
    """Start authproxy configured for life behind HAProxy, then HAProxy with these frontend lines."""
    started: list[HAProxy] = []

    async def start(*frontend_extra: str) -> Site:
        # HAProxy needs authproxy's port and authproxy's public_url needs HAProxy's: pick HAProxy's first.
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proxy = await proxy_factory(server={"public_url": url, "trusted_proxies": [f"{HOP_ADDRESS}/32"]})
        haproxy = await start_haproxy(port=port, authproxy_url=proxy.url, frontend_extra=frontend_extra)
        started.append(haproxy)
        return Site(url, proxy, haproxy)

    yield start
    for haproxy in started:
        await haproxy.stop()


@pytest.fixture
async def site(site_factory: SiteFactory) -> Site:
    return await site_factory()


# --- clients ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def upstream(self, name: str) -> list[str] | None:
        """Every line of header `name` the echo app received, or None if the request never reached it."""
        if self.headers.get("X-Upstream") != "echo":
            return None
        pairs = json.loads(self.body)["headers"]
        return [value for key, value in pairs if key.lower() == name.lower()]


class _Replay:
    """Just enough of a socket for `http.client.HTTPResponse` to parse bytes already read (chunked too)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


async def raw_get(url: str, *, source: str, lines: Lines) -> Answer:
    """GET `url` (through HAProxy) from address `source`, sending exactly these header lines."""
    parts = urlsplit(url)
    host, port = parts.netloc.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        head = [
            f"GET {parts.path or '/'} HTTP/1.1",
            f"Host: {parts.netloc}",
            *(f"{k}: {v}" for k, v in lines),
        ]
        writer.write(("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    response = http.client.HTTPResponse(cast(socket.socket, _Replay(raw)))
    response.begin()
    return Answer(response.status, response.headers, response.read())


async def sign_in(site: Site, devidp: DevIdp) -> tuple[str, dict[str, Any]]:
    """The victim's whole login from 127.0.0.3, through HAProxy except for the fake's own login form.

    Returns the session cookie's value and what the echo app received for the page it landed on.
    """
    # Bound to 127.0.0.3, the victim needs no X-Forwarded-For of its own: the fake's login page and
    # HAProxy both see that address as the peer, as they would see a real browser's.
    connector = aiohttp.TCPConnector(local_addr=(VICTIM_IP, 0))
    jar = aiohttp.CookieJar(unsafe=True)
    headers = {"User-Agent": BROWSER_UA, "Accept": HTML}
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar, headers=headers) as victim:
        async with victim.get(site.url + PAGE) as response:
            form, page = response.url, await response.text()
        assert str(form.origin()) == devidp.url and form.path == "/login", (form, page[:300])
        async with victim.post(form, data={"email": EMAIL}) as response:
            landed, text = response.url, await response.text()
            assert response.status == 200 and response.headers.get("X-Upstream") == "echo", text[:300]
        assert str(landed) == site.url + PAGE
        # The callback came back through HAProxy, as `public_url` says it must.
        assert any(str(hop.url).startswith(f"{site.url}/oauth2/callback?") for hop in response.history)
        cookies = [cookie.value for cookie in jar if cookie.key == site.cookie_name]
    assert cookies, f"no {site.cookie_name} cookie after the login"
    return cookies[0], json.loads(text)


async def userinfo_ips(devidp: DevIdp) -> list[str]:
    """The `auth-ip` of every userinfo call the fake CentralAuth recorded, in order."""
    calls = [r for r in await devidp.recorded() if r["path"] == "/api/v1/userinfo"]
    return [call["headers"].get("auth-ip", "<none>") for call in calls]


def received(payload: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in payload["headers"] if key.lower() == name.lower()]


# --- the premise -----------------------------------------------------------------------------------------


def test_haproxy_is_installed_and_takes_the_config() -> None:
    """Without haproxy every test below fails too (never skips); this one says so first, and plainly."""
    config = render_config(port=free_port(), backend="127.0.0.1:9", frontend_extra=["http-request deny"])
    checked = subprocess.run(
        [haproxy_binary(), "-c", "-f", "/dev/stdin"], input=config, capture_output=True, text=True
    )
    assert checked.returncode == 0, f"haproxy rejects the test config:\n{config}\n{checked.stderr}"


async def test_haproxy_adds_its_own_line_after_the_clients() -> None:
    """What HAProxy 2.6 (Debian 12) sends the next hop: the client's lines untouched, lower-cased, then its
    own `x-forwarded-for` line. Not one merged value, which is why authproxy must combine the lines."""
    seen: list[bytes] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    port = free_port()
    haproxy = await start_haproxy(port=port, authproxy_url=f"http://127.0.0.1:{backend_port}")
    try:
        forged = [("X-Forwarded-For", VICTIM_IP), ("x-forwarded-for", f"{VICTIM_IP}, {HOP_ADDRESS}")]
        answer = await raw_get(haproxy.url + "/", source=ATTACKER_IP, lines=forged)
        assert answer.status == 204, haproxy.log()
    finally:
        await haproxy.stop()
        server.close()
        await server.wait_closed()
    lines = [line.lower() for line in seen[0].decode("latin-1").split("\r\n")]
    assert [line for line in lines if line.startswith("x-forwarded-for:")] == [
        f"x-forwarded-for: {VICTIM_IP}",
        f"x-forwarded-for: {VICTIM_IP}, {HOP_ADDRESS}",
        f"x-forwarded-for: {ATTACKER_IP}",
    ]


# --- the client IP ---------------------------------------------------------------------------------------


async def test_victim_through_haproxy_is_seen_as_its_own_ip(site: Site, devidp: DevIdp) -> None:
    _, landed = await sign_in(site, devidp)
    (session,) = await devidp.control("GET", "/sessions")
    assert session["ip"] == VICTIM_IP  # what the fake's hijack protection will compare auth-ip with
    # One value, not HAProxy's chain: authproxy replaces the header with the client it derived.
    assert received(landed, "X-Forwarded-For") == [VICTIM_IP]
    ips = await userinfo_ips(devidp)
    assert ips and set(ips) == {VICTIM_IP}, ips
    assert f"GET {PAGE}" in site.haproxy.log()  # the page really went through HAProxy


FORGED_FOR = {
    "one-forged-line": [("X-Forwarded-For", VICTIM_IP)],
    "two-forged-lines": [("X-Forwarded-For", VICTIM_IP), ("X-Forwarded-For", VICTIM_IP)],
    # Ends in the trusted hop's address, as if HAProxy had already appended to it.
    "forged-list": [("X-Forwarded-For", f"{VICTIM_IP}, {HOP_ADDRESS}")],
    "lower-case-name": [("x-forwarded-for", VICTIM_IP)],
    "forged-line-then-hop-line": [("X-Forwarded-For", VICTIM_IP), ("X-Forwarded-For", HOP_ADDRESS)],
    "mixed-case-lines": [("X-FORWARDED-FOR", VICTIM_IP), ("x-Forwarded-for", f"{VICTIM_IP}, {HOP_ADDRESS}")],
    # Headers authproxy never reads for the client IP; they must not start to count either.
    "other-client-ip-headers": [
        ("Forwarded", f"for={VICTIM_IP}"),
        ("X-Real-IP", VICTIM_IP),
        ("True-Client-IP", VICTIM_IP),
    ],
}


@pytest.mark.parametrize("forged", FORGED_FOR.values(), ids=FORGED_FOR.keys())
async def test_forged_forwarded_for_through_haproxy_never_becomes_the_client_ip(
    site: Site, devidp: DevIdp, forged: Lines
) -> None:
    stolen, _ = await sign_in(site, devidp)
    await devidp.call("DELETE", "/_devidp/requests")
    # The thief copies the victim's cookie and user agent: only the IP can give the replay away.
    lines = [
        ("User-Agent", BROWSER_UA),
        ("Accept", JSON),
        ("Cookie", f"{site.cookie_name}={stolen}"),
        *forged,
    ]
    answer = await raw_get(site.url + PAGE, source=ATTACKER_IP, lines=lines)
    upstream_for = answer.upstream("X-Forwarded-For")
    ips = await userinfo_ips(devidp)

    assert VICTIM_IP not in ips and VICTIM_IP not in (upstream_for or []), (
        f"the attacker on {ATTACKER_IP} passed for the victim: answer {answer.status}, userinfo auth-ip "
        f"{ips}, X-Forwarded-For at the app {upstream_for}\n{site.haproxy.log()}"
    )
    # A fresh check for the attacker's (IP, agent), never the victim's cached answer.
    assert ips and set(ips) == {ATTACKER_IP}, ips
    assert answer.status in (302, 401) and upstream_for is None, (answer.status, answer.body[:300])
    (session,) = await devidp.control("GET", "/sessions")
    assert session["ended"] == "hijack"  # CentralAuth saw the mismatch and ended the session


# --- X-Forwarded-Proto and -Host -------------------------------------------------------------------------

FORGED_PROTO_HOST = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")]


@pytest.mark.parametrize(
    ("forged", "proto", "host"),
    [
        pytest.param([], "http", None, id="none-forged"),
        # HAProxy passes the client's lines on untouched and HAProxy is trusted, so the client's value is
        # the rightmost one and is believed: behind HAProxy these headers are only as good as its
        # `set-header` lines (next test). This documents the behaviour; it is not a recommendation.
        pytest.param(FORGED_PROTO_HOST, "https", "evil.example", id="one-line-each"),
        pytest.param(
            [("X-Forwarded-Proto", "gopher, https"), ("X-Forwarded-Host", "a.example, evil.example")],
            "https",
            "evil.example",
            id="comma-lists",
        ),
        # The rightmost value across all lines combined, not the first line's.
        pytest.param(
            [
                ("X-Forwarded-Proto", "gopher"),
                ("x-forwarded-proto", "https"),
                ("X-Forwarded-Host", "a.example"),
                ("X-FORWARDED-HOST", "evil.example"),
            ],
            "https",
            "evil.example",
            id="two-lines-each",
        ),
    ],
)
async def test_forwarded_proto_and_host_when_haproxy_does_not_set_them(
    site: Site, devidp: DevIdp, forged: Lines, proto: str, host: str | None
) -> None:
    cookie, _ = await sign_in(site, devidp)
    lines = [("Cookie", f"{site.cookie_name}={cookie}"), ("User-Agent", BROWSER_UA), *forged]
    answer = await raw_get(site.url + PAGE, source=VICTIM_IP, lines=lines)
    assert answer.status == 200, answer.body[:300]
    assert answer.upstream("X-Forwarded-Proto") == [proto]
    # Unforged, the app gets the Host the browser sent HAProxy, which HAProxy passes on unchanged.
    assert answer.upstream("X-Forwarded-Host") == [host or site.netloc]


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param([], id="none-forged"),
        pytest.param(FORGED_PROTO_HOST, id="one-line-each"),
        pytest.param(
            [*FORGED_PROTO_HOST, ("x-forwarded-proto", "https"), ("X-FORWARDED-HOST", "evil.example")],
            id="two-lines-each",
        ),
    ],
)
async def test_forwarded_proto_and_host_set_by_haproxy_are_what_the_app_gets(
    site_factory: SiteFactory, devidp: DevIdp, forged: Lines
) -> None:
    # A fixed host name, unlike `%[req.hdr(host)]`, cannot be mistaken for authproxy's own fallback.
    site = await site_factory(
        "http-request set-header X-Forwarded-Proto http",
        "http-request set-header X-Forwarded-Host app.example.com",
    )
    cookie, _ = await sign_in(site, devidp)
    lines = [("Cookie", f"{site.cookie_name}={cookie}"), ("User-Agent", BROWSER_UA), *forged]
    answer = await raw_get(site.url + PAGE, source=VICTIM_IP, lines=lines)
    assert answer.status == 200, answer.body[:300]
    assert answer.upstream("X-Forwarded-Proto") == ["http"]
    assert answer.upstream("X-Forwarded-Host") == ["app.example.com"]
    assert answer.upstream("X-Forwarded-For") == [VICTIM_IP]
