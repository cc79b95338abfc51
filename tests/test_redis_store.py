"""Sessions in Redis, shared by two proxy replicas: login, sign-out and revocation reach every replica;
a Redis outage is a 503 that keeps the session, and service resumes when Redis returns. Dead tokens are
recorded in Redis, so a replica refuses them without asking CentralAuth, and fall back on each replica's
own memory while Redis is away."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, TCPConnector
from conftest import DevIdp, ProxyFactory
from support.harness import BROWSER_UA, Browser, Proxy
from support.logins import SignedIn, signed_in
from support.redis_server import RedisServer, forget_shared_answers

from authproxy.errors import SessionRejected
from authproxy.provider.checker import SessionKnownDead
from authproxy.runtime import LIVE
from authproxy.session import redis as redis_module
from authproxy.session.redis import DEAD_PREFIX, KEY_PREFIX

API = {"Accept": "application/json", "User-Agent": BROWSER_UA}


@pytest.fixture
async def replicas(proxy_factory: ProxyFactory, redis_server: RedisServer) -> tuple[Proxy, Proxy]:
    settings = {
        "session": {"store": "redis", "redis_url": redis_server.url},
        "centralauth": {"session_check_ttl": 60},
    }
    first = await proxy_factory(**settings)
    # Replicas behind one load balancer share the public URL (and so CentralAuth's domain).
    return first, await proxy_factory(**settings, server={"public_url": first.url})


async def sign_out(proxy: Proxy, session: SignedIn) -> None:
    """The sign-out form posted to `proxy` with the session's cookie, from the proxy's own origin."""
    async with ClientSession(headers={"User-Agent": BROWSER_UA}) as http:
        async with http.post(
            f"{proxy.url}/oauth2/sign_out",
            headers={"Cookie": session.header, "Origin": proxy.url},
            allow_redirects=False,
        ) as response:
            assert response.status == 302


async def status_with(proxy: Proxy, cookie_name: str, value: str) -> int:
    async with ClientSession(headers=API) as http:
        async with http.get(f"{proxy.url}/x", headers={"Cookie": f"{cookie_name}={value}"}) as response:
            return response.status


@pytest.fixture
async def ada(replicas: tuple[Proxy, Proxy]) -> SignedIn:
    """Ada's session, made on the first replica."""
    return await signed_in(replicas[0])


async def test_a_login_on_one_replica_is_valid_on_the_other(
    replicas: tuple[Proxy, Proxy], ada: SignedIn
) -> None:
    first, second = replicas
    name, value = ada.name, ada.value
    assert await status_with(first, name, value) == 200
    assert await status_with(second, name, value) == 200


async def test_the_cookie_holds_no_token_and_redis_holds_no_plaintext(
    replicas: tuple[Proxy, Proxy], ada: SignedIn, redis_server: RedisServer
) -> None:
    first, _ = replicas
    value = ada.value
    session = await first.app[LIVE].runtime.store.load(value)
    assert session is not None
    assert len(value) < 150  # an id and a key, sealed; not a token
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = await client.keys(KEY_PREFIX + "*")
        assert len(keys) == 1
        record = await client.get(keys[0])
        ttl = await client.ttl(keys[0])
    finally:
        await client.aclose()
    assert isinstance(record, bytes)
    assert session.access_token.encode() not in record and b"ada@example.com" not in record
    assert 0 < ttl <= 86400


async def test_sign_out_on_one_replica_kills_the_session_on_the_other(
    replicas: tuple[Proxy, Proxy], ada: SignedIn
) -> None:
    first, second = replicas
    name, value = ada.name, ada.value
    assert await status_with(second, name, value) == 200  # cached on the second replica
    await sign_out(first, ada)
    assert await status_with(second, name, value) == 401  # a copied cookie is dead everywhere at once
    assert await status_with(first, name, value) == 401


