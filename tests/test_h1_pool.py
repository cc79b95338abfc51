"""The h1 connection pool: its limit, first-come-first-served waiters that survive cancellation, the
acquire timeout, the resend of a request that met a stale connection, keep-alive expiry, and which
connections it hands out again (never one that spoke or ended while idle)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
from support.rawupstream import Conn, RawUpstream, Request

from authproxy import h1

OK2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TIMEOUTS: dict[str, Any] = {"connect_timeout": 2.0, "response_timeout": 2.0, "read_timeout": 2.0}


class Gate:
    """An upstream whose answers to `/hold/<name>` wait until the test opens that name's gate."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.arrived: list[str] = []

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def answer(self, conn: Conn, request: Request) -> None:
        name = request.target.rsplit("/", 1)[-1]
        self.arrived.append(name)
        if request.target.startswith("/hold/"):
            await self.gate(name).wait()
        await conn.write(OK2)


async def fetch(pool: h1.Pool, origin: h1.Origin, target: str, method: str = "GET") -> bytes:
    response = await pool.request(origin, method, target, [], None, **TIMEOUTS)
    try:
        body = b""
        while chunk := await response.read():
            body += chunk
        return body
    finally:
        response.release()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `condition()` holds: it watches sockets and state that no event signals."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_at_most_limit_connections_and_the_rest_wait() -> None:
    gate = Gate()
    async with RawUpstream(gate.answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool(limit=2)
        tasks = [asyncio.ensure_future(fetch(pool, origin, f"/hold/{n}")) for n in "abc"]
        await until(lambda: len(gate.arrived) == 2)
        await asyncio.sleep(0.05)
        assert len(upstream.conns) == 2 and len(gate.arrived) == 2  # the third waits for a slot
        gate.gate(gate.arrived[0]).set()
        await until(lambda: len(gate.arrived) == 3)
        assert len(upstream.conns) == 2  # it got the freed connection, not a new one
        for name in "abc":
            gate.gate(name).set()
        assert await asyncio.gather(*tasks) == [b"ok"] * 3
        await pool.close()


async def test_waiters_are_served_in_order() -> None:
    gate = Gate()
    async with RawUpstream(gate.answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool(limit=1)
        holder = asyncio.ensure_future(fetch(pool, origin, "/hold/first"))
        await until(lambda: gate.arrived == ["first"])
        waiters = []
        for name in ["w1", "w2", "w3", "w4"]:
            waiters.append(asyncio.ensure_future(fetch(pool, origin, f"/x/{name}")))
            await asyncio.sleep(0.01)  # each one queued before the next
        gate.gate("first").set()
        await asyncio.gather(holder, *waiters)
        assert gate.arrived == ["first", "w1", "w2", "w3", "w4"]
        assert len(upstream.conns) == 1
        await pool.close()


@pytest.mark.parametrize("when", ["before", "same-step"])
async def test_a_cancelled_waiter_passes_its_turn_on(when: str) -> None:
    """A waiter cancelled after the slot was handed to it (in the very step it was served) passes the
    slot to the next waiter, which would otherwise wait forever: the lost wake-up."""
    async with RawUpstream(Gate().answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool(limit=1, acquire_timeout=30)
        holding = await pool.request(origin, "GET", "/a", [], None, **TIMEOUTS)
        assert await holding.read() == b"ok"
        first = asyncio.ensure_future(fetch(pool, origin, "/w1"))
        second = asyncio.ensure_future(fetch(pool, origin, "/w2"))
        await asyncio.sleep(0.02)  # both queued
        if when == "before":
            first.cancel()
            await asyncio.sleep(0)
            holding.release()
        else:
            holding.release()  # hands the connection to the first waiter...
            first.cancel()  # ...which is cancelled before it could run
        assert await asyncio.wait_for(second, 2) == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert [target for _, target in upstream.seen] == ["/a", "/w2"]
        # Nothing leaked: the one slot serves again.
        assert await asyncio.wait_for(fetch(pool, origin, "/again"), 2) == b"ok"
        await pool.close()


async def test_a_timed_out_waiter_passes_its_turn_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acquire timeout firing in the same loop step as the slot is handed over loses nothing."""
    made: list[asyncio.Timeout] = []
    real_timeout = asyncio.timeout

    def recording_timeout(delay: float | None) -> asyncio.Timeout:
        made.append(real_timeout(delay))
        return made[-1]

    async with RawUpstream(Gate().answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool(limit=1, acquire_timeout=0.2)
        holding = await pool.request(origin, "GET", "/a", [], None, **TIMEOUTS)
        assert await holding.read() == b"ok"
        monkeypatch.setattr(asyncio, "timeout", recording_timeout)
        first = asyncio.ensure_future(fetch(pool, origin, "/w1"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(fetch(pool, origin, "/w2"))
        await asyncio.sleep(0)
        monkeypatch.undo()
        when = made[0].when()
        assert when is not None
        # Due in the same step as the first waiter's timeout (within the clock's resolution), and
        # ahead of it: the slot is handed over, then the waiter is cancelled by its timeout.
        asyncio.get_running_loop().call_at(when - 5e-10, holding.release)
        first_result, second_result = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(first_result, h1.PoolExhausted)
        assert second_result == b"ok"
        assert await asyncio.wait_for(fetch(pool, origin, "/again"), 2) == b"ok"
        await pool.close()


async def test_acquire_timeout_raises_pool_exhausted_and_leaks_no_slot() -> None:
    gate = Gate()
    async with RawUpstream(gate.answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool(limit=1, acquire_timeout=0.2)
        holder = asyncio.ensure_future(fetch(pool, origin, "/hold/h"))
        await until(lambda: gate.arrived == ["h"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(h1.PoolExhausted) as caught:
            await fetch(pool, origin, "/late")
        assert 0.15 <= loop.time() - started < 1.5
        assert "busy" in str(caught.value)
        gate.gate("h").set()
        assert await holder == b"ok"
        assert await fetch(pool, origin, "/after") == b"ok"
        assert len(upstream.conns) == 1
        await pool.close()


async def test_a_request_for_another_upstream_makes_an_idle_connection_give_way() -> None:
    async with RawUpstream(Gate().answer) as one, RawUpstream(Gate().answer) as two:
        first, _ = h1.Origin.split(one.url)
        second, _ = h1.Origin.split(two.url)
        pool = h1.Pool(limit=1, acquire_timeout=0.5)
        assert await fetch(pool, first, "/a") == b"ok"  # idle now, holding the only slot
        assert await fetch(pool, second, "/b") == b"ok"  # closes it rather than waiting
        await until(lambda: not one.conns[0].open or one.conns[0].reader.at_eof())
        assert await fetch(pool, first, "/c") == b"ok"
        assert len(one.conns) == 2 and len(two.conns) == 1
        await pool.close()


async def test_a_waiter_for_another_upstream_gets_the_slot() -> None:
    gate = Gate()
    async with RawUpstream(gate.answer) as one, RawUpstream(Gate().answer) as two:
        first, _ = h1.Origin.split(one.url)
        second, _ = h1.Origin.split(two.url)
        pool = h1.Pool(limit=1, acquire_timeout=2)
        holder = asyncio.ensure_future(fetch(pool, first, "/hold/h"))
        await until(lambda: gate.arrived == ["h"])
        waiter = asyncio.ensure_future(fetch(pool, second, "/b"))
        await asyncio.sleep(0.02)
        gate.gate("h").set()
        assert await holder == b"ok"
        assert await asyncio.wait_for(waiter, 2) == b"ok"
        assert await fetch(pool, second, "/c") == b"ok"
        assert len(two.conns) == 1
        await pool.close()


@pytest.mark.parametrize(
    ("method", "body", "retried"),
    [("GET", None, True), ("HEAD", None, True), ("DELETE", None, True), ("POST", None, False)],
)
async def test_a_stale_connection_is_retried_once_for_idempotent_requests(
    method: str, body: None, retried: bool
) -> None:
    """A reused connection that ends before any byte of an answer: the upstream closed it while idle
    (here: it reads the second request and closes). Safe requests go again on a new connection."""

    async def answer(conn: Conn, request: Request) -> None:
        if request.target == "/first" or conn.number > 0:
            await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.close()

    async with RawUpstream(answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        assert await fetch(pool, origin, "/first") == b""
        if retried:
            assert await fetch(pool, origin, "/second", method) == b""
            assert [number for number, _ in upstream.seen] == [0, 0, 1]
        else:
            with pytest.raises(h1.UpstreamError) as caught:
                await fetch(pool, origin, "/second", method)
            assert caught.value.kind == "closed" and not caught.value.answered
        await pool.close()


async def test_no_retry_with_a_body_after_an_answer_began_or_on_a_fresh_connection() -> None:
    class Body:
        def __init__(self) -> None:
            self.sent = False

        async def readany(self) -> bytes:
            if self.sent:
                return b""
            self.sent = True
            return b"data"

    async def answer(conn: Conn, request: Request) -> None:
        if request.target == "/first":
            await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        elif request.target == "/half":
            await conn.write(b"HTTP/1.1 200 OK\r\nContent-")
            conn.close()
        else:
            conn.close()

    async with RawUpstream(answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        with pytest.raises(h1.UpstreamError) as caught:  # a fresh connection: never retried
            await fetch(pool, origin, "/fresh")
        assert caught.value.kind == "closed"
        assert await fetch(pool, origin, "/first") == b""
        with pytest.raises(h1.UpstreamError) as caught:  # reused, but the answer had begun
            await fetch(pool, origin, "/half")
        assert caught.value.kind == "truncated"
        assert await fetch(pool, origin, "/first") == b""
        with pytest.raises(h1.UpstreamError):  # a PUT with a body cannot be replayed
            response = await pool.request(origin, "PUT", "/put", [], Body(), **TIMEOUTS)
            response.release()
        assert [target for _, target in upstream.seen].count("/put") == 1
        await pool.close()


async def test_idle_connections_expire_after_keepalive() -> None:
    async with RawUpstream(Gate().answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool(keepalive=0.2)
        assert await fetch(pool, origin, "/a") == b"ok"
        assert await fetch(pool, origin, "/b") == b"ok"  # within keep-alive: the same connection
        await until(lambda: upstream.conns[0].reader.at_eof(), within=2)  # the sweep closed it
        assert await fetch(pool, origin, "/c") == b"ok"
        assert [number for number, _ in upstream.seen] == [0, 0, 1]
        await pool.close()


@pytest.mark.parametrize("end", ["close", "reset"])
async def test_a_connection_the_upstream_ended_while_idle_is_not_handed_out(end: str) -> None:
    async def answer(conn: Conn, request: Request) -> None:
        await conn.write(OK2)
        if request.target == "/a":
            await asyncio.sleep(0.02)
            conn.close() if end == "close" else conn.reset()

    async with RawUpstream(answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        assert await fetch(pool, origin, "/a") == b"ok"
        await asyncio.sleep(0.1)
        assert await fetch(pool, origin, "/b") == b"ok"
        assert [number for number, _ in upstream.seen] == [0, 1]
        await pool.close()


async def test_close_closes_idle_connections() -> None:
    async with RawUpstream(Gate().answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        assert await fetch(pool, origin, "/a") == b"ok"
        await pool.close()
        await until(lambda: upstream.conns[0].reader.at_eof(), within=2)


async def test_connect_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = h1.Pool()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: refused
        origin, _ = h1.Origin.split(f"http://127.0.0.1:{port}")
        with pytest.raises(h1.UpstreamError) as caught:
            await fetch(pool, origin, "/")
    assert caught.value.kind == "refused" and "refused" in caught.value.detail.lower()

    loop = asyncio.get_running_loop()

    async def no_such_name(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", no_such_name)
    origin, _ = h1.Origin.split("http://upstream.invalid:8080")
    with pytest.raises(h1.UpstreamError) as caught:
        await fetch(pool, origin, "/")
    assert caught.value.kind == "dns" and "upstream.invalid" in caught.value.detail
    await pool.close()
