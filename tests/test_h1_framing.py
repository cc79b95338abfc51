"""The h1 client's framing table: for each way an upstream can end (or fail to end) a response, what the
caller sees, and whether the connection may carry the next request.

Each case is a script of raw bytes, pauses, resets and closes played by a loopback upstream
(`support.rawupstream`). After the exchange the test sends `GET /next` through the same pool and checks
that it gets exactly the `/next` answer (never a stale byte of the case) and that it went out on the
same connection exactly when the case says the connection may be reused.

Every case runs twice: `hold` keeps the response until the upstream has played its whole script (late
bytes arrive while the caller still has the connection), `release` gives it back as soon as the body
is read (late bytes arrive while the connection is idle in the pool).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.rawupstream import Conn, RawUpstream, Request, script

from authproxy import h1

OK = b"HTTP/1.1 200 OK\r\n"
T = 0.03  # a pause long enough for what follows to arrive in a read of its own


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[bytes | float | str, ...]
    status: int | None  # None: `request()` raises
    body: bytes | None  # None: `read()` raises (or `request()` did)
    reusable: bool
    error: str | None = None  # the UpstreamError kind raised
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)  # fields the response must have
    absent: tuple[str, ...] = ()  # fields it must not have


def case(
    name: str,
    steps: list[bytes | float | str],
    status: int | None,
    body: bytes | None,
    reusable: bool,
    **more: Any,
) -> Case:
    return Case(name, tuple(steps), status, body, reusable, **more)


CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"
L0 = OK + b"Content-Length: 0\r\n\r\n"
L2 = OK + b"Content-Length: 2\r\n\r\n"
L5 = OK + b"Content-Length: 5\r\n\r\n"
S204 = b"HTTP/1.1 204 No Content\r\n"
S304 = b"HTTP/1.1 304 Not Modified\r\n"
C100 = b"HTTP/1.1 100 Continue\r\n\r\n"
EVIL = OK + b"Content-Length: 4\r\n\r\nevil"
REUSE, GONE = True, False  # may the connection carry the next request?

# fmt: off
CASES = [
    # -- Content-Length ---------------------------------------------------------------------------
    case("length", [L5 + b"hello"], 200, b"hello", REUSE),
    case("length-zero", [L0], 200, b"", REUSE),
    case("length-body-later", [L5, T, b"he", T, b"llo"], 200, b"hello", REUSE),
    case("length-head-byte-by-byte", [*(bytes([b]) for b in L2), b"ok"], 200, b"ok", REUSE),
    case("length-blank-line-split", [L2[:-1], T, b"\nok"], 200, b"ok", REUSE),
    case("length-extra-same-write", [L5 + b"helloEXTRA"], 200, b"hello", GONE),
    case("length-extra-later", [L5 + b"hello", T, b"EXTRA"], 200, b"hello", GONE),
    case("length-stray-crlf-later", [L5 + b"hello", T, b"\r\n"], 200, b"hello", GONE),
    case("length-zero-then-body", [L0 + b"BODY"], 200, b"", GONE),
    case("length-too-short-rest-later", [L2 + b"he", T, b"llo world"], 200, b"he", GONE),
    case("length-truncated", [L5 + b"hel", T, "close"], 200, None, GONE, error="truncated"),
    case("length-reset-mid-body", [L5 + b"hel", T, "reset"], 200, None, GONE, error="reset"),
    case("length-duplicate", [OK + b"Content-Length: 2\r\n" + L2 + b"ok"], None, None, GONE,
         error="protocol"),
    case("length-conflicting", [OK + b"Content-Length: 3\r\n" + L2 + b"ok"], None, None, GONE,
         error="protocol"),
    case("length-list", [OK + b"Content-Length: 2, 2\r\n\r\nok"], None, None, GONE, error="protocol"),
    case("length-and-chunked", [OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
         None, None, GONE, error="protocol"),
    # -- HEAD, 204, 304: no body, whatever the fields say; never reused, since a body sent late ----
    # -- for one of them would arrive after the next request and be taken for its answer ---------
    case("head", [L5], 200, b"", GONE, method="HEAD", headers={"Content-Length": "5"}),
    case("head-chunked", [CHUNKED], 200, b"", GONE, method="HEAD"),
    case("head-body-same-write", [L5 + b"hello"], 200, b"", GONE, method="HEAD"),
    case("head-body-later", [L5, T, b"hello"], 200, b"", GONE, method="HEAD"),
    case("head-chunked-body-later", [CHUNKED, T, b"0\r\n\r\n"], 200, b"", GONE, method="HEAD"),
    case("head-cut-in-head", [L5[:20], T, "close"], None, None, GONE, method="HEAD", error="truncated"),
    case("204", [S204 + b"\r\n"], 204, b"", GONE),
    case("204-with-length", [S204 + b"Content-Length: 5\r\n\r\n"], 204, b"", GONE),
    case("204-body-same-write", [S204 + b"Content-Length: 5\r\n\r\nhello"], 204, b"", GONE),
    case("204-body-later", [S204 + b"\r\n", T, b"hello"], 204, b"", GONE),
    case("304", [S304 + b"ETag: \"x\"\r\n\r\n"], 304, b"", GONE),
    case("304-body-later", [S304 + b"Content-Length: 3\r\n\r\n", T, b"abc"], 304, b"", GONE),
    case("304-chunked-body", [S304 + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"], 304, b"", GONE),
    # -- interim answers ----------------------------------------------------------------------------
    case("100-continue", [C100 + L2 + b"ok"], 200, b"ok", REUSE),
    case("103-early-hints-apart", [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", T,
                                   L2 + b"ok"], 200, b"ok", REUSE, absent=("Link",)),
    case("several-interim", [C100 + b"HTTP/1.1 102 Processing\r\n\r\n", T,
                             b"HTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\n" + L2 + b"ok"],
         200, b"ok", REUSE, absent=("Link",)),
    case("interim-then-head", [C100 + L2], 200, b"", GONE, method="HEAD"),
    case("interim-only-then-close", [C100, T, "close"], None, None, GONE, error="truncated"),
    case("interim-with-length", [b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nok" + L2 + b"ok"],
         None, None, GONE, error="protocol"),
    case("101-unasked", [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"],
         None, None, GONE, error="protocol"),
    # -- chunked --------------------------------------------------------------------------------------
    case("chunked", [CHUNKED + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"], 200, b"hello world", REUSE),
    case("chunked-extensions", [CHUNKED + b"5;a=b;c=\"d e\"\r\nhello\r\n0;last\r\n\r\n"], 200, b"hello",
         REUSE),
    case("chunked-trailers-dropped",
         [CHUNKED + b"5\r\nhello\r\n0\r\nSet-Cookie: sid=evil\r\nX-Trailer: t\r\n\r\n"], 200, b"hello",
         REUSE, absent=("Set-Cookie", "X-Trailer")),
    case("chunked-trailers-later", [CHUNKED, T, b"5\r\nhello\r\n", T, b"0\r\nSet-Cookie: sid=evil\r\n", T,
                                    b"\r\n"], 200, b"hello", REUSE, absent=("Set-Cookie",)),
    case("chunked-byte-by-byte", [CHUNKED, *(bytes([b]) for b in b"3\r\nabc\r\n0\r\n\r\n")], 200, b"abc",
         REUSE),
    case("chunked-last-lf-later", [CHUNKED + b"3\r\nabc\r\n0\r\n\r", T, b"\n"], 200, b"abc", REUSE),
    case("chunked-data-ends-in-lf", [CHUNKED + b"2\r\n\r\n\r\n", T, b"0\r\n\r\n"], 200, b"\r\n", REUSE),
    case("chunked-extra-same-write", [CHUNKED + b"3\r\nabc\r\n0\r\n\r\nX"], 200, b"abc", GONE),
    case("chunked-stray-crlf-same-write", [CHUNKED + b"3\r\nabc\r\n0\r\n\r\n\r\n"], 200, b"abc", GONE),
    case("chunked-stray-crlf-later", [CHUNKED + b"3\r\nabc\r\n0\r\n\r\n", T, b"\r\n"], 200, b"abc", GONE),
    case("chunked-cut-in-data", [CHUNKED + b"5\r\nhel", T, "close"], 200, None, GONE, error="truncated"),
    case("chunked-no-last-chunk", [CHUNKED + b"5\r\nhello\r\n", T, "close"], 200, None, GONE,
         error="truncated"),
    case("chunked-reset", [CHUNKED + b"5\r\nhello\r\n", T, "reset"], 200, None, GONE, error="reset"),
    case("chunked-bad-size", [CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n"], 200, None, GONE, error="protocol"),
    case("chunked-uppercase", [OK + b"Transfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"], 200, b"ok",
         REUSE),
    case("transfer-encoding-gzip", [OK + b"Transfer-Encoding: gzip\r\n\r\nabc", T, "close"], None, None,
         GONE, error="protocol"),
    case("transfer-encoding-gzip-chunked", [OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"],
         None, None, GONE, error="protocol"),
    case("transfer-encoding-twice", [OK + b"Transfer-Encoding: chunked\r\n" + CHUNKED[17:] + b"0\r\n\r\n"],
         None, None, GONE, error="protocol"),
    # -- until the connection closes ------------------------------------------------------------------
    case("close-delimited", [OK + b"\r\nhello ", T, b"world", T, "close"], 200, b"hello world", GONE),
    case("close-delimited-reset", [OK + b"\r\nhello ", T, "reset"], 200, None, GONE, error="reset"),
    case("close-delimited-empty", [OK + b"\r\n", T, "close"], 200, b"", GONE),
    # -- keep-alive, or not ---------------------------------------------------------------------------
    case("connection-close", [OK + b"Connection: close\r\n" + L2[17:] + b"ok"], 200, b"ok", GONE),
    case("connection-close-listed", [OK + b"Connection: x-a, Close\r\n" + L2[17:] + b"ok"], 200, b"ok", GONE),
    case("http10-keep-alive", [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" + L2[17:] + b"ok"], 200,
         b"ok", GONE),
    case("fin-after-response", [L2 + b"ok", T, "close"], 200, b"ok", GONE),
    case("reset-after-response", [L2 + b"ok", T, "reset"], 200, b"ok", GONE),
    # -- a second answer to one request ---------------------------------------------------------------
    case("pipelined-same-write", [L2 + b"ok" + EVIL], 200, b"ok", GONE),
    case("pipelined-later", [L2 + b"ok", T, EVIL], 200, b"ok", GONE),
    case("pipelined-after-chunked", [CHUNKED + b"2\r\nok\r\n0\r\n\r\n" + EVIL], 200, b"ok", GONE),
    case("pipelined-after-head", [L5 + EVIL], 200, b"", GONE, method="HEAD"),
    # -- no answer, or half of one ---------------------------------------------------------------------
    case("close-before-answer", ["close"], None, None, GONE, error="closed"),
    case("reset-before-answer", ["reset"], None, None, GONE, error="reset"),
    case("close-mid-head", [L2[:22], T, "close"], None, None, GONE, error="truncated"),
    case("reset-mid-head", [L2[:22], T, "reset"], None, None, GONE, error="reset"),
    # -- malformed heads ------------------------------------------------------------------------------
    case("blank-line-first", [b"\r\n" + L2 + b"ok"], None, None, GONE, error="protocol"),
    case("bare-lf", [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", T, "close"], None, None, GONE,
         error="protocol"),
    case("obs-fold", [OK + b"X-A: a\r\n b\r\n" + L2[17:] + b"ok"], None, None, GONE, error="protocol"),
    case("http2-status-line", [b"HTTP/2.0 200 OK\r\n" + L2[17:] + b"ok"], None, None, GONE, error="protocol"),
    case("status-below-100", [b"HTTP/1.1 042 Odd\r\n" + L2[17:] + b"ok"], None, None, GONE, error="protocol"),
    case("nul-in-header", [OK + b"X-A: a\x00b\r\n" + L2[17:] + b"ok"], None, None, GONE, error="protocol"),
    case("not-http", [b"SSH-2.0-OpenSSH_9.2\r\n", T, "close"], None, None, GONE, error="protocol"),
    case("too-many-headers", [OK + b"X-A: 1\r\n" * 129 + L2[17:] + b"ok"], None, None, GONE,
         error="protocol"),
    case("header-too-long", [OK + b"X-A: " + b"a" * 9000 + b"\r\n" + L2[17:] + b"ok"], None, None, GONE,
         error="protocol"),
    case("head-too-large", [OK + b"X-A: ", *(b"a" * 300_000, 0.01) * 4, b"\r\n" + L2[17:] + b"ok"], None,
         None, GONE, error="protocol"),
    case("trailers-too-large", [CHUNKED + b"2\r\nok\r\n0\r\nX-Big: ", *(b"a" * 40_000, T) * 3, b"\r\n\r\n"],
         200, None, GONE, error="protocol"),
    # -- header bytes pass exactly --------------------------------------------------------------------
    case("non-utf8-header", [OK + b"Content-Disposition: attachment; filename=\"caf\xe9.txt\"\r\n"
                             b"X-Utf8: caf\xc3\xa9\r\n" + L2[17:] + b"ok"], 200, b"ok", REUSE,
         headers={"Content-Disposition": 'attachment; filename="caf\udce9.txt"', "X-Utf8": "café"}),
    case("trailing-whitespace-kept", [OK + b"X-A:  a b \t\r\n" + L2[17:] + b"ok"], 200, b"ok", REUSE,
         headers={"X-A": "a b \t"}),
]
# fmt: on


async def exchange(
    pool: h1.Pool, origin: h1.Origin, method: str, held: asyncio.Future[Conn] | None = None
) -> tuple[int | None, list[tuple[str, str]], bytes | None, str | None]:
    """Status, headers, body (None if reading it failed) and error kind of one exchange. With `held`
    (the upstream's side of the connection, once it exists), the response is kept until the upstream
    has played its whole script, so its last bytes reach the client while it still holds it."""
    try:
        response = await pool.request(
            origin, method, "/case", [], None, connect_timeout=2, response_timeout=2, read_timeout=2
        )
    except h1.UpstreamError as exc:
        return None, [], None, exc.kind
    received = b""
    body: bytes | None
    error = None
    try:
        while chunk := await response.read():
            received += chunk
        body = received
    except h1.UpstreamError as exc:
        body, error = None, exc.kind
    if held is not None:
        conn = await held
        await asyncio.wait_for(conn.finished.wait(), 5)
        await asyncio.sleep(T)
    response.release()
    return response.status, list(response.headers), body, error


@pytest.mark.parametrize("mode", ["hold", "release"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_framing(case: Case, mode: str) -> None:
    async with RawUpstream(script(*case.steps)) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        try:

            async def first_conn() -> Conn:
                while not upstream.conns:  # noqa: ASYNC110 - the upstream's accept is not ours to signal
                    await asyncio.sleep(0.001)
                return upstream.conns[0]

            held = asyncio.ensure_future(first_conn()) if mode == "hold" else None
            status, headers, body, error = await exchange(pool, origin, case.method, held)
            if held is not None:
                held.cancel()
            assert (status, body, error) == (case.status, case.body, case.error)
            names = {name.lower() for name, _ in headers}
            for name, value in case.headers.items():
                assert (name, value) in headers
            for name in case.absent:
                assert name.lower() not in names
            # Whatever the case left behind, the next request gets its own answer, whole.
            await asyncio.wait_for(upstream.conns[0].finished.wait(), 5)
            await asyncio.sleep(T)
            response = await pool.request(
                origin, "GET", "/next", [], None, connect_timeout=2, response_timeout=2, read_timeout=2
            )
            assert response.status == 200 and ("X-Next", "yes") in response.headers
            assert await response.read() == b"next" and await response.read() == b""
            response.release()
            assert upstream.seen[-1][1] == "/next"
            assert (upstream.seen[-1][0] == 0) == case.reusable, upstream.seen
        finally:
            await pool.close()


async def test_bytes_on_an_idle_connection_condemn_it() -> None:
    """An upstream that speaks while its connection is idle in the pool never gets another request."""

    async def answer(conn: Conn, request: Request) -> None:
        await conn.write(OK + b"Content-Length: 2\r\n\r\nok")
        if request.target == "/first":
            await asyncio.sleep(0.1)
            await conn.write(OK + b"Content-Length: 4\r\n\r\nevil")

    async with RawUpstream(answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        response = await pool.request(
            origin, "GET", "/first", [], None, connect_timeout=2, response_timeout=2, read_timeout=2
        )
        assert await response.read() == b"ok"
        response.release()  # idle in the pool now, clean so far
        await asyncio.wait_for(upstream.conns[0].finished.wait(), 5)
        await asyncio.sleep(T)
        response = await pool.request(
            origin, "GET", "/next", [], None, connect_timeout=2, response_timeout=2, read_timeout=2
        )
        assert await response.read() == b"next"
        response.release()
        assert upstream.seen == [(0, "/first"), (1, "/next")]
        await pool.close()


async def test_the_head_and_the_body_of_a_response_are_what_arrived() -> None:
    """Status, reason, fields in order (duplicates kept), Content-Length and body_ready."""
    head = (
        b"HTTP/1.1 201 Created Here\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    async with RawUpstream(script(head)) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        response = await pool.request(
            origin, "GET", "/x", [], None, connect_timeout=2, response_timeout=2, read_timeout=2
        )
        assert (response.status, response.reason, response.content_length) == (201, "Created Here", 3)
        assert response.headers == [
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("X-Empty", ""),
            ("Content-Length", "3"),
        ]
        assert response.body_ready
        assert await response.read() == b"abc"
        assert await response.read() == b""
        response.release()
        response.release()  # twice is harmless
        with pytest.raises(RuntimeError):
            await response.read()
        await pool.close()


async def test_request_head_and_body_reach_the_upstream() -> None:
    class Body:
        def __init__(self, pieces: list[bytes]) -> None:
            self.pieces = pieces

        async def readany(self) -> bytes:
            return self.pieces.pop(0) if self.pieces else b""

    async with RawUpstream(script(OK + b"Content-Length: 0\r\n\r\n")) as upstream:
        origin, prefix = h1.Origin.split(upstream.url + "/base")
        pool = h1.Pool()
        for method, body, extra in [
            ("POST", Body([b"abc", b"def"]), []),
            ("PUT", Body([b"xyz"]), [("Content-Length", "3")]),
            ("DELETE", None, []),
        ]:
            response = await pool.request(
                origin,
                method,
                prefix + "/p?q=1",
                [("X-A", "caf\udce9"), *extra],
                body,
                connect_timeout=2,
                response_timeout=2,
                read_timeout=2,
            )
            assert await response.read() == b""
            response.release()
        post, put, delete = upstream.requests
        assert post.head.startswith(b"POST /base/p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nX-A: caf\xe9\r\nTransfer-Encoding: chunked\r\n\r\n" in post.head
        assert post.body == b"abcdef"
        assert put.body == b"xyz" and b"Transfer-Encoding" not in put.head
        assert b"\r\nContent-Length: 0\r\n" in delete.head
        assert len(upstream.conns) == 1  # one connection carried all three
        with pytest.raises(ValueError, match="newline"):
            await pool.request(
                origin,
                "GET",
                "/",
                [("X-A", "a\r\nX-B: b")],
                None,
                connect_timeout=2,
                response_timeout=2,
                read_timeout=2,
            )
        await pool.close()


async def test_a_slow_caller_holds_the_upstream_back() -> None:
    """Reading pauses while more than HIGH_WATER bytes wait for the caller, and resumes as it reads."""
    size = 8 * 1024 * 1024

    async def answer(conn: Conn, request: Request) -> None:
        await conn.write(OK + b"Content-Length: %d\r\n\r\n" % size)
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            conn.writer.write(piece)
            await conn.writer.drain()

    async with RawUpstream(answer) as upstream:
        origin, _ = h1.Origin.split(upstream.url)
        pool = h1.Pool()
        response = await pool.request(
            origin, "GET", "/big", [], None, connect_timeout=2, response_timeout=2, read_timeout=2
        )
        await asyncio.sleep(0.3)  # the upstream writes as fast as it may; we do not read
        connection = response._connection
        assert connection._reading_paused
        assert connection._buffered < 2 * 1024 * 1024
        received = 0
        while chunk := await response.read():
            received += len(chunk)
        assert received == size
        response.release()
        await pool.close()
