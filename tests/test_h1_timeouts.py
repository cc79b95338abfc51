"""The h1 client's clocks: connect, write (an upload that stops moving), response (the wait for the head
once the request is sent) and read (silence in the middle of a body). An upload of any length passes
while its bytes move; only a lack of progress is cut."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from support.rawupstream import Conn, RawUpstream, Request

from authproxy import h1


class Trickle:
    """A request body that hands over `piece` every `every` seconds, `count` times, then ends; or stalls
    forever after the pieces when `stall` is set."""

    def __init__(self, piece: bytes, every: float, count: int, *, stall: bool = False) -> None:
        self.piece, self.every, self.count, self.stall = piece, every, count, stall
        self.given = 0

    async def readany(self) -> bytes:
        if self.given == self.count:
            if self.stall:
                await asyncio.Event().wait()
            return b""
        if self.given:
            await asyncio.sleep(self.every)
        self.given += 1
        return self.piece


async def echo_length(conn: Conn, request: Request) -> None:
    body = b"%d" % len(request.body)
    await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


async def read_all(response: h1.Response) -> bytes:
    body = b""
    try:
        while chunk := await response.read():
            body += chunk
    finally:
        response.release()
    return body


async def test_a_slow_upload_passes_while_its_bytes_move() -> None:
    """3 s of upload, a piece every 100 ms, under a 1 s read and response timeout."""
    async with RawUpstream(echo_length) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await pool.request(
            origin,
            "POST",
            "/upload",
            [],
            Trickle(b"x" * 100, 0.1, 31),
            connect_timeout=1,
            response_timeout=1,
            read_timeout=1,
        )
        assert loop.time() - started >= 2.9
        assert await read_all(response) == b"3100"
        await pool.close()


async def test_the_response_clock_starts_when_the_body_is_sent() -> None:
    """An upload of 1 s, then an answer 0.4 s later, under a 0.6 s response timeout: passes."""

    async def answer(conn: Conn, request: Request) -> None:
        await asyncio.sleep(0.4)
        await echo_length(conn, request)

    async with RawUpstream(answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        response = await pool.request(
            origin,
            "PUT",
            "/upload",
            [("Content-Length", "1000")],
            Trickle(b"y" * 100, 0.1, 10),
            connect_timeout=1,
            response_timeout=0.6,
            read_timeout=0.6,
        )
        assert await read_all(response) == b"1000"
        await pool.close()


async def test_the_response_timeout_follows_the_upload_even_when_shorter() -> None:
    """Once the body is sent, the (shorter) response timeout applies, not the write clock's."""

    async def silent(conn: Conn, request: Request) -> None:
        await asyncio.sleep(5)

    async with RawUpstream(silent) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(h1.UpstreamTimeout) as caught:
            await pool.request(
                origin,
                "POST",
                "/",
                [],
                Trickle(b"w" * 10, 0.1, 3),
                connect_timeout=1,
                response_timeout=0.3,
                read_timeout=5,
            )
        assert caught.value.stage == "response"
        assert 0.45 <= loop.time() - started < 2
        await pool.close()


async def test_no_head_within_the_response_timeout() -> None:
    async def silent(conn: Conn, request: Request) -> None:
        await asyncio.sleep(5)

    async with RawUpstream(silent) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(h1.UpstreamTimeout) as caught:
            await pool.request(
                origin, "GET", "/", [], None, connect_timeout=1, response_timeout=0.3, read_timeout=5
            )
        assert caught.value.stage == "response" and "0.3 s" in caught.value.detail
        assert 0.25 <= loop.time() - started < 2
        await pool.close()


async def test_half_a_head_is_still_waiting_for_the_head() -> None:
    async def slow_head(conn: Conn, request: Request) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n")
        await asyncio.sleep(5)

    async with RawUpstream(slow_head) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        with pytest.raises(h1.UpstreamTimeout) as caught:
            await pool.request(
                origin, "GET", "/", [], None, connect_timeout=1, response_timeout=0.3, read_timeout=5
            )
        assert caught.value.stage == "response"
        await pool.close()


async def test_silence_in_the_middle_of_a_body() -> None:
    async def stall(conn: Conn, request: Request) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await asyncio.sleep(5)

    async with RawUpstream(stall) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        response = await pool.request(
            origin, "GET", "/", [], None, connect_timeout=1, response_timeout=5, read_timeout=0.3
        )
        assert await response.read() == b"hello"
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(h1.UpstreamTimeout) as caught:
            await response.read()
        assert caught.value.stage == "read"
        assert 0.2 <= loop.time() - started < 2
        response.release()
        await pool.close()


async def test_a_slow_but_steady_body_passes() -> None:
    async def trickle(conn: Conn, request: Request) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(12):
            await asyncio.sleep(0.1)
            await conn.write(b"1\r\nz\r\n")
        await conn.write(b"0\r\n\r\n")

    async with RawUpstream(trickle) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        response = await pool.request(
            origin, "GET", "/", [], None, connect_timeout=1, response_timeout=1, read_timeout=0.4
        )
        assert await read_all(response) == b"z" * 12
        await pool.close()


@pytest.fixture
async def deaf_upstream() -> AsyncIterator[str]:
    """An upstream that reads a request's head and then nothing more, never answering."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


async def test_an_upload_the_upstream_stops_taking_is_cut(deaf_upstream: str) -> None:
    class Endless:
        async def readany(self) -> bytes:
            await asyncio.sleep(0)
            return b"u" * 65536

    origin, _ = h1.Origin.split(deaf_upstream)
    pool = h1.Pool()
    with pytest.raises(h1.UpstreamTimeout) as caught:
        await pool.request(
            origin, "POST", "/", [], Endless(), connect_timeout=1, response_timeout=30, read_timeout=0.3
        )
    assert caught.value.stage == "write"
    await pool.close()


async def test_an_upload_whose_client_stops_sending_is_cut(deaf_upstream: str) -> None:
    origin, _ = h1.Origin.split(deaf_upstream)
    pool = h1.Pool()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(h1.UpstreamTimeout) as caught:
        await pool.request(
            origin,
            "POST",
            "/",
            [],
            Trickle(b"v" * 10, 0.05, 5, stall=True),
            connect_timeout=1,
            response_timeout=30,
            read_timeout=0.3,
        )
    assert caught.value.stage == "write"
    assert loop.time() - started < 3
    await pool.close()


async def test_connect_timeout() -> None:
    """A listening socket whose accept queue is full: the kernel drops further SYNs, deterministically."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname(), timeout=1)  # fills the queue of one
        try:
            origin, _ = h1.Origin.split(f"http://127.0.0.1:{listener.getsockname()[1]}")
            pool = h1.Pool()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(h1.UpstreamTimeout) as caught:
                await pool.request(
                    origin, "GET", "/", [], None, connect_timeout=0.3, response_timeout=5, read_timeout=5
                )
            assert caught.value.stage == "connect"
            assert 0.25 <= loop.time() - started < 2
            # The slot came back: the pool is not left believing a connection is open.
            assert pool._count == 0
            await pool.close()
        finally:
            filler.close()