async def test_revocation_seen_by_one_replica_drops_the_cache_of_the_other(
    replicas: tuple[Proxy, Proxy], ada: SignedIn, devidp: DevIdp, redis_server: RedisServer
) -> None:
    first, second = replicas
    name, value = ada.name, ada.value
    assert await status_with(second, name, value) == 200
    second_checker = second.app[LIVE].runtime.checker
    assert len(second_checker) == 1
    await devidp.end_sessions("ada@example.com")
    session = await first.app[LIVE].runtime.store.load(value)
    assert session is not None
    # As when the answers' TTL has run out, on the first replica and in the cache the replicas share:
    first.app[LIVE].runtime.checker.evict(session.access_token)
    await forget_shared_answers(redis_server.url)
    assert await status_with(first, name, value) == 401  # the first replica learns it from CentralAuth
    for _ in range(50):
        if len(second_checker) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(second_checker) == 0, "the broadcast did not reach the other replica within a second"


async def test_redis_outage_is_a_503_and_service_resumes_without_relogin(
    replicas: tuple[Proxy, Proxy], ada: SignedIn, redis_server: RedisServer
) -> None:
    first, second = replicas
    name, value = ada.name, ada.value
    redis_server.stop()
    assert await status_with(first, name, value) == 503
    async with ClientSession() as http:
        async with http.get(
            f"{first.url}/x", headers={"Cookie": f"{name}={value}", "Accept": "text/html"}
        ) as response:
            assert response.status == 503
            assert "session store is unavailable" in await response.text()
        async with http.get(f"{first.url}/ready") as response:
            assert response.status == 503
            assert "redis: unreachable" in await response.text()
    redis_server.start()
    for proxy in (first, second):
        for _ in range(50):
            if await status_with(proxy, name, value) == 200:
                break
            await asyncio.sleep(0.1)
        assert await status_with(proxy, name, value) == 200
    async with ClientSession() as http, http.get(f"{first.url}/ready") as response:
        assert response.status == 200


async def test_outage_during_login_leaves_no_session(
    replicas: tuple[Proxy, Proxy], redis_server: RedisServer
) -> None:
    first, _ = replicas
    browser = Browser()
    try:
        async with browser.http.get(f"{first.url}/") as response:
            form = response.url
        redis_server.stop()
        async with browser.http.post(form, data={"email": "ada@example.com"}) as response:
            assert response.status == 503
        assert browser.cookie(first.app[LIVE].runtime.cookie.name) is None
    finally:
        await browser.close()


# --- dead tokens shared through Redis ------------------------------------------------------------------


async def userinfo_calls(devidp: DevIdp) -> int:
    return (await devidp.stats())["userinfo"]


async def token_of(proxy: Proxy, value: str) -> tuple[str, float]:
    session = await proxy.app[LIVE].runtime.store.load(value)
    assert session is not None
    return session.access_token, session.expires_at


async def test_a_token_rejected_on_one_replica_is_refused_by_the_others_without_a_call(
    replicas: tuple[Proxy, Proxy],
    ada: SignedIn,
    devidp: DevIdp,
    proxy_factory: ProxyFactory,
    redis_server: RedisServer,
) -> None:
    first, second = replicas
    name, value = ada.name, ada.value
    token, expires_at = await token_of(first, value)
    digest = hashlib.sha256(token.encode()).digest()
    assert await status_with(second, name, value) == 200  # cached on the second replica
    await devidp.end_sessions("ada@example.com")
    first.app[LIVE].runtime.checker.evict(token)  # as when the answers' TTL has run out
    await forget_shared_answers(redis_server.url)
    before = await userinfo_calls(devidp)
    assert await status_with(first, name, value) == 401  # the first replica learns it from CentralAuth
    assert await userinfo_calls(devidp) - before == 1
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        remaining = await client.ttl(DEAD_PREFIX + digest.hex())
    finally:
        await client.aclose()
    assert 0 < remaining <= expires_at - time.time() + 1  # for the rest of the session's life, no longer
    # The listening replica was told at once; one started afterwards finds the record in Redis.
    for _ in range(50):
        if second.app[LIVE].runtime.checker.dead.holds(digest):
            break
        await asyncio.sleep(0.02)
    assert second.app[LIVE].runtime.checker.dead.holds(digest)
    assert await status_with(second, name, value) == 401
    third = await proxy_factory(
        session={"store": "redis", "redis_url": redis_server.url}, server={"public_url": first.url}
    )
    for agent in (BROWSER_UA, "another agent"):
        with pytest.raises(SessionKnownDead):
            await third.app[LIVE].runtime.checker.check(token, "127.0.0.1", agent)
    assert await userinfo_calls(devidp) - before == 1


