"""An open websocket ends with its session: every way a session can end closes the socket (1008), each
within the time the README promises, against the JupyterLab-like kernel socket (tests/support/kernel.py).

- a sign-out on this proxy closes it at once, and with Redis a sign-out (or a revocation seen) on one
  replica closes it on every replica at once;
- a logout or block at CentralAuth, an `[authorization]` change by reload, and the session's expiry at
  CentralAuth are found by the re-check, within 1.25 times `session_check_ttl`;
- the proxy's own session expiry and `[websocket] max_lifetime` close it on time, anonymous sockets too;
- a CentralAuth outage closes nothing, and the re-check resumes when CentralAuth answers again;
- shutting down closes every socket with 1001 instead of holding the grace period.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp, ProxyFactory
from support.harness import BROWSER_UA, Browser, Proxy, start_proxy
from support.kernel import KernelState
from support.logins import signed_in
from support.redis_server import RedisServer, forget_shared_answers

from authproxy.app import reload
from authproxy.runtime import LIVE

EMAIL = "ada@example.com"
TTL = 1.0
# The re-check finds an end within 1.25 TTL; the rest is room for a loaded test machine.
WITHIN = 1.25 * TTL + 1.0
CHANNEL = "/api/kernels/k1/channels"


async def jupyter(proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], **overrides: Any) -> Proxy:
    """A proxy in front of the kernel, preserving Host as JupyterLab needs."""
    state, url = kernel
    settings: dict[str, Any] = {"upstreams": [{"url": url, "preserve_host": True}]}
    settings["centralauth"] = {"session_check_ttl": TTL, **overrides.pop("centralauth", {})}
    proxy = await proxy_factory(**settings, **overrides)
    state.expected_host = proxy.url.removeprefix("http://")
    return proxy


async def open_kernel(proxy: Proxy, browser: Browser, email: str = EMAIL) -> aiohttp.ClientWebSocketResponse:
    await signed_in(proxy, browser, email)
    return await kernel_socket(proxy, browser.http)


async def kernel_socket(proxy: Proxy, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    origin = proxy.config.server.public_url  # the page's origin: the one public URL of every replica
    ws = await http.ws_connect(proxy.url.replace("http://", "ws://") + CHANNEL, origin=origin)
    await alive(ws)
    return ws


async def alive(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str("execute:alive")
    assert await ws.receive_str(timeout=5) == "result:alive"


async def closed(ws: aiohttp.ClientWebSocketResponse, within: float) -> tuple[int | None, str, float]:
    """Wait for the proxy to close `ws`: its code, its reason, and the seconds it took."""
    started = time.monotonic()
    message = await ws.receive(timeout=within)
    assert message.type == WSMsgType.CLOSE, message
    await ws.close()
    seconds = time.monotonic() - started
    print(f"closed with {message.data} ({message.extra!r}) after {seconds:.2f} s")
    return message.data, message.extra or "", seconds


async def kernel_closed(state: KernelState, code: int) -> None:
    """The upstream leg was closed as well, with the same code."""
    await state.wait_for(lambda: len(state.closes) == 1)
    assert state.closes == [code]


async def empty_registry(proxy: Proxy) -> None:
    connections = proxy.app[LIVE].runtime.connections
    for _ in range(100):
        if len(connections) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(connections) == 0 and connections.sessions() == 0


# --- ended here ---------------------------------------------------------------------------------------------


async def test_sign_out_closes_the_socket_at_once(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    proxy = await jupyter(proxy_factory, kernel, centralauth={"session_check_ttl": 60})
    ws = await open_kernel(proxy, browser)
    sign_out = browser.http.get(
        f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
    )
    async with sign_out as response:
        assert response.status == 302
    code, reason, seconds = await closed(ws, within=2)
    assert (code, reason) == (1008, "signed out")
    assert seconds < 0.5
    await kernel_closed(kernel[0], 1008)
    await empty_registry(proxy)


# --- ended at CentralAuth, or by the config ----------------------------------------------------------------


async def test_a_logout_everywhere_at_centralauth_closes_it_within_the_ttl(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    proxy = await jupyter(proxy_factory, kernel)
    ws = await open_kernel(proxy, browser)
    await asyncio.sleep(1.5 * TTL)
    await alive(ws)  # re-checked a few times already, and still open
    await devidp.end_sessions(EMAIL)
    code, reason, seconds = await closed(ws, within=WITHIN + 2)
    assert (code, reason) == (1008, "session ended")
    assert seconds < WITHIN
    await kernel_closed(kernel[0], 1008)
    await empty_registry(proxy)
    # The session is over for plain requests too: the re-check recorded it.
    async with browser.http.get(
        f"{proxy.url}/api/status", headers={"Accept": "application/json"}
    ) as response:
        assert response.status == 401


async def test_a_block_at_centralauth_closes_it_within_the_ttl(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    proxy = await jupyter(proxy_factory, kernel)
    ws = await open_kernel(proxy, browser)
    await devidp.patch_user(EMAIL, blocked=True)
    code, reason, seconds = await closed(ws, within=WITHIN + 2)
    assert code == 1008 and reason in ("access denied", "session ended")
    assert seconds < WITHIN
    await kernel_closed(kernel[0], 1008)


async def test_an_authorization_change_by_reload_closes_it_within_the_ttl(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    proxy = await jupyter(proxy_factory, kernel)
    ws = await open_kernel(proxy, browser)
    second = Browser()
    try:
        other = await open_kernel(proxy, second, "grace@example.com")
        config = proxy.config
        rules = config.authorization.model_copy(update={"allowed_emails": ["grace@example.com"]})
        assert reload(proxy.app, config.model_copy(update={"authorization": rules})) == []
        code, reason, seconds = await closed(ws, within=WITHIN + 2)
        assert (code, reason) == (1008, "access denied")
        assert seconds < WITHIN
        await asyncio.sleep(TTL)
        await alive(other)  # still admitted: only the refused user's socket closed
        await other.close()
    finally:
        await second.close()


async def test_the_session_expiring_at_centralauth_closes_it_within_the_ttl(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    await devidp.patch_settings(maxSessionTime=60)
    proxy = await jupyter(proxy_factory, kernel)
    ws = await open_kernel(proxy, browser)
    await devidp.advance(61)  # the fake's clock: its session is now past maxSessionTime
    code, reason, seconds = await closed(ws, within=WITHIN + 2)
    assert (code, reason) == (1008, "session ended")
    assert seconds < WITHIN


async def test_the_proxy_session_expiring_closes_it_on_time(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    proxy = await jupyter(
        proxy_factory, kernel, centralauth={"session_check_ttl": 60}, session={"max_age": 2}
    )
    started = time.monotonic()
    ws = await open_kernel(proxy, browser)
    code, reason, _ = await closed(ws, within=5)
    assert (code, reason) == (1008, "session expired")
    assert 1.5 < time.monotonic() - started < 3.5


@pytest.mark.parametrize("anonymous", [False, True])
async def test_max_lifetime_closes_it_whatever_its_session(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, anonymous: bool
) -> None:
    routes = {"skip_auth": ["^/api/"]} if anonymous else {}
    proxy = await jupyter(
        proxy_factory,
        kernel,
        centralauth={"session_check_ttl": 60},
        websocket={"max_lifetime": 1},
        routes=routes,
    )
    if anonymous:
        ws = await kernel_socket(proxy, browser.http)
    else:
        ws = await open_kernel(proxy, browser)
    code, reason, seconds = await closed(ws, within=4)
    assert (code, reason) == (1008, "maximum lifetime reached")
    assert 0.7 < seconds < 2
    await kernel_closed(kernel[0], 1008)


# --- outages -----------------------------------------------------------------------------------------------


async def test_an_outage_closes_nothing_and_the_check_resumes_after_it(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    proxy = await jupyter(proxy_factory, kernel)
    ws = await open_kernel(proxy, browser)
    await devidp.fault("userinfo", status=503, count=100)
    await asyncio.sleep(3 * TTL)
    # A plain request now gets the fail-closed 503; the open socket stays (an outage is never a logout).
    async with browser.http.get(
        f"{proxy.url}/api/status", headers={"Accept": "application/json"}
    ) as response:
        assert response.status == 503
    await alive(ws)
    assert (await devidp.stats())["userinfo"] >= 3  # it kept asking
    await devidp.call("DELETE", "/_devidp/faults")
    await devidp.end_sessions(EMAIL)
    # Checks during the outage came a whole TTL apart: allow one more.
    code, reason, _ = await closed(ws, within=2 * TTL + 2)
    assert (code, reason) == (1008, "session ended")


# --- Redis: every replica -----------------------------------------------------------------------------------


async def replicas(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], redis_server: RedisServer
) -> tuple[Proxy, Proxy]:
    settings: dict[str, Any] = {
        "session": {"store": "redis", "redis_url": redis_server.url},
        "centralauth": {"session_check_ttl": 60},
    }
    first = await jupyter(proxy_factory, kernel, **settings)
    second = await jupyter(proxy_factory, kernel, **settings, server={"public_url": first.url})
    # Two replicas, two ports, one public URL: JupyterLab would need a front proxy's one Host here.
    kernel[0].expected_host = None
    kernel[0].check_origin = False
    return first, second


async def test_sign_out_on_one_replica_closes_the_socket_on_another_at_once(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], redis_server: RedisServer, browser: Browser
) -> None:
    first, second = await replicas(proxy_factory, kernel, redis_server)
    await signed_in(first, browser, EMAIL)
    ws = await kernel_socket(second, browser.http)
    async with browser.http.post(
        f"{first.url}/oauth2/sign_out", headers={"Origin": first.url}, allow_redirects=False
    ) as response:
        assert response.status == 302
    code, reason, seconds = await closed(ws, within=3)
    assert code == 1008 and reason in ("signed out", "session ended")
    assert seconds < 1
    await empty_registry(second)


async def test_a_revocation_seen_by_one_replica_closes_sockets_on_another_at_once(
    proxy_factory: ProxyFactory,
    kernel: tuple[KernelState, str],
    redis_server: RedisServer,
    browser: Browser,
    devidp: DevIdp,
) -> None:
    first, second = await replicas(proxy_factory, kernel, redis_server)
    session = await signed_in(first, browser, EMAIL)
    ws = await kernel_socket(second, browser.http)
    await devidp.end_sessions(EMAIL)
    # The first replica asks CentralAuth afresh (its cached answer dropped), learns the session is over,
    # records the token dead and tells every replica.
    first.app[LIVE].runtime.checker.evict(session.token)
    await forget_shared_answers(redis_server.url)
    started = time.monotonic()
    async with aiohttp.ClientSession(cookie_jar=browser.jar, headers={"User-Agent": BROWSER_UA}) as http:
        async with http.get(f"{first.url}/api/status", headers={"Accept": "application/json"}) as response:
            assert response.status == 401
    code, _, _ = await closed(ws, within=3)
    assert code == 1008
    assert time.monotonic() - started < 1.5


# --- shutdown -----------------------------------------------------------------------------------------------


async def test_shutdown_closes_open_sockets_with_1001(
    devidp: DevIdp, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    _, url = kernel
    # Started here rather than by proxy_factory, which would stop it a second time.
    proxy = await start_proxy(
        idp_url=devidp.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        upstream_url=url,
        overrides={"upstreams": [{"url": url, "preserve_host": True}]},
    )
    ws = await open_kernel(proxy, browser)
    started = time.monotonic()
    stopping = asyncio.ensure_future(proxy.stop())
    code, _, _ = await closed(ws, within=5)
    await stopping
    assert code == 1001
    assert time.monotonic() - started < 5  # not the grace period (60 s here)
