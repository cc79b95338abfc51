"""One session check per key across workers and replicas, and what happens when the sharing fails.

- Workers: `authproxy serve` with two workers; bursts of 30 concurrent requests for a fresh key, on
  connections of their own so that both workers take some, each cost exactly one userinfo call, and the
  other worker's requests are counted as answers `shared` through the broker.
- The broker itself, on a real Unix socket, against the attacks and failures of its peers: a holder that
  dies or stalls, a peer that sends garbage or too much, a broker that never answers or is not there.
  Every one of them ends in a per-worker check, never an error.
- Replicas: three in-process proxies sharing one real redis-server make one call per key per TTL under
  steady load; answers in Redis are sealed with a key derived from the token, so neither a Redis dump
  nor a write to Redis gives or forges an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, TCPConnector
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp, ReplicaFactory
from support.harness import BROWSER_UA, Browser, Proxy, free_port
from support.logins import signed_in
from support.redis_server import RedisServer
from support.served import ServedProxy

from authproxy.core.user import User
from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.provider.broker import BrokerClient, BrokerServer
from authproxy.provider.checker import ChainedChecks, Key, SessionChecker, SessionKnownDead, agent_digest
from authproxy.runtime import LIVE
from authproxy.session.redis_checks import ANSWER_PREFIX, RedisChecks

ADA = User("u-ada", "ada@example.com", True, False, "org", None)


# -- workers: the broker in a served process ---------------------------------------------------------


@pytest.fixture
async def two_workers(
    devidp: DevIdp, echo_url: str, tmp_path: Path
) -> AsyncIterator[tuple[ServedProxy, int]]:
    metrics_port = free_port()
    served = ServedProxy(
        tmp_path,
        idp_url=devidp.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        upstream_url=echo_url,
    )
    served.configure(
        server={"workers": 2, "metrics_listen": f"127.0.0.1:{metrics_port}"},
        centralauth={"session_check_ttl": 60},
        logging={"format": "json", "access_log": False},
    )
    await served.start()
    for _ in range(100):
        if len(served.children()) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(served.children()) == 2
    try:
        yield served, metrics_port
    finally:
        await served.stop()
    assert await served.group_gone()


async def shared_answers(metrics_port: int) -> float:
    """authproxy_session_checks_total{source="shared"}, summed over the workers by the supervisor."""
    async with ClientSession() as http, http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    found = re.search(r'^authproxy_session_checks_total\{source="shared"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def login_without_landing(url: str) -> str:
    """A fresh session whose key no worker has checked yet: the login stops at the callback's redirect."""
    browser = Browser()
    try:
        async with browser.http.get(f"{url}/oauth2/start?rd=/landing") as response:
            form = response.url
        async with browser.http.post(
            form, data={"email": "ada@example.com"}, allow_redirects=False
        ) as response:
            callback = response.headers["Location"]
        async with browser.http.get(callback, allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/landing"
        value = browser.cookie("_authproxy")
        assert value
        return f"_authproxy={value}"
    finally:
        await browser.close()


async def test_a_burst_over_two_workers_costs_one_call_ten_times_out_of_ten(
    two_workers: tuple[ServedProxy, int], devidp: DevIdp
) -> None:
    served, metrics_port = two_workers
    calls = []
    for _burst in range(10):
        cookie = await login_without_landing(served.url)
        # The call takes 0.3 s, so all 30 requests of the burst miss while it is in flight.
        await devidp.fault("userinfo", delay=0.3, count=1)
        before = (await devidp.stats())["userinfo"]
        headers = {"Cookie": cookie, "User-Agent": BROWSER_UA, "Accept": "application/json"}
        # A connection per request: the kernel hands the 30 connections to both workers.
        async with ClientSession(connector=TCPConnector(force_close=True, limit=0), headers=headers) as http:

            async def get(http: ClientSession = http) -> int:
                async with http.get(f"{served.url}/x") as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(get() for _ in range(30)))
        assert statuses == [200] * 30
        calls.append((await devidp.stats())["userinfo"] - before)
    assert calls == [1] * 10
    # The other worker's first request of each burst it took was answered through the broker.
    for _ in range(30):
        shared = await shared_answers(metrics_port)
        if shared >= 1:
            break
        await asyncio.sleep(0.1)
    assert shared >= 1, "no burst reached the second worker's cache through the broker"
    async with ClientSession() as http, http.get(f"{served.url}/ready") as response:
        assert response.status == 200 and "check-broker: ok" in await response.text()


