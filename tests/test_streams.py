"""Long-lived `text/event-stream` answers end with their session, as websockets do.

The answer is forwarded as any other, and found to be an event stream when it is prepared: from then on
its session is re-checked on `session_check_ttl`, and when it ends (at CentralAuth, or signed out here)
the client's connection is cut and the upstream's released, even while the upstream is silent between
events. Streams that keep a valid session, anonymous ones, and ordinary answers are left alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from conftest import DevIdp, ProxyFactory
from support.harness import Browser, Proxy
from support.kernel import KernelState
from support.logins import signed_in

from authproxy.runtime import LIVE

EMAIL = "ada@example.com"
TTL = 1.0
WITHIN = 1.25 * TTL + 1.0
EVENTS = {"Accept": "text/event-stream"}


async def streaming_proxy(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], ttl: float = TTL, **overrides: Any
) -> Proxy:
    _, url = kernel
    return await proxy_factory(upstreams=[{"url": url}], centralauth={"session_check_ttl": ttl}, **overrides)


async def first_event(response: aiohttp.ClientResponse) -> bytes:
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    return await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)


async def until_cut(response: aiohttp.ClientResponse, within: float) -> float:
    """Read the stream until it stops; the seconds that took. A cut is never a complete body."""
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with asyncio.timeout(within):
            while await response.content.readany():
                pass
    return time.monotonic() - started


async def test_a_logout_at_centralauth_cuts_the_stream_within_the_ttl(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    state, _ = kernel
    proxy = await streaming_proxy(proxy_factory, kernel)
    await signed_in(proxy, browser)
    connections = proxy.app[LIVE].runtime.connections
    async with browser.http.get(f"{proxy.url}/events", headers=EVENTS) as response:
        assert (await first_event(response)).startswith(b"data: tick")
        assert connections.count("stream") == 1
        await asyncio.sleep(1.5 * TTL)  # re-checked already, and still streaming
        assert (await response.content.readuntil(b"\n\n")).startswith(b"data: tick")
        await devidp.end_sessions(EMAIL)
        seconds = await until_cut(response, WITHIN + 2)
    assert seconds < WITHIN
    await state.wait_for(lambda: state.streams_left == 1)  # the upstream's side was released too
    assert len(connections) == 0 and connections.sessions() == 0


async def test_sign_out_cuts_an_idle_stream_at_once(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser
) -> None:
    """Between two events the proxy waits on the upstream, not on the client: the cut must not wait for
    the next event (or the upstream's timeout)."""
    state, _ = kernel
    proxy = await streaming_proxy(proxy_factory, kernel, ttl=60)
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/events?quiet=1", headers=EVENTS) as response:
        await first_event(response)
        started = time.monotonic()
        async with browser.http.get(
            f"{proxy.url}/oauth2/sign_out", headers={"Sec-Fetch-Site": "same-origin"}, allow_redirects=False
        ) as signed_out:
            assert signed_out.status == 302
        await until_cut(response, 3)
    assert time.monotonic() - started < 1  # the sign-out's own round trips included
    await state.wait_for(lambda: state.streams_left == 1)
    assert len(proxy.app[LIVE].runtime.connections) == 0


async def test_streams_of_valid_sessions_and_anonymous_ones_go_on(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    proxy = await streaming_proxy(proxy_factory, kernel, ttl=0.3, routes={"skip_auth": ["^/public/"]})
    await signed_in(proxy, browser)
    connections = proxy.app[LIVE].runtime.connections
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{proxy.url}/public/events", headers=EVENTS) as response:
            await first_event(response)
            assert len(connections) == 0  # nothing to re-check, nothing to sign out
            await devidp.end_sessions(EMAIL)
            await asyncio.sleep(1)
            assert (await response.content.readuntil(b"\n\n")).startswith(b"data: tick")
    # A signed-in stream whose session holds is re-checked many times and never cut.
    status, _, _ = await browser.login(f"{proxy.url}/", "grace@example.com")
    assert status == 200
    async with browser.http.get(f"{proxy.url}/events", headers=EVENTS) as response:
        await first_event(response)
        deadline = time.monotonic() + 2
        ticks = 0
        while time.monotonic() < deadline:
            await asyncio.wait_for(response.content.readuntil(b"\n\n"), 2)
            ticks += 1
        assert ticks > 10
        assert connections.count("stream") == 1
    # Ordinary answers are never registered.
    async with browser.http.get(f"{proxy.url}/api/status") as response:
        assert response.status == 200
    for _ in range(50):
        if len(connections) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(connections) == 0


async def test_an_outage_does_not_cut_a_stream(
    proxy_factory: ProxyFactory, kernel: tuple[KernelState, str], browser: Browser, devidp: DevIdp
) -> None:
    proxy = await streaming_proxy(proxy_factory, kernel, ttl=0.5)
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/events", headers=EVENTS) as response:
        await first_event(response)
        await devidp.fault("userinfo", status=503, count=100)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await asyncio.wait_for(response.content.readuntil(b"\n\n"), 2)
    assert (await devidp.stats())["userinfo"] >= 3
    await devidp.call("DELETE", "/_devidp/faults")
