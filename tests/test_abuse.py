"""Protocol abuse over raw sockets: what a hostile client can make of the HTTP/1.1 framing the proxy parses.

The upstream is a hand-written server that records every byte it receives and re-frames them strictly,
so each test can say exactly which requests reached it. The rule under test throughout: a request the
proxy refuses reaches nobody, a request it accepts reaches the upstream exactly once with unambiguous
framing, and nothing a client smuggles into one request's bytes becomes a second request upstream.
Paths under `/public/` skip authentication here, so a smuggled `GET /public/smuggled` would be forwarded
if the proxy ever parsed it, and a smuggled `GET /admin` would need a session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp, ProxyFactory
from support.chaos import LogCheck, RawServer, RawTarget, exchange, log_problems, status_of
from support.harness import BROWSER_UA
from support.logins import signed_in
from support.served import ServedProxy

GET = b"GET /public/x HTTP/1.1\r\nHost: a\r\n"
POST = b"POST /public/x HTTP/1.1\r\nHost: a\r\n"
SMUGGLED = b"GET /public/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
UPSTREAM_TIMEOUT = 0.5
ADMIN = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
async def target(proxy_factory: ProxyFactory) -> AsyncIterator[RawTarget]:
    upstream = await RawServer().start()
    proxy = await proxy_factory(
        routes={"skip_auth": ["^/public/"]}, upstreams=[{"url": upstream.url, "timeout": UPSTREAM_TIMEOUT}]
    )
    yield RawTarget(proxy, upstream)
    await upstream.stop()


# Each is refused by the proxy's parser with a 400-class answer, forwards nothing, and closes the
# connection: the bytes after it (a public request that would be forwarded) are never parsed.
REFUSED = {
    "duplicate-host": GET + b"Host: b\r\n\r\n",
    "duplicate-host-other-case": GET + b"host: evil\r\n\r\n",
    "content-length-then-chunked": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked-then-content-length": POST + b"Transfer-Encoding: chunked\r\n"
    b"Content-Length: 40\r\n\r\n0\r\n\r\n",
    "two-content-lengths": POST + b"Content-Length: 0\r\nContent-Length: 40\r\n\r\n",
    "two-equal-content-lengths": POST + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n",
    "content-length-list": POST + b"Content-Length: 0, 40\r\n\r\n",
    "negative-content-length": POST + b"Content-Length: -1\r\n\r\n",
    "signed-content-length": POST + b"Content-Length: +0\r\n\r\n",
    "chunked-twice": POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "chunked-and-identity-headers": POST + b"Transfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "unknown-coding": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "hex-prefixed-chunk-size": POST + b"Transfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n",
    "overflowing-chunk-size": POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\r\n",
    "lf-only-chunk-lines": POST + b"Transfer-Encoding: chunked\r\n\r\n0\n\n",
    "nul-in-header-value": GET + b"X-A: a\x00b\r\n\r\n",
    "cr-in-header-value": GET + b"X-A: a\rX-Forwarded-User: admin\r\n\r\n",
    "lf-in-header-value": GET + b"X-A: a\nX-Forwarded-User: admin\r\n\r\n",
    "obsolete-line-folding": GET + b"X-A: a\r\n X-Forwarded-User: admin\r\n\r\n",
    "bare-lf-line-endings": b"GET /public/x HTTP/1.1\nHost: a\n\n",
    "100-kb-cookie": GET + b"Cookie: a=" + b"x" * 100_000 + b"\r\n\r\n",
    "10-kb-header": GET + b"X-Big: " + b"y" * 10_000 + b"\r\n\r\n",
    "200-headers": GET + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
    "9-kb-request-line": b"GET /public/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "non-ascii-target": b"GET /public/caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    "relative-target": b"GET public/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case-method": b"get /public/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "http-1.2": b"GET /public/x HTTP/1.2\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
async def test_malformed_requests_are_refused_and_reach_nobody(target: RawTarget, raw: bytes) -> None:
    answer, received = await target.send(raw + SMUGGLED)
    assert status_of(answer) in (400, 413, 414, 431), answer[:200]
    assert received == []  # not even the well-formed public request that followed


# Each is a well-formed request carrying something that looks like another request or an identity
# header in its body, trailers or upgrade tail. Accepted (or refused) as one request; never two upstream.
ACCEPTED = {
    "get-with-a-body": GET + b"Content-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN,
    "request-inside-chunked-body": POST
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n" % len(ADMIN)
    + ADMIN
    + b"\r\n0\r\n\r\n",
    "chunk-extension": POST + b"Transfer-Encoding: chunked\r\n\r\n"
    b'3;ext="0\\r\\n\\r\\nGET /admin"\r\nabc\r\n0\r\n\r\n',
    "identity-header-in-trailers": POST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Forwarded-User: admin\r\n\r\n",
    "tab-before-chunked": POST + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    "http-1.0-with-chunked": POST.replace(b"HTTP/1.1", b"HTTP/1.0")
    + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "h2c-upgrade-then-request": GET + b"Connection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + ADMIN,
    # The upstream answers 200 instead of 101: no tunnel may open, so the bytes after the handshake
    # must not reach it unchecked inside one (the websocket smuggling pattern).
    "websocket-upgrade-refused-upstream": b"GET /public/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    + ADMIN,
}


@pytest.mark.parametrize("raw", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_nothing_is_smuggled_to_the_upstream(target: RawTarget, logs: LogCheck, raw: bytes) -> None:
    answer, received = await target.send(raw)
    assert status_of(answer) != 500 and status_of(answer) != 0, answer[:300]
    targets = [r.target for r in received]
    assert "/admin" not in targets and "/public/smuggled" not in targets, targets
    assert len(received) <= 1
    for forwarded in received:
        assert forwarded.header("x-forwarded-user") == []
        assert forwarded.header("transfer-encoding") == [] or forwarded.header("content-length") == []
    logs.assert_clean()


async def test_pipelined_requests_are_each_authorized(target: RawTarget, logs: LogCheck) -> None:
    answer, received = await target.send(
        b"GET /public/1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /admin HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n"
        b"GET /public/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:] if part[:3].isdigit()]
    assert statuses == [200, 401, 200]
    assert [r.target for r in received] == ["/public/1", "/public/3"]
    logs.assert_clean()


async def test_pipelined_requests_after_a_signed_in_one_carry_no_identity(
    target: RawTarget, logs: LogCheck
) -> None:
    """Identity belongs to the request that brought the cookie, not to the connection."""
    cookie = (await signed_in(target.proxy)).header
    answer, received = await target.send(
        f"GET /private HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\nUser-Agent: {BROWSER_UA}\r\n\r\n".encode()
        + b"GET /admin HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n"
        + b"GET /public/p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert [r.target for r in received] == ["/private", "/public/p"]
    assert received[0].header("x-forwarded-email") == ["ada@example.com"]
    assert received[1].header("x-forwarded-email") == [] and received[1].header("x-forwarded-user") == []
    assert b" 401 " in answer
    logs.assert_clean()


async def test_absolute_form_reaches_only_the_configured_upstream(target: RawTarget, logs: LogCheck) -> None:
    """An absolute-form target naming another host than `Host` is refused: upstreams differ on which of
    the two wins, so neither is guessed. Nothing is forwarded, whatever the session."""
    cookie = (await signed_in(target.proxy)).header
    for raw in (
        b"GET http://evil.example/admin HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n",
        b"GET http://evil.example/public/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a@evil.example/public/x HTTP/1.1\r\nHost: a\r\n\r\n",
        f"GET http://evil.example/private HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\n"
        f"User-Agent: {BROWSER_UA}\r\n\r\n".encode(),
    ):
        answer, received = await target.send(raw)
        assert status_of(answer) == 400 and received == []
    # The same host: judged by its path, forwarded in origin form to the one configured upstream.
    answer, received = await target.send(b"GET http://A/public/x/../y?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(answer) == 200
    (forwarded,) = received
    assert forwarded.target == "/public/y?q=1"
    assert forwarded.header("host") == ["a"]  # the browser's Host, as sent (preserve_host)
    logs.assert_clean()


async def test_absolute_form_is_served_like_origin_form(target: RawTarget) -> None:
    cookie = (await signed_in(target.proxy)).header
    answer, received = await target.send(
        f"GET http://app.example/private?q=1 HTTP/1.1\r\nHost: app.example\r\nCookie: {cookie}\r\n"
        f"User-Agent: {BROWSER_UA}\r\n\r\n".encode()
    )
    assert status_of(answer) == 200
    assert [r.target for r in received] == ["/private?q=1"]


async def test_http_1_0_without_host(target: RawTarget, logs: LogCheck) -> None:
    answer, received = await target.send(b"GET /public/x HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200")
    (forwarded,) = received
    assert forwarded.header("host") == [f"127.0.0.1:{target.upstream.port}"]
    answer, received = await target.send(b"GET /private HTTP/1.0\r\nAccept: text/html\r\n\r\n")
    assert status_of(answer) == 302 and b"\r\nLocation: /oauth2/start?" in answer
    answer, received = await target.send(b"GET /private HTTP/1.0\r\nAccept: application/json\r\n\r\n")
    assert status_of(answer) == 401 and received == []
    logs.assert_clean()


async def test_percent_encoded_crlf_never_becomes_a_header(target: RawTarget) -> None:
    answer, received = await target.send(
        b"GET /public/x%0d%0aX-Forwarded-User:%20admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) in (200, 400, 404)
    for forwarded in received:
        assert forwarded.header("x-forwarded-user") == []
        assert "\r" not in forwarded.target and "\n" not in forwarded.target


async def test_forwarding_headers_from_an_untrusted_client_are_replaced(
    target: RawTarget, logs: LogCheck
) -> None:
    """X-Forwarded-* from a peer outside `trusted_proxies` are rewritten; X-Forwarded-Host is then the
    client's own Host header, which is as much the client's choice (SECURITY.md says so)."""
    _, received = await target.send(
        b"GET /public/x HTTP/1.1\r\nHost: chosen.example\r\nX-Forwarded-Host: evil.example\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.1\r\nX-Real-IP: 203.0.113.1\r\n"
        b"Forwarded: for=203.0.113.1\r\nConnection: close\r\n\r\n"
    )
    (forwarded,) = received
    assert forwarded.header("x-forwarded-host") == ["chosen.example"]
    assert forwarded.header("x-forwarded-proto") == ["http"]
    assert forwarded.header("x-forwarded-for") == ["127.0.0.1"]
    logs.assert_clean()


async def test_a_refused_request_is_not_quoted_back(target: RawTarget) -> None:
    marker = b"_authproxy=SECRETSEALEDVALUE"
    answer, _ = await target.send(GET + b"Cookie: " + marker + b"; pad=" + b"x" * 9000 + b"\r\n\r\n")
    assert status_of(answer) == 400
    assert b"SECRETSEALED" not in answer


# --- Expect: 100-continue ------------------------------------------------------------------------------


async def expect_continue(port: int, path: str, body: bytes, extra: str = "") -> tuple[bytes, bytes]:
    """Send headers with `Expect: 100-continue`, the body only after the interim answer; both answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n"
            f"Connection: close\r\n{extra}\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        if interim.startswith(b"HTTP/1.1 100"):
            writer.write(body)
            final = await asyncio.wait_for(reader.read(), 3)
        else:
            final, interim = interim + await asyncio.wait_for(reader.read(), 3), b""
        return interim, final
    finally:
        writer.transport.abort()