# -- the broker, on a real Unix socket ------------------------------------------------------------------


@pytest.fixture
async def broker_path(tmp_path: Path) -> AsyncIterator[str]:
    path = str(tmp_path / "checks.sock")
    ready = asyncio.Event()
    task = asyncio.ensure_future(BrokerServer(max_entries=100, lease=1.0).serve(path, ready.set))
    await asyncio.wait_for(ready.wait(), 5)
    yield path
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


KEY: Key = (hashlib.sha256(b"token").digest(), "203.0.113.7", b"\x01" * 16)


def client(path: str, dead: list[bytes] | None = None, wait: float = 2.0) -> BrokerClient:
    return BrokerClient(path, wait=wait, keep=60.0, on_dead=(dead if dead is not None else []).append)


def counting(
    user: User = ADA, delay: float = 0.2, error: Exception | None = None
) -> tuple[list[int], Callable[[], Awaitable[tuple[User, float]]]]:
    made: list[int] = []

    async def call() -> tuple[User, float]:
        made.append(1)
        await asyncio.sleep(delay)
        if error is not None:
            raise error
        return user, 0.0

    return made, call


async def test_concurrent_misses_in_many_workers_make_one_call(broker_path: str) -> None:
    workers = [client(broker_path) for _ in range(4)]
    made, call = counting()
    try:
        answers = await asyncio.gather(*(w.answer(KEY, "token", 60, call) for w in workers for _ in range(3)))
    finally:
        for w in workers:
            await w.close()
    assert len(made) <= 4  # a worker's own concurrent misses are coalesced by its checker, not here
    assert {user for user, _ in answers} == {ADA}
    # After the first answer, a fresh question is answered by the broker with its age.
    late = client(broker_path)
    try:
        before = len(made)
        user, age = await late.answer(KEY, "token", 60, call)
        assert (user, len(made)) == (ADA, before) and 0 <= age < 5
        # A route with a shorter TTL than the answer's age asks again.
        await asyncio.sleep(0.05)
        await late.answer(KEY, "token", 0.01, call)
        assert len(made) == before + 1
    finally:
        await late.close()


async def test_one_holder_and_waiters_in_other_workers(broker_path: str) -> None:
    holder, waiter = client(broker_path), client(broker_path)
    made, call = counting(delay=0.3)
    try:
        first = asyncio.ensure_future(holder.answer(KEY, "token", 60, call))
        await asyncio.sleep(0.05)
        second = await waiter.answer(KEY, "token", 60, call)
        assert await first == (ADA, 0.0)
        assert second[0] == ADA and len(made) == 1
    finally:
        await holder.close()
        await waiter.close()


async def test_a_refusal_ends_the_token_for_the_waiters_and_is_told_to_every_worker(broker_path: str) -> None:
    told: list[bytes] = []
    holder, waiter, bystander = client(broker_path), client(broker_path), client(broker_path, told)
    _, refused = counting(delay=0.3, error=SessionRejected("sessionExpired"))
    try:
        await bystander.answer(KEY, "token", 60, counting()[1])  # connected, and holding an answer
        other_key = (KEY[0], "198.51.100.1", KEY[2])
        first = asyncio.ensure_future(holder.answer(other_key, "token", 60, refused))
        await asyncio.sleep(0.05)
        with pytest.raises(SessionKnownDead):
            await waiter.answer(other_key, "token", 60, refused)
        with pytest.raises(SessionRejected):
            await first
        # The checker tells its dead tokens (SharedDeadTokens.record_dead); the broker tells the others
        # and answers "dead" from then on, under every key of the token.
        await holder.record_dead(KEY[0], 30)
        for _ in range(50):
            if told:
                break
            await asyncio.sleep(0.01)
        assert told == [KEY[0]]
        with pytest.raises(SessionKnownDead) as dead:
            await waiter.answer(KEY, "token", 60, counting()[1])
        assert dead.value.lifetime is not None and 29 < dead.value.lifetime <= 30
    finally:
        for w in (holder, waiter, bystander):
            await w.close()


