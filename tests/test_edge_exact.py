"""What passes is exactly what was judged: header bytes, cookies, framing look-alikes and foreign identity
headers, seen by a byte-recording upstream behind a real proxy.

The upstream (`support.chaos.RawServer`) keeps every byte it receives, so each test states what reached
the application byte for byte, not what a client library made of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import ProxyFactory
from support.chaos import RawRequest, RawServer, RawTarget, send_raw, status_of
from support.harness import BROWSER_UA
from support.logins import signed_in

from authproxy.core.headers import spelling_variants

PUBLIC = b"GET /public/x HTTP/1.1\r\nHost: a\r\n"
FOREIGN = [
    "Remote-User",
    "X-Remote-User",
    "X-WEBAUTH-USER",
    "Remote-Email",
    "Remote-Groups",
    "X-authentik-username",
    "X-Pomerium-Claim-Email",
    "OIDC-CLAIM-email",
    "X-Amzn-Oidc-Identity",
    "Cf-Access-Authenticated-User-Email",
    "X-Goog-Authenticated-User-Email",
    "X-MS-CLIENT-PRINCIPAL-NAME",
    "X-Real-IP",
    "Client-IP",
    "True-Client-IP",
    "X-Client-IP",
    "X-Originating-IP",
    "Forwarded",
    "X-Forwarded-Scheme",
    "X-Forwarded-Ssl",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Original-URL",
    "X-Original-URI",
    "X-Rewrite-URL",
    "X-Host",
    "X-App-Tenant",  # from strip_extra
]


@pytest.fixture
async def edge(proxy_factory: ProxyFactory) -> AsyncIterator[RawTarget]:
    upstream = await RawServer().start()
    proxy = await proxy_factory(
        routes={"skip_auth": ["^/public/"]},
        upstreams=[{"url": upstream.url, "timeout": 2}],
        headers={"strip_extra": ["X-App-Tenant"]},
    )
    yield RawTarget(proxy, upstream)
    await upstream.stop()


def raw_header(request: RawRequest, name: bytes) -> list[bytes]:
    """Values of `name` as the exact bytes on the wire (RawRequest.header decodes them)."""
    found = []
    for line in request.head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.lower() == name.lower():
            found.append(value.strip(b" \t"))
    return found


async def test_foreign_identity_ip_and_scheme_headers_never_reach_the_app(edge: RawTarget) -> None:
    lines = [f"{variant}: spoofed\r\n".encode() for name in FOREIGN for variant in spelling_variants(name)]
    for start in range(0, len(lines), 60):  # the parser takes at most 100 header lines
        batch = b"".join(lines[start : start + 60])
        answer, received = await edge.send(PUBLIC + batch + b"Connection: close\r\n\r\n")
        assert status_of(answer) == 200
        (forwarded,) = received
        assert b"spoofed" not in forwarded.head


async def test_non_utf8_header_bytes_arrive_unchanged(edge: RawTarget) -> None:
    answer, received = await edge.send(
        PUBLIC + b"X-Test: a\xffb\r\nX-Latin: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200
    (forwarded,) = received
    assert raw_header(forwarded, b"x-test") == [b"a\xffb"]
    assert raw_header(forwarded, b"x-latin") == [b"caf\xe9"]
    assert raw_header(forwarded, b"x-utf8") == [b"caf\xc3\xa9"]


async def test_a_look_alike_of_the_session_cookie_is_not_turned_into_it(edge: RawTarget) -> None:
    """`_authproxy\\xff` is not the proxy's cookie, so it passes, but as sent: never as `_authproxy`."""
    answer, received = await edge.send(
        PUBLIC + b"Cookie: _authproxy\xff=SECRET; app=1\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200
    (forwarded,) = received
    assert raw_header(forwarded, b"cookie") == [b"_authproxy\xff=SECRET; app=1"]
    assert b"_authproxy=SECRET" not in forwarded.head


async def test_the_session_cookie_is_stripped_by_its_exact_name(edge: RawTarget) -> None:
    cookie = (await signed_in(edge.proxy)).header
    answer, received = await edge.send(
        f"GET /private HTTP/1.1\r\nHost: a\r\nUser-Agent: {BROWSER_UA}\r\n".encode()
        + b"Cookie: a=1;"
        + cookie.encode()
        + b";_authproxy_x=2; _AUTHPROXY=3\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200
    (forwarded,) = received
    assert raw_header(forwarded, b"cookie") == [b"a=1; _authproxy_x=2; _AUTHPROXY=3"]


@pytest.mark.parametrize(
    "name",
    ["Content_Length", "content.length", "Transfer_Encoding", "Transfer.Encoding", "Keep_Alive", "expect"],
)
async def test_framing_look_alikes_are_not_forwarded(edge: RawTarget, name: str) -> None:
    answer, received = await edge.send(
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        + name.encode()
        + b": 100-continue\r\nConnection: close\r\n\r\nabc"
    )
    if answer.startswith(b"HTTP/1.1 100 "):  # the proxy answered the expectation itself
        answer = answer.split(b"\r\n\r\n", 1)[1]
    assert status_of(answer) == 200
    (forwarded,) = received
    assert forwarded.body == b"abc"
    names = [line.partition(b":")[0].lower() for line in forwarded.head.split(b"\r\n")[1:]]
    assert name.lower().encode() not in names or name.lower() == "content-length"
    assert raw_header(forwarded, b"content-length") == [b"3"]


async def test_expect_is_answered_by_the_proxy_and_never_forwarded(edge: RawTarget) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(
            b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"abc")
        final = await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.transport.abort()
    assert status_of(final) == 200
    (forwarded,) = edge.upstream.seen[-1:]
    assert raw_header(forwarded, b"expect") == []
    assert forwarded.body == b"abc"


@pytest.mark.parametrize(
    "target",
    [
        b"/public/x;.css/../..;/admin",
        b"/public/%2e%2e;/admin",
        b"/public/%%32e%%32e/admin",
        b"/public/%25%32%65%25%32%65/admin",
        b"/public/%%300",
        b"/public/a%2fb",
        b"/public/a#b",
        b"/public/a\\b",
        b"/public/%0d%0aX:%20y",
    ],
)
async def test_ambiguous_targets_are_refused_and_forward_nothing(edge: RawTarget, target: bytes) -> None:
    answer, received = await edge.send(
        b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 400
    assert received == []


async def test_the_upstream_receives_the_canonical_path_and_the_query_as_sent(edge: RawTarget) -> None:
    answer, received = await edge.send(
        b"GET //public/./%61b;jsessionid=1/c/..?q=%2F..%2f&x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200
    (forwarded,) = received
    assert forwarded.target == "/public/ab/?q=%2F..%2f&x"


async def test_parameters_can_be_kept_on_the_wire(proxy_factory: ProxyFactory) -> None:
    upstream = await RawServer().start()
    try:
        proxy = await proxy_factory(
            routes={"skip_auth": ["^/public/"], "keep_path_parameters": True},
            upstreams=[{"url": upstream.url, "timeout": 2}],
        )
        edge = RawTarget(proxy, upstream)
        answer, received = await edge.send(
            b"GET /public/a;jsessionid=1/b?x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert status_of(answer) == 200
        assert [r.target for r in received] == ["/public/a;jsessionid=1/b?x"]
        # The rules still judge without them: a suffix in the parameters makes nothing public.
        answer, received = await edge.send(
            b"GET /admin/x;.css HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        )
        assert status_of(answer) == 401 and received == []
    finally:
        await upstream.stop()


async def test_split_forwarding_header_lines_are_read_as_one_list(edge: RawTarget) -> None:
    """From an untrusted peer every X-Forwarded-* line is replaced, however many there are."""
    answer, received = await edge.send(
        PUBLIC + b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 198.51.100.8\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
        b"x-forwarded-host: evil2\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200
    (forwarded,) = received
    assert raw_header(forwarded, b"x-forwarded-for") == [b"127.0.0.1"]
    assert raw_header(forwarded, b"x-forwarded-proto") == [b"http"]
    assert raw_header(forwarded, b"x-forwarded-host") == [b"a"]


async def test_non_utf8_response_header_bytes_reach_the_client_unchanged(edge: RawTarget) -> None:
    edge.upstream.behaviour = send_raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        b'Content-Disposition: attachment; filename="caf\xe9.txt"\r\nX-Odd: a\xffb\r\n\r\nok'
    )
    answer, _ = await edge.send(PUBLIC + b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b'\r\nContent-Disposition: attachment; filename="caf\xe9.txt"\r\n' in head
    assert b"\r\nX-Odd: a\xffb" in head
    assert body == b"ok"
    # A UTF-8 value takes the ordinary path and arrives as sent too.
    edge.upstream.behaviour = send_raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Utf8: caf\xc3\xa9\r\n\r\nok"
    )
    answer, _ = await edge.send(PUBLIC + b"Connection: close\r\n\r\n")
    assert b"\r\nX-Utf8: caf\xc3\xa9\r\n" in answer