async def test_a_sign_out_on_one_replica_costs_the_others_no_call(
    replicas: tuple[Proxy, Proxy], ada: SignedIn, devidp: DevIdp
) -> None:
    first, second = replicas
    name, value = ada.name, ada.value
    token = ada.token
    await sign_out(first, ada)
    before = await userinfo_calls(devidp)
    for agent in [f"agent {i}" for i in range(20)]:
        with pytest.raises(SessionKnownDead):
            await second.app[LIVE].runtime.checker.check(token, "127.0.0.1", agent)
    assert await status_with(second, name, value) == 401
    assert await userinfo_calls(devidp) - before == 0


async def test_with_redis_stopped_the_local_memory_still_answers(
    replicas: tuple[Proxy, Proxy], ada: SignedIn, devidp: DevIdp, redis_server: RedisServer
) -> None:
    first, _ = replicas
    checker = first.app[LIVE].runtime.checker
    name, value = ada.name, ada.value
    dead_token = ada.token
    live: dict[str, str] = {}
    for email in ("bob@example.com", "carol@example.com"):
        live[email] = (await signed_in(first, email=email)).token
    await devidp.end_sessions("ada@example.com")
    checker.evict(dead_token)
    await forget_shared_answers(redis_server.url)
    assert await status_with(first, name, value) == 401
    before = await userinfo_calls(devidp)

    redis_server.stop()
    assert await status_with(first, name, value) == 503  # the session store is away: a 503, never a 500
    with pytest.raises(SessionKnownDead):
        await checker.check(dead_token, "127.0.0.1", "yet another agent")
    assert await userinfo_calls(devidp) - before == 0
    # A live session is still checked with CentralAuth, not refused for want of the shared memory.
    bob = live["bob@example.com"]
    checker.evict(bob)
    assert (await checker.check(bob, "127.0.0.1", BROWSER_UA)).user.email == "bob@example.com"
    # Deaths seen meanwhile are remembered locally, whether signed out or refused by CentralAuth.
    await checker.revoke(bob, 60.0)
    with pytest.raises(SessionKnownDead):
        await checker.check(bob, "127.0.0.1", BROWSER_UA)
    carol = live["carol@example.com"]
    await devidp.end_sessions("carol@example.com")
    checker.evict(carol)
    with pytest.raises(SessionRejected):
        await checker.check(carol, "127.0.0.1", BROWSER_UA)
    with pytest.raises(SessionKnownDead):
        await checker.check(carol, "127.0.0.1", "a thief's agent")
    assert await userinfo_calls(devidp) - before == 2


async def test_connections_to_redis_are_bounded_and_a_stall_is_waited_out(
    proxy_factory: ProxyFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 requests in flight while Redis stalls (CLIENT PAUSE) open no more connections than the bound
    (lowered to 16 here, MAX_CONNECTIONS in production); the requests over it wait for a connection and
    are served once Redis resumes."""
    monkeypatch.setattr(redis_module, "MAX_CONNECTIONS", 16)
    proxy = await proxy_factory(session={"store": "redis", "redis_url": redis_server.url})
    ada = await signed_in(proxy)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        baseline = (await client.info("clients"))["connected_clients"]
        async with ClientSession(headers=API, connector=TCPConnector(limit=0)) as http:

            async def get() -> int:
                async with http.get(f"{proxy.url}/x", headers={"Cookie": ada.header}) as response:
                    await response.read()
                    return response.status

            await client.execute_command("CLIENT", "PAUSE", "500", "ALL")  # type: ignore[no-untyped-call]
            requests = [asyncio.ensure_future(get()) for _ in range(100)]
            await asyncio.sleep(0.4)  # every request has reached the proxy and asked for a connection
            during = (await client.info("clients"))["connected_clients"]  # answered when the pause ends
            statuses = await asyncio.gather(*requests)
    finally:
        await client.aclose()
    assert during - baseline <= 16
    assert statuses == [200] * 100