async def test_a_refusal_about_the_client_is_not_a_dead_token(broker_path: str) -> None:
    holder, waiter = client(broker_path), client(broker_path)
    _, refused = counting(delay=0.3, error=SessionRejected("clientInvalid"))
    try:
        first = asyncio.ensure_future(holder.answer(KEY, "token", 60, refused))
        await asyncio.sleep(0.05)
        with pytest.raises(SessionRejected) as caught:
            await waiter.answer(KEY, "token", 60, refused)
        assert not isinstance(caught.value, SessionKnownDead) and caught.value.error_code == "clientInvalid"
        with pytest.raises(SessionRejected):
            await first
    finally:
        await holder.close()
        await waiter.close()


async def test_an_outage_at_the_holder_sends_each_waiter_to_make_its_own_call(broker_path: str) -> None:
    holder, waiter = client(broker_path), client(broker_path)
    made, failing = counting(delay=0.2, error=CentralAuthUnavailable("down"))
    try:
        first = asyncio.ensure_future(holder.answer(KEY, "token", 60, failing))
        await asyncio.sleep(0.05)
        with pytest.raises(CentralAuthUnavailable):
            await waiter.answer(KEY, "token", 60, failing)
        with pytest.raises(CentralAuthUnavailable):
            await first
        assert len(made) == 2
    finally:
        await holder.close()
        await waiter.close()


async def test_a_holder_that_dies_or_stalls_loses_its_lease(broker_path: str) -> None:
    holder, waiter = client(broker_path), client(broker_path)
    made, call = counting(delay=0.0)

    async def forever() -> tuple[User, float]:
        await asyncio.Event().wait()
        raise AssertionError

    try:
        stalled = asyncio.ensure_future(holder.answer(KEY, "token", 60, forever))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert (await waiter.answer(KEY, "token", 60, call))[0] == ADA
        assert 0.8 < time.monotonic() - started < 2.0  # the broker's lease (1 s), not the client's wait
        assert len(made) == 1
        stalled.cancel()
        # A holder whose process goes away: its waiters are released at once.
        second_key = (KEY[0], "192.0.2.9", KEY[2])
        dying = client(broker_path)
        stuck = asyncio.ensure_future(dying.answer(second_key, "token", 60, forever))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(waiter.answer(second_key, "token", 60, call))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await dying.close()
        stuck.cancel()
        assert (await waiting)[0] == ADA
        assert time.monotonic() - started < 0.5
    finally:
        await holder.close()
        await waiter.close()


async def test_a_hostile_peer_is_dropped_and_harms_no_one(broker_path: str) -> None:
    good = client(broker_path)
    _made, call = counting(delay=0.0)
    try:
        await good.answer(KEY, "token", 60, call)
        for garbage in (
            b"not json\n",
            b'{"op": "put", "key": ["a", "b", "c"], "user": {"id": 1}, "age": 0, "keep": 9}\n',
            b'{"op": "ask", "id": "x", "key": 5, "fresh": 1}\n',
            b"x" * 70_000 + b"\n",  # past the message bound
        ):
            reader, writer = await asyncio.open_unix_connection(broker_path)
            writer.write(garbage)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped
            writer.close()
        # A forged answer for a key sent by a peer that holds no lease changes nothing.
        reader, writer = await asyncio.open_unix_connection(broker_path)
        forged = User("u-eve", "eve@example.com", True, False, "org", None).to_dict()
        put = {"op": "put", "key": [KEY[0].hex(), KEY[1], KEY[2].hex()], "user": forged, "age": 0, "keep": 60}
        writer.write(json.dumps(put).encode() + b"\n")
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.05)
        assert (await good.answer(KEY, "token", 60, call))[0] == ADA
    finally:
        await good.close()


