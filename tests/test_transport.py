"""The forwarder's transport guarantees, end to end through a real proxy: one user's bytes never reach
another, slow clients cannot hang the others, uploads are not cut while bytes flow, and upstream
failures carry their cause.

Upstreams here are scripted raw servers (`support.chaos`) or small aiohttp apps, so each test can make
the upstream misbehave in exactly one way, with delays between writes that the old pool missed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from conftest import ProxyFactory
from pytest_aiohttp import AiohttpServer
from support.chaos import Behaviour, RawRequest, RawServer, exchange, send_raw, status_of

PUBLIC = {"skip_auth": ["^/"]}


def late(first: bytes, then: bytes, delay: float = 0.2) -> Behaviour:
    """An upstream behaviour: answer with `first`, then, `delay` later on the same connection, `then`."""

    async def behaviour(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.target.startswith("/victim"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nvictim")
            await writer.drain()
            return True
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(delay)
        writer.write(then)
        await writer.drain()
        return True

    return behaviour


SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nSet-Cookie: session=attacker\r\n\r\nattacker"
# Answers after which a late body is the typical upstream bug: their connections are never reused, so
# the late bytes cannot meet the next request even when it goes out before they arrive.
NO_BODY_ANSWERS = {
    "body-on-head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"),
    "body-after-204": ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    "body-after-304": ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n"),
}
# Bytes beyond a Content-Length: caught when they arrive with the answer or while the connection idles.
FRAMED_ANSWERS = {
    "short-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "extra-response": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("case", sorted(NO_BODY_ANSWERS))
async def test_a_late_body_never_becomes_the_next_users_answer(
    proxy_factory: ProxyFactory, case: str
) -> None:
    method, first = NO_BODY_ANSWERS[case]
    upstream = await RawServer(behaviour=late(first, SMUGGLED)).start()
    try:
        proxy = await proxy_factory(routes=PUBLIC, upstreams=[{"url": upstream.url, "timeout": 2}])
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.request(method, f"{proxy.url}/attacker") as response:
                    await response.read()
                # At once: the victim's request goes out before the late bytes arrive.
                async with http.get(f"{proxy.url}/victim") as response:
                    assert response.status == 200
                    assert await response.read() == b"victim"
                    assert "Set-Cookie" not in response.headers
    finally:
        await upstream.stop()


@pytest.mark.parametrize("case", sorted(FRAMED_ANSWERS))
@pytest.mark.parametrize("delay", [0.0, 0.05])
async def test_bytes_beyond_the_framing_condemn_the_connection(
    proxy_factory: ProxyFactory, case: str, delay: float
) -> None:
    upstream = await RawServer(behaviour=late(FRAMED_ANSWERS[case], SMUGGLED, delay)).start()
    try:
        proxy = await proxy_factory(routes=PUBLIC, upstreams=[{"url": upstream.url, "timeout": 2}])
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"{proxy.url}/attacker") as response:
                    assert await response.read() == b"ok"
                await asyncio.sleep(0.15)  # the late bytes arrive while the connection idles
                async with http.get(f"{proxy.url}/victim") as response:
                    assert await response.read() == b"victim"
                    assert "Set-Cookie" not in response.headers
    finally:
        await upstream.stop()


async def test_trailers_never_become_headers(proxy_factory: ProxyFactory) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n"
        b"2\r\nok\r\n0\r\nSet-Cookie: session=attacker\r\nX-Trailer: t\r\n\r\n"
    )

    upstream = await RawServer(behaviour=send_raw(answer, keep_open=True)).start()
    try:
        proxy = await proxy_factory(routes=PUBLIC, upstreams=[{"url": upstream.url, "timeout": 2}])
        raw = await exchange(int(proxy.url.rsplit(":", 1)[1]), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", wait=0.5)
        head = raw.partition(b"\r\n\r\n")[0].lower()
        assert status_of(raw) == 200
        assert b"set-cookie" not in head and b"x-trailer" not in head
    finally:
        await upstream.stop()


async def test_every_connection_header_line_is_honoured(proxy_factory: ProxyFactory) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: X-Internal\r\nX-Internal: secret\r\n"
        b"X-Kept: 1\r\nContent-Length: 2\r\n\r\nok"
    )

    upstream = await RawServer(behaviour=send_raw(answer, keep_open=True)).start()
    try:
        proxy = await proxy_factory(routes=PUBLIC, upstreams=[{"url": upstream.url, "timeout": 2}])
        async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/") as response:
            assert response.headers.get("X-Kept") == "1"
            assert "X-Internal" not in response.headers
    finally:
        await upstream.stop()


async def test_a_truncated_close_delimited_body_is_cut_not_completed(proxy_factory: ProxyFactory) -> None:
    async def behaviour(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart of the body")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # a reset, not a clean end
        return False

    upstream = await RawServer(behaviour=behaviour).start()
    try:
        proxy = await proxy_factory(routes=PUBLIC, upstreams=[{"url": upstream.url, "timeout": 2}])
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.get(f"{proxy.url}/") as response:
                    assert response.status == 200
                    await response.read()
    finally:
        await upstream.stop()


async def upload_app() -> web.Application:
    async def sink(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    app = web.Application()
    app.router.add_post("/upload", sink)
    return app


async def test_a_slow_upload_passes_while_bytes_flow(
    proxy_factory: ProxyFactory, aiohttp_server: AiohttpServer
) -> None:
    server = await aiohttp_server(await upload_app())
    url = str(server.make_url("")).rstrip("/")
    proxy = await proxy_factory(routes=PUBLIC, upstreams=[{"url": url, "timeout": 1}])

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(30):  # 3 s of body under a 1 s upstream timeout
            yield b"x" * 1000
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as http, http.post(f"{proxy.url}/upload", data=trickle()) as response:
        assert response.status == 200
        assert (await response.json()) == {"received": 30_000}


async def test_a_stalled_upstream_is_cut_with_the_stage_in_the_log(
    proxy_factory: ProxyFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    async def hang(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    upstream = await RawServer(behaviour=hang).start()
    try:
        proxy = await proxy_factory(
            routes=PUBLIC,
            upstreams=[{"url": upstream.url, "timeout": 0.5}],
            logging={"level": "info"},
        )
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/") as response:
            assert response.status == 504
        assert time.monotonic() - started < 3
        assert "response timeout" in capfd.readouterr().out
    finally:
        await upstream.stop()


async def test_a_refused_connection_is_logged_as_refused(
    proxy_factory: ProxyFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    proxy = await proxy_factory(
        routes=PUBLIC,
        upstreams=[{"url": f"http://127.0.0.1:{port}", "timeout": 1}],
        logging={"level": "info"},
    )
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/") as response:
        assert response.status == 502
        rid = response.headers["X-Request-Id"]
        assert rid in await response.text()  # the page's reference finds the log line
    out = capfd.readouterr().out
    line = next(line for line in out.splitlines() if rid in line and "request.error" in line)
    assert "refused" in line


async def download_app() -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 64 * 1024 * 1024
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(1024):
            await response.write(chunk)
        return response

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    return app


async def test_slow_readers_cannot_hang_other_users(
    proxy_factory: ProxyFactory, aiohttp_server: AiohttpServer
) -> None:
    """More clients than upstream connections each start a large download and never read it. Another
    user's request is answered (200, or 503 while the pool is full) within a bounded time, and the
    stalled downloads are cut after `send_timeout`, which frees the pool."""
    server = await aiohttp_server(await download_app())
    url = str(server.make_url("")).rstrip("/")
    proxy = await proxy_factory(
        routes=PUBLIC,
        server={"upstream_connections": 8, "upstream_acquire_timeout": 0.5},
        upstreams=[{"url": url, "timeout": 5, "send_timeout": 1.5}],
    )
    port = int(proxy.url.rsplit(":", 1)[1])
    readers = []
    try:
        for _ in range(12):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            readers.append(sock)
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(f"{proxy.url}/small") as response:
                assert response.status in (200, 503)
                if response.status == 503:
                    assert response.headers["Retry-After"]
            # Bounded by the acquire timeout (0.5 s), with room for a loaded machine; never a hang.
            assert time.monotonic() - started < 5
            # Once the send timeout (1.5 s) has cut the stalled downloads, the pool serves everyone again.
            deadline = time.monotonic() + 10
            while True:
                async with http.get(f"{proxy.url}/small") as response:
                    if response.status == 200:
                        break
                    assert response.status == 503
                assert time.monotonic() < deadline, "the stalled downloads were never cut"
                await asyncio.sleep(0.2)
    finally:
        for sock in readers:
            sock.close()


async def test_a_full_pool_answers_503_with_retry_after(proxy_factory: ProxyFactory) -> None:
    async def slow(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    upstream = await RawServer(behaviour=slow).start()
    try:
        proxy = await proxy_factory(
            routes=PUBLIC,
            server={"upstream_connections": 1, "upstream_acquire_timeout": 0.3},
            upstreams=[{"url": upstream.url, "timeout": 5}],
        )
        async with aiohttp.ClientSession() as http:
            first = asyncio.ensure_future(http.get(f"{proxy.url}/one"))
            await asyncio.sleep(0.2)
            async with http.get(f"{proxy.url}/two", headers={"Accept": "application/json"}) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "2"
                assert (await response.json())["error"] == "upstream_busy"
            async with await first as response:
                assert response.status == 200
    finally:
        await upstream.stop()
