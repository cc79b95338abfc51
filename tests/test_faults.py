"""Fault injection, table-driven: CentralAuth, the upstream and Redis misbehave; the proxy must answer
with a clear 502/503/504 (or ride the fault out with a stale answer when configured), lose no valid
session, log no unhandled exception, and recover as soon as the fault clears.

Every peer is a real server on loopback. CentralAuth faults come from the fake's `/_devidp/faults` API
or from a TCP relay in front of it (segmented answers, partitions, resets); upstream faults from a
hand-written HTTP server; Redis faults from a relay in front of a real redis-server. The cases already
covered elsewhere are not repeated: fail-closed 503/429/500/dropped userinfo (test_session_check),
503/429/dropped/slow verify (test_login_flow), a refused or silent upstream (test_proxy_forwarding),
Redis stopping and restarting (test_redis_store), logout failures (test_signout).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from conftest import DevIdp, ProxyFactory
from support.chaos import (
    Behaviour,
    ChaosRelay,
    LogCheck,
    RawServer,
    answer_ok,
    answer_twice,
    hang,
    reset_at_once,
    reset_mid_body,
    send_raw,
)
from support.echo import received_headers
from support.harness import Browser, Proxy
from support.logins import signed_in
from support.redis_server import RedisServer
from yarl import URL

from authproxy.devidp.context import CONTEXT
from authproxy.devidp.faults import Fault
from authproxy.runtime import LIVE

EMAIL = "ada@example.com"
HTML = {"Accept": "text/html"}
TIMEOUT = 0.5  # the proxy's CentralAuth and upstream timeouts here: slow faults stay cheap
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class CentralAuthFault:
    """One way CentralAuth can fail: a fault for the fake to inject, or a relay mode, or both."""

    id: str
    spec: dict[str, Any] = field(default_factory=dict)
    relay: str = "pass"
    huge: bool = False  # a 10 MB body: over the control API's size limit, so queued in-process
    outage: bool = True  # False: a hiccup the proxy must absorb with a normal answer

    async def inject(self, devidp: DevIdp, relay: ChaosRelay, endpoint: str) -> None:
        if self.huge:
            body = "[" + "0," * (TEN_MB // 2) + "0]"  # valid JSON, so only the size cap can refuse it
            devidp.app[CONTEXT].faults.add(Fault(endpoint, status=200, body=body))
        elif self.spec:
            await devidp.fault(endpoint, **self.spec)
        relay.mode = self.relay

    async def clear(self, devidp: DevIdp, relay: ChaosRelay) -> None:
        relay.mode = "pass"
        await devidp.control("DELETE", "/faults")


# Gaps left by test_session_check and test_login_flow, which cover 503, 429, 500 and dropped connections.
CENTRALAUTH_FAULTS = [
    CentralAuthFault("502-gateway-page", {"status": 502}),
    CentralAuthFault("504-gateway-page", {"status": 504}),
    CentralAuthFault(
        "200-not-json", {"status": 200, "body": "<h1>Maintenance</h1>", "content_type": "text/html"}
    ),
    CentralAuthFault("200-truncated-json", {"status": 200, "body": '{"id": "a828b6b4", "email": "ada@exa'}),
    CentralAuthFault("200-json-without-user", {"status": 200, "body": '{"ok": true}'}),
    # A misrouted load balancer's HTML 401/404 is not CentralAuth saying no: only JSON 4xx ends sessions.
    CentralAuthFault(
        "401-html", {"status": 401, "body": "<h1>Unauthorized</h1>", "content_type": "text/html"}
    ),
    CentralAuthFault("404-html", {"status": 404, "body": "<h1>Not Found</h1>", "content_type": "text/html"}),
    CentralAuthFault("10mb-body", huge=True),
    CentralAuthFault("slower-than-timeout", {"delay": TIMEOUT * 2}),
    CentralAuthFault("network-partition", relay="blackhole"),
    CentralAuthFault("refused", relay="refuse"),
    CentralAuthFault("reset-mid-answer", relay="reset"),
    CentralAuthFault("slow-within-timeout", {"delay": TIMEOUT / 3}, outage=False),
    # Not a fault at all: one answer arriving in many TCP segments must be read to its end, not taken
    # for a truncated (non-JSON) answer after the first segment.
    CentralAuthFault("answer-in-small-segments", relay="split", outage=False),
]
# Stale mode is only tested with a plain 503 elsewhere; the classic outages are added for it here.
STALE_ONLY = [
    CentralAuthFault("429", {"status": 429}),
    CentralAuthFault("500", {"status": 500}),
    CentralAuthFault("dropped", {"status": 0}),
]


@dataclass
class Stack:
    relay: ChaosRelay
    proxy: Proxy

    @property
    def cookie_name(self) -> str:
        return self.proxy.app[LIVE].runtime.cookie.name


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack(devidp: DevIdp, proxy_factory: ProxyFactory) -> AsyncIterator[StackFactory]:
    """A proxy whose CentralAuth is the fake seen through a chaos relay."""
    relays: list[ChaosRelay] = []

    async def make(**overrides: Any) -> Stack:
        relay = await ChaosRelay(int(URL(devidp.url).port or 0)).start()
        relays.append(relay)
        centralauth = {"base_url": relay.url, "timeout": TIMEOUT, **overrides.pop("centralauth", {})}
        return Stack(relay, await proxy_factory(centralauth=centralauth, **overrides))

    yield make
    for relay in relays:  # the proxies are proxy_factory's to stop
        await relay.stop()


async def get(browser: Browser, url: str, **headers: str) -> tuple[int, str, list[str]]:
    """Status, body and the Set-Cookie headers of one request, redirects not followed."""
    async with browser.http.get(url, headers=headers, allow_redirects=False) as response:
        return response.status, await response.text(), response.headers.getall("Set-Cookie", [])


def identity_of(body: str) -> str:
    return received_headers(json.loads(body)).get("x-forwarded-email", "")


@pytest.mark.parametrize("on_outage", ["fail-closed", "stale"])
@pytest.mark.parametrize("fault", CENTRALAUTH_FAULTS, ids=lambda fault: fault.id)
async def test_session_check_under_a_centralauth_fault(
    stack: StackFactory,
    devidp: DevIdp,
    browser: Browser,
    logs: LogCheck,
    fault: CentralAuthFault,
    on_outage: str,
) -> None:
    await _session_check_case(stack, devidp, browser, logs, fault, on_outage)


@pytest.mark.parametrize("fault", STALE_ONLY, ids=lambda fault: fault.id)
async def test_stale_mode_rides_out_classic_outages(
    stack: StackFactory,
    devidp: DevIdp,
    browser: Browser,
    logs: LogCheck,
    fault: CentralAuthFault,
) -> None:
    await _session_check_case(stack, devidp, browser, logs, fault, "stale")


async def _session_check_case(
    stack: StackFactory,
    devidp: DevIdp,
    browser: Browser,
    logs: LogCheck,
    fault: CentralAuthFault,
    on_outage: str,
) -> None:
    # TTL 0: every request asks CentralAuth, so the faulty call is the very next one; the stale window
    # still holds the answer given at sign-in.
    centralauth = {"session_check_ttl": 0, "on_outage": on_outage, "stale_grace": 60}
    current = await stack(centralauth=centralauth)
    await signed_in(current.proxy, browser, EMAIL)
    cookie = browser.cookie(current.cookie_name)

    await fault.inject(devidp, current.relay, "userinfo")
    started = time.monotonic()
    status, body, set_cookies = await get(browser, f"{current.proxy.url}/during", **HTML)
    elapsed = time.monotonic() - started
    if fault.outage and on_outage == "fail-closed":
        assert status == 503, body
        assert "not answering" in body and "<html" in body.lower()
    else:
        assert status == 200, body
        assert identity_of(body) == EMAIL
    assert not set_cookies, "an outage must never touch the session cookie"
    assert elapsed < TIMEOUT + 1.5, f"the fault held the request for {elapsed:.1f} s"

    await fault.clear(devidp, current.relay)
    status, body, _ = await get(browser, f"{current.proxy.url}/after")
    assert status == 200 and identity_of(body) == EMAIL  # the same session, no new login
    assert browser.cookie(current.cookie_name) == cookie
    logs.assert_clean()


# At login the code exchange (verify) meets the same faults; no half-made session may result.
VERIFY_FAULTS = [
    fault
    for fault in CENTRALAUTH_FAULTS
    if fault.id
    in {"502-gateway-page", "200-not-json", "200-truncated-json", "10mb-body", "network-partition"}
] + [CentralAuthFault("answer-in-small-segments", relay="split", outage=False)]


@pytest.mark.parametrize("fault", VERIFY_FAULTS, ids=lambda fault: fault.id)
async def test_login_under_a_centralauth_fault(
    stack: StackFactory,
    devidp: DevIdp,
    browser: Browser,
    logs: LogCheck,
    fault: CentralAuthFault,
) -> None:
    current = await stack()
    async with browser.http.get(f"{current.proxy.url}/deep/link") as response:
        form = response.url
    async with browser.http.post(form, data={"email": EMAIL}, allow_redirects=False) as response:
        callback = URL(response.headers["Location"])

    await fault.inject(devidp, current.relay, "verify")
    status, body, _ = await get(browser, str(callback), **HTML)
    if fault.outage:
        assert status == 503, body
        assert "not answering" in body
        assert browser.cookie(current.cookie_name) is None
    else:
        assert status == 302
        assert browser.cookie(current.cookie_name)

    await fault.clear(devidp, current.relay)
    if fault.outage:  # the failed login left nothing behind; a fresh one goes through
        status, url, body = await browser.login(f"{current.proxy.url}/again", EMAIL)
        assert status == 200 and url.path == "/again"
    else:
        status, body, _ = await get(browser, f"{current.proxy.url}/again")
        assert status == 200
    assert identity_of(body) == EMAIL
    logs.assert_clean()


async def test_sign_out_against_a_silent_centralauth_is_bounded(
    stack: StackFactory, devidp: DevIdp, browser: Browser, logs: LogCheck
) -> None:
    """Logout meets a partition on both attempts: the local session still ends, within two timeouts."""
    current = await stack()
    await signed_in(current.proxy, browser, EMAIL)
    current.relay.mode = "blackhole"
    started = time.monotonic()
    status, body, _ = await get(
        browser, f"{current.proxy.url}/oauth2/sign_out", **{"Sec-Fetch-Site": "same-origin"}
    )
    assert status == 200 and "signed out here, but the central" in body.lower()
    assert time.monotonic() - started < 2 * TIMEOUT + 1.5
    current.relay.mode = "pass"
    status, _, _ = await get(browser, f"{current.proxy.url}/after", Accept="application/json")
    assert status == 401
    logs.assert_clean()


# --- the upstream ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamFault:
    id: str
    behaviour: Behaviour
    expected: int | str  # a status, or "truncated" when the headers are already out


UPSTREAM_FAULTS = [
    UpstreamFault("resets-before-answering", reset_at_once, 502),
    UpstreamFault("garbage-status-line", send_raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), 502),
    UpstreamFault("http-0.9-style-answer", send_raw(b"<html>hello</html>"), 502),
    UpstreamFault(
        "content-length-with-chunked",
        send_raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        502,
    ),
    UpstreamFault(
        "two-content-lengths",
        send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nok"),
        502,
    ),
    UpstreamFault(
        "nul-in-header", send_raw(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"), 502
    ),
    UpstreamFault("hangs-without-answering", hang, 504),
    # Headers already relayed: the client must see the cut (not a short body passed off as whole).
    UpstreamFault("resets-mid-body", reset_mid_body, "truncated"),
]


@pytest.mark.parametrize("fault", UPSTREAM_FAULTS, ids=lambda fault: fault.id)
async def test_upstream_fault(
    proxy_factory: ProxyFactory, browser: Browser, logs: LogCheck, fault: UpstreamFault
) -> None:
    upstream = await RawServer().start()
    try:
        proxy = await proxy_factory(upstreams=[{"url": upstream.url, "timeout": TIMEOUT}])
        status, _, body = await browser.login(f"{proxy.url}/", EMAIL)
        assert status == 200 and body == "raw upstream saw GET / HTTP/1.1"
        cookie = browser.cookie(proxy.app[LIVE].runtime.cookie.name)

        upstream.behaviour = fault.behaviour
        if fault.expected == "truncated":
            with pytest.raises(aiohttp.ClientPayloadError):
                async with browser.http.get(f"{proxy.url}/during") as response:
                    assert response.status == 200  # the headers were relayed before the reset
                    await response.read()
        else:
            status, body, set_cookies = await get(browser, f"{proxy.url}/during", **HTML)
            assert status == fault.expected, body
            assert "<html" in body.lower() and ("not answering" in body or "took too long" in body)
            assert not set_cookies

        upstream.behaviour = answer_ok
        status, body, _ = await get(browser, f"{proxy.url}/after")
        assert (status, body) == (200, "raw upstream saw GET /after HTTP/1.1")
        assert browser.cookie(proxy.app[LIVE].runtime.cookie.name) == cookie
    finally:
        await upstream.stop()
    logs.assert_clean()


async def test_unsolicited_upstream_answer_never_reaches_the_next_request(
    proxy_factory: ProxyFactory, logs: LogCheck
) -> None:
    """An upstream that sends two responses to one request must not shift every later answer by one
    (response-queue poisoning would hand one user's answer to another)."""
    upstream = await RawServer(behaviour=answer_twice).start()
    try:
        proxy = await proxy_factory(
            routes={"skip_auth": ["^/"]}, upstreams=[{"url": upstream.url, "timeout": TIMEOUT}]
        )
        async with aiohttp.ClientSession() as http:
            for index in range(6):
                async with http.get(f"{proxy.url}/r{index}") as response:
                    assert await response.text() == f"answer to /r{index}"
    finally:
        await upstream.stop()
    logs.assert_clean()


@pytest.mark.parametrize("interim", [b"100 Continue", b"103 Early Hints\r\nLink: </app.css>; rel=preload"])
async def test_interim_answers_from_the_upstream_are_not_the_answer(
    proxy_factory: ProxyFactory, logs: LogCheck, interim: bytes
) -> None:
    """1xx answers precede the real one (RFC 9110, section 15.2); taking one for the answer would
    desynchronize the connection."""
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    upstream = await RawServer(behaviour=send_raw(b"HTTP/1.1 " + interim + b"\r\n\r\n" + final)).start()
    try:
        proxy = await proxy_factory(
            routes={"skip_auth": ["^/"]}, upstreams=[{"url": upstream.url, "timeout": TIMEOUT}]
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(f"{proxy.url}/upload", data=b"body") as response:
                    assert response.status == 200 and await response.read() == b"final"
    finally:
        await upstream.stop()
    logs.assert_clean()


# --- Redis ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["blackhole", "reset", "refuse"])
async def test_redis_fault(
    proxy_factory: ProxyFactory,
    redis_server: RedisServer,
    browser: Browser,
    logs: LogCheck,
    mode: str,
) -> None:
    """Redis partitioned, resetting or refusing: a prompt 503 (not a hang), the session intact after."""
    relay = await ChaosRelay(redis_server.port).start()
    try:
        proxy = await proxy_factory(
            session={"store": "redis", "redis_url": f"redis://127.0.0.1:{relay.port}/0"}
        )
        await signed_in(proxy, browser, EMAIL)
        relay.mode = mode
        started = time.monotonic()
        status, body, set_cookies = await get(browser, f"{proxy.url}/during", **HTML)
        assert status == 503 and "session store is unavailable" in body
        assert not set_cookies
        assert time.monotonic() - started < 3  # the Redis client's 1 s socket timeouts, not a hang
        relay.mode = "pass"
        for _ in range(30):
            status, body, _ = await get(browser, f"{proxy.url}/after")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and identity_of(body) == EMAIL
    finally:
        await relay.stop()
    logs.assert_clean()