async def test_a_peer_that_stops_reading_is_dropped_not_buffered_for(broker_path: str) -> None:
    """A worker that stops reading its line must not make the broker hold an ever-growing backlog for
    it: once MAX_BACKLOG waits to be sent, the broker drops it; the others carry on."""
    reader, writer = await asyncio.open_unix_connection(broker_path)  # connected, never reading
    good = client(broker_path)
    _, call = counting(delay=0.0)
    try:
        await good.answer(KEY, "token", 60, call)  # the good worker is connected
        for number in range(60_000):  # ~6 MB of broadcasts to the silent peer
            await good.record_dead(hashlib.sha256(str(number).encode()).digest(), 60)
        received = 0
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            received += len(chunk)
        assert received < 6_000_000  # the connection ended before everything was sent
        fresh = (hashlib.sha256(b"other").digest(), KEY[1], KEY[2])
        assert (await good.answer(fresh, "other", 60, call))[0] == ADA
    finally:
        writer.close()
        await good.close()


async def test_no_broker_or_a_mute_one_means_checking_alone(tmp_path: Path) -> None:
    made, call = counting(delay=0.0)
    missing = client(str(tmp_path / "nothing.sock"))
    assert await missing.answer(KEY, "token", 60, call) == (ADA, 0.0)
    assert len(made) == 1
    # A broker that accepts and never answers: the question times out and the worker asks itself.
    path = str(tmp_path / "mute.sock")
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_unix_server(mute, path)
    quiet = client(path, wait=0.3)
    try:
        started = time.monotonic()
        assert await quiet.answer(KEY, "token", 60, call) == (ADA, 0.0)
        assert time.monotonic() - started < 3
        assert len(made) == 2
    finally:
        await quiet.close()
        server.close()
        for writer in held:
            writer.close()


async def test_a_checker_over_the_broker_stores_the_answer_with_its_age(broker_path: str) -> None:
    """The TTL runs from the CentralAuth call: an answer 0.3 s old at a 0.5 s TTL is fresh 0.2 s more."""
    first, second = client(broker_path), client(broker_path)
    calls: list[str] = []

    async def fetch(token: str, ip: str, agent: str, device: str) -> User:
        calls.append(token)
        return ADA

    try:
        one = SessionChecker(fetch, ttl=0.5, tiers=first)
        two = SessionChecker(fetch, ttl=0.5, tiers=second)
        assert (await one.check("token", "203.0.113.7", BROWSER_UA)).source == "miss"
        await asyncio.sleep(0.3)
        assert (await two.check("token", "203.0.113.7", BROWSER_UA)).source == "shared"
        assert len(calls) == 1
        await asyncio.sleep(0.25)
        assert (await two.check("token", "203.0.113.7", BROWSER_UA)).source == "miss"
        assert len(calls) == 2
    finally:
        await first.close()
        await second.close()