async def test_expect_100_continue_to_an_upstream_that_speaks_it(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(routes={"skip_auth": ["^/public/"]})  # the aiohttp echo upstream
    port = int(proxy.url.rsplit(":", 1)[1])
    interim, final = await expect_continue(port, "/public/upload", b"abc")
    assert interim.startswith(b"HTTP/1.1 100")
    assert status_of(final) == 200 and b'"body_length": 3' in final


async def test_expect_100_continue_without_a_session_is_refused(target: RawTarget, logs: LogCheck) -> None:
    _, final = await expect_continue(target.port, "/private", b"abc", "Accept: application/json\r\n")
    assert status_of(final) == 401
    assert target.upstream.requests() == []
    logs.assert_clean()


async def test_expect_100_continue_to_an_upstream_without_interim_answers(
    target: RawTarget, logs: LogCheck
) -> None:
    """The proxy answers the client's expectation itself; the body must then reach an upstream that sends
    no interim answer of its own (RFC 9110, section 10.1.1, allows that), rather than both ends waiting."""
    interim, final = await expect_continue(target.port, "/public/upload", b"abc")
    assert interim.startswith(b"HTTP/1.1 100")
    assert status_of(final) == 200
    (forwarded,) = target.upstream.requests()
    assert forwarded.body == b"abc"
    logs.assert_clean()


# --- slow clients --------------------------------------------------------------------------------------


async def test_unfinished_headers_are_bounded_by_a_short_timeout(target: RawTarget) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        writer.write(GET + b"X-Slow: ")
        await asyncio.sleep(0.1)
        server = target.proxy.runner.server
        assert server is not None
        handlers = server.connections
        assert handlers
        assert max(handler.keepalive_timeout for handler in handlers) <= 75
    finally:
        writer.transport.abort()


async def test_a_stalled_request_body_is_given_up(target: RawTarget, logs: LogCheck) -> None:
    """A client that sends headers and then stops must not hold an upstream connection for ever: enough of
    them would exhaust the upstream pool (512) and turn every other request into a 504."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        writer.write(b"POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        try:  # an answer, or the connection closed: either way the proxy has let go
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UPSTREAM_TIMEOUT + 1)
        except asyncio.IncompleteReadError as closed:
            answer = closed.partial
        assert answer == b"" or status_of(answer) in (400, 408, 502, 504)
    finally:
        writer.transport.abort()
    logs.assert_clean()


# --- what an operator sees -----------------------------------------------------------------------------


@pytest.fixture
async def served(devidp: DevIdp, tmp_path: Path) -> AsyncIterator[ServedProxy]:
    upstream = await RawServer().start()
    proxy = ServedProxy(
        tmp_path,
        idp_url=devidp.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        upstream_url=upstream.url,
    )
    await proxy.start(routes={"skip_auth": ["^/public/"]})
    yield proxy
    await proxy.stop()
    await upstream.stop()


MALFORMED_SAMPLE = ["duplicate-host", "content-length-then-chunked", "100-kb-cookie", "lf-in-header-value"]


async def test_malformed_requests_log_one_line_each_not_a_traceback(served: ServedProxy) -> None:
    """aiohttp reports a client's malformed request as an ERROR with a traceback; `authproxy serve`
    turns it into one JSON line, so a hostile client cannot fill the log with multi-line tracebacks."""
    port = served.port
    for name in MALFORMED_SAMPLE:
        assert status_of(await exchange(port, REFUSED[name])) == 400
    await asyncio.sleep(0.2)
    log = served.log()
    assert "Error handling request" not in log
    assert log.count('"event": "http.bad_request"') + log.count('"event":"http.bad_request"') == len(
        MALFORMED_SAMPLE
    )


async def test_malformed_requests_leave_no_traceback_in_the_served_log(served: ServedProxy) -> None:
    for name in MALFORMED_SAMPLE:
        assert status_of(await exchange(served.port, REFUSED[name])) == 400
    await asyncio.sleep(0.2)
    assert log_problems(served.log()) == []


async def test_console_access_log_cannot_be_forged(
    target: RawTarget, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    await target.send(
        b"GET /public/x%0d%0a2026-01-01T00:00:00Z%20access%20GET%20/forged HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    err = capfd.readouterr().err
    assert not any(line.startswith("2026-01-01T00:00:00Z access") for line in err.splitlines()), err