async def test_a_longer_ttl_after_a_reload_reaches_the_broker_and_redis(
    broker_path: str, redis_server: RedisServer
) -> None:
    """`keep_for` (a reload lengthened a route's TTL) changes how long both shared levels keep answers."""
    worker = BrokerClient(broker_path, wait=2.0, keep=0.2, on_dead=lambda digest: None)
    other = client(broker_path)
    redis = aioredis.Redis.from_url(redis_server.url)
    calls: list[str] = []

    async def fetch(token: str, ip: str, agent: str, device: str) -> User:
        calls.append(token)
        return ADA

    try:
        tiers = ChainedChecks(worker, RedisChecks(redis, keep=1.0, wait=2.0))
        checker = SessionChecker(fetch, ttl=60, tiers=tiers)
        checker.keep_for(300)
        assert (await checker.check("token", "203.0.113.7", BROWSER_UA)).source == "miss"
        (name,) = await redis.keys(ANSWER_PREFIX + "*")
        assert await redis.pttl(name) > 60_000  # kept for 300 s, not the 1 s it was built with
        await asyncio.sleep(0.4)  # past the broker's first keep (0.2 s)
        # The broker drops answers past their keep as new ones arrive: one does now.
        assert (await checker.check("token-2", "203.0.113.7", BROWSER_UA)).source == "miss"
        made, call = counting()
        key = (hashlib.sha256(b"token").digest(), "203.0.113.7", agent_digest(BROWSER_UA))
        user, age = await other.answer(key, "token", 60, call)
        assert (user, made) == (ADA, []) and age >= 0.4
        assert calls == ["token", "token-2"]
    finally:
        await worker.close()
        await other.close()
        await redis.aclose()


# -- replicas: three proxies, one Redis -----------------------------------------------------------------


@pytest.fixture
async def three(redis_replicas: ReplicaFactory) -> list[Proxy]:
    return await redis_replicas(1)


async def test_three_replicas_make_one_call_per_key_per_ttl_under_steady_load(
    three: list[Proxy], devidp: DevIdp
) -> None:
    cookies = [(await signed_in(three[0], email=f"user{n}@example.com")).header for n in range(4)]
    await devidp.control("DELETE", "/requests")
    before = (await devidp.stats())["userinfo"]
    seconds, ttl = 3.2, 1.0
    async with ClientSession(headers={"Accept": "application/json", "User-Agent": BROWSER_UA}) as http:

        async def get(proxy: Proxy, cookie: str) -> int:
            async with http.get(f"{proxy.url}/x", headers={"Cookie": cookie}) as response:
                await response.read()
                return response.status

        started = time.monotonic()
        rounds = 0
        while time.monotonic() - started < seconds:
            statuses = await asyncio.gather(*(get(p, c) for p in three for c in cookies))
            assert set(statuses) == {200}
            rounds += 1
    calls = (await devidp.stats())["userinfo"] - before
    assert rounds > 20
    bound = len(cookies) * (int(seconds / ttl) + 1)
    # One replica alone would make about this many; three without the shared cache three times it.
    assert len(cookies) * int(seconds / ttl) <= calls <= bound, calls


async def test_answers_in_redis_reveal_no_user_and_cannot_be_forged(
    three: list[Proxy], redis_server: RedisServer, devidp: DevIdp
) -> None:
    ada = await signed_in(three[0])
    client_ = aioredis.Redis.from_url(redis_server.url)
    try:
        names = await client_.keys(ANSWER_PREFIX + "*")
        assert len(names) == 1
        value = await client_.get(names[0])
        assert isinstance(value, bytes)
        assert b"ada@example.com" not in value and ada.token.encode() not in value
        # Eve, who can write to Redis, swaps in her own answer (sealed under her token) for Ada's key,
        # and flips a byte of Ada's: neither is taken; the replica asks CentralAuth.
        eve = await signed_in(three[0], email="eve@example.com")
        eve_names = [n for n in await client_.keys(ANSWER_PREFIX + "*") if n != names[0]]
        eve_value = await client_.get(eve_names[0])
        for forged in (eve_value, value[:-1] + bytes([value[-1] ^ 1])):
            assert isinstance(forged, bytes)
            await client_.set(names[0], forged, px=60_000)
            three[1].app[LIVE].runtime.checker.evict(ada.token)
            before = (await devidp.stats())["userinfo"]
            async with ClientSession(
                headers={"Accept": "application/json", "User-Agent": BROWSER_UA}
            ) as http:
                async with http.get(f"{three[1].url}/whoami", headers={"Cookie": ada.header}) as response:
                    assert response.status == 200
                    text = await response.text()
                    assert "ada@example.com" in text and "eve@" not in text
            assert (await devidp.stats())["userinfo"] - before == 1
        del eve
    finally:
        await client_.aclose()
