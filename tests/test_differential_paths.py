"""Differential path tests: no spelling of a path reaches a protected resource anonymously, on real upstreams.

The proxy judges one canonical path (`authproxy.core.paths.canonical_target`) and forwards exactly that path.
These tests check the other half of the bargain, which no unit test can: that the servers behind it
route that path to the resource the rules judged. Four real upstreams run on loopback (Tomcat 10, Jetty
9, nginx, aiohttp; see support/servlets.py), each with `/public/*`, `/admin/*` and a default resource
that answer with the resource's name, the path as the server decoded it and `X-Forwarded-User`.

A generated corpus of odd spellings (dot segments in every encoding, `;parameters`, double and stray
escapes, backslashes, repeated slashes, NUL, non-ASCII, case variants) goes through the proxy over raw
sockets, so no client library re-normalizes the path, anonymously and signed in. A recording relay
between the proxy and the upstream shows what, if anything, the upstream received for each request (an
`X-Probe` header ties the two together). The rules here: `^/public/` and `\\.css$` skip authentication.

Per upstream, the failures of the whole corpus are collected and reported in one assertion (spelling,
canonical path, status, what the upstream said), which keeps the run to a few seconds per upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import ProxyFactory
from pytest_aiohttp import AiohttpServer
from support import servlets
from support.harness import BROWSER_UA, Browser, Proxy
from support.servlets import PROBE_HEADER, RecordingRelay, Upstreams, make_routing_app, parse_nginx_line

from authproxy.core import paths
from authproxy.runtime import LIVE

# The session-scoped Tomcat, Jetty and nginx (started together, once).
upstream_servers = servlets.upstream_servers

SKIP_AUTH = ["^/public/", "\\.css$"]
EMAIL = "ada@example.com"
UPSTREAM_NAMES = ["tomcat", "jetty", "nginx", "aiohttp"]
SERVLET_CONTAINERS = frozenset({"tomcat", "jetty"})
CONCURRENCY = 16
ANSWER_TIMEOUT = 15.0
# After the last answer, how long a request the proxy wrongly sent on could still be in flight.
SETTLE = 0.2


# --- the corpus ------------------------------------------------------------------------------------------

# Spellings of a parent-directory segment: plain, percent-encoded in any case, half-encoded, double-
# encoded (%25 and the "%%32e" forms some decoders assemble), overlong UTF-8, IIS %u, with parameters,
# with NUL or spaces, and near misses.
PARENT = [
    "..",
    "%2e%2e",
    "%2E%2E",
    "%2e%2E",
    "%2E.",
    "%2e.",
    ".%2e",
    ".%2E",
    "%252e%252e",
    "%252E%252E",
    "%%32e%%32e",
    "%%32%65%%32%65",
    "%25%32%65%25%32%65",
    "%%300",
    "%c0%ae%c0%ae",
    "%C0%AE%C0%AE",
    "%e0%80%ae%e0%80%ae",
    "%u002e%u002e",
    "..;",
    "..;x",
    "..;x=1;y",
    "%2e%2e;",
    ".%2e;",
    "..%3b",
    "..%3B",
    "..%00",
    "..%2500",
    "...",
    "..%20",
    "..%09",
    ".. ",
    "..\\",
    "..%5c",
    "..%2f",
]
# Spellings of a current-directory segment.
CURRENT = [".", "%2e", "%2E", "%252e", ".;", ".;x", "%2e;", "%%32e", "%c0%ae", "%u002e", ".%00"]
# What can stand between two segments.
SEPARATORS = ["//", "/./", "%2f", "%2F", "\\", "%5c", "%5C", "/;/", "/;x/", "/%2e/", "%2f/", "\\/", "/\\"]
# Targets, relative to the root: the protected resource in many disguises, then public ones.
ADMIN_TARGETS = [
    "admin/",
    "admin",
    "admin/x",
    "admin/.",
    "admin/..",
    "admin/%2e",
    "admin/x/..",
    "admin/x/.",
    "admin/x.css",
    "admin/x;.css",
    "admin/x;a=b/y.css",
    "admin/x%3b.css",
    "admin/x%3B.css",
    "admin/x.css;",
    "admin/x.css;x",
    "admin/x%2ecss",
    "admin/x.c%73s",
    "admin/x.CSS",
    "admin/x.css.",
    "admin/x.css%00",
    "admin/x%00.css",
    "admin/x#.css",
    "admin/x%23.css",
    "admin/x?.css",
    "admin/x/.css",
    "admin/x%2f.css",
    "admin/x%20.css",
    "admin;foo/x",
    "admin;/x",
    "admin;x=y/x.css",
    "admin%3bfoo/x",
    "admin./",
    "admin../",
    "admin%20/",
    "admin%09/",
    "ADMIN/",
    "Admin/x",
    "%61dmin/",
    "%41DMIN/",
    "adm%69n/",
    "adm%49n/",
    "%61%64%6d%69%6e/",
    "admin%2f",
    "admin%2Fx",
    "admin%5cx",
    "admin\\x",
    "admin/%C3%A9",
    "admin/\u00e9",
    "adm\u00edn/",
    "%C3%A1dmin/",
    "admin\x00/",
    "admin/\x7f",
]
PUBLIC_TARGETS = [
    "public/",
    "public",
    "public/x",
    "public/x.css",
    "Public/x",
    "PUBLIC/x",
    "%70ublic/x",
    "public;x/y",
    "public/.",
    "public/..",
    "public/x/..",
    "public/%C3%A9",
    "public/\u00e9",
    "public/%e9",
    "public/\udce9",  # a raw 0xE9 byte: not UTF-8 (sent with surrogateescape)
    "public/%22q",
    "public/%25",
    "public/%25zz",
    "public/%zz",
    "public/%4",
    "public/%",
    "public/a%20b",
    "public/%7Bx%7D",
    "public/{x}",
    "public/|",
    'public/"',
    "public/<x>",
    "public/x;jsessionid=1",
    "public/%3B",
    "public/x%3F/y",
    "public/~user",
    "public/%7euser",
    "public/%c0%af",
    "public/%e0%80%af",
    "public/%01",
    "public/%7f",
    "public/%ff",
]
KEY_TARGETS = ["admin/", "admin", "admin/x;.css", "admin/x.css", "public/x", "public/../admin/"]
ROOT_PREFIXES = [
    "//",
    "///",
    "/./",
    "/%2e/",
    "/;/",
    "/;x/",
    "/.;/",
    "/x/../",
    "/x/%2e%2e/",
    "/public/../",
    "/public/x/../../",
    "/%2f",
    "/%2F",
    "\\",
    "/%5c",
    "/%20/",
    "/%00/",
    "/../",
    "/%2e%2e/",
    "/..;/",
]
CSS_BASES = ["/admin/x", "/public/../admin/x", "/public/..;/admin/x", "/admin;x/y"]
CSS_SUFFIXES = [
    ".css",
    ";.css",
    "%3b.css",
    ";x.css",
    ";/.css",
    "/;.css",
    "?.css",
    "#.css",
    "%23.css",
    ".css%00",
    "%00.css",
    "/.css",
    ".css/",
    ".css/.",
    ".css/..",
    ".css;",
    ".%63ss",
]


def generate_corpus() -> list[str]:
    """The spellings, deterministic and without duplicates, in a stable order."""

    def spellings() -> Iterator[str]:
        for target in ADMIN_TARGETS + PUBLIC_TARGETS:
            yield "/" + target
        for prefix, target in itertools.product(ROOT_PREFIXES, KEY_TARGETS):
            yield prefix + target
        for parent in PARENT:
            # Out of the public tree and into the protected one, in several shapes.
            yield f"/public/{parent}/admin/"
            yield f"/public/{parent}/admin"
            yield f"/public/x/{parent}/{parent}/admin/y"
            yield f"/public/{parent}/admin/x.css"
            yield f"/public/{parent}/admin/x;.css"
            yield f"/public/{parent}"
            yield f"/{parent}/admin/"
            yield f"/admin/{parent}/public/x"
        for separator, parent in itertools.product(SEPARATORS, PARENT[:8]):
            yield f"/public{separator}{parent}{separator}admin/"
        for current in CURRENT:
            yield f"/{current}/admin/"
            yield f"/admin/{current}"
            yield f"/public/{current}/x"
            yield f"/public/{current}/../admin/"
        for separator in SEPARATORS:
            yield f"{separator}admin/"
            yield f"/public{separator}x"
            yield f"/admin{separator}x.css"
        for base, suffix in itertools.product(CSS_BASES, CSS_SUFFIXES):
            yield base + suffix
        for slashes in range(2, 6):
            yield "/" * slashes + "admin/"
            yield "/public" + "/" * slashes + "../admin/"
            yield "/public/x" + "/" * slashes + "../../admin/y"
        for dots in range(3, 6):
            yield "/admin" + "." * dots + "/"
            yield "/public/" + "." * dots + "/admin/"

    # A trailing space is not part of the target at all: the request-line parser takes it as the
    # separator before the version, so such a spelling says nothing about paths.
    return list(dict.fromkeys(s for s in spellings() if not s.endswith((" ", "\t"))))


CORPUS = generate_corpus()


def test_corpus_is_large_varied_and_deterministic() -> None:
    assert generate_corpus() == CORPUS
    assert len(CORPUS) == len(set(CORPUS))
    assert len(CORPUS) >= 300, len(CORPUS)
    judged = [judge(spelling) for spelling in CORPUS]
    refused = sum(1 for target in judged if target is None)
    public = sum(1 for target in judged if target is not None and is_public(target.path))
    protected = len(CORPUS) - refused - public
    # Each kind of verdict is well represented, so no single rule carries the whole corpus.
    assert min(refused, public, protected) >= 50, (refused, public, protected)
    print(f"{len(CORPUS)} spellings: {refused} refused, {public} public, {protected} protected")


# --- the rules' verdicts -----------------------------------------------------------------------------------


def judge(spelling: str) -> paths.Target | None:
    """`canonical_target(spelling)`, None when it refuses the spelling."""
    try:
        return paths.canonical_target(spelling)
    except paths.AmbiguousTarget:
        return None


def is_public(path: str) -> bool:
    return any(re.search(rule, path) for rule in SKIP_AUTH)


def decoded(path: str) -> str:
    """What a server that percent-decodes a canonical path makes of it (bytes that are not UTF-8 kept
    as surrogates, as nginx keeps them as raw bytes)."""
    return unquote(path, errors="surrogateescape")


def expected_resource(upstream: str, path: str) -> str:
    """The resource `upstream` must route the canonical `path` to (judged on the decoded path, as they
    all route). Servlet containers map `/admin/*` to `/admin` as well (the Servlet specification,
    section 12.2); nginx's `location /admin/` and aiohttp's `/admin/{tail}` need the slash."""
    plain = decoded(path)
    for name in ("public", "admin"):
        if plain.startswith(f"/{name}/") or (upstream in SERVLET_CONTAINERS and plain == f"/{name}"):
            return name
    return "default"


# --- what an upstream said -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routed:
    """An upstream's answer: the resource it routed to, the path it decoded, the raw URI it received."""

    resource: str
    path: str
    uri: str
    user: str | None


def routed_by(upstream: str, body: bytes) -> Routed:
    """Parse the JSON line of `upstream`; ValueError when the body is not such a line."""
    if upstream == "nginx":
        line = parse_nginx_line(body)
        return Routed(line["location"], line["uri"], line["request_uri"].partition("?")[0], line["user"])
    data: dict[str, Any] = json.loads(body)
    if upstream == "aiohttp":
        return Routed(data["servlet"], data["path"], data["rawPath"].partition("?")[0], data["user"])
    path = data["servletPath"] + (data["pathInfo"] or "")
    return Routed(data["servlet"], path, data["requestURI"], data["user"])


def expected_decoded(upstream: str, path: str) -> str:
    """The decoded path `upstream` reports for the canonical `path`."""
    if upstream == "jetty":
        # Jetty 9 decodes UTF-8, and a path that is not UTF-8 all over again as ISO-8859-1
        # (URIUtil.decodePath), so `%C0%AE` is "\u00c0\u00ae", never ".".
        try:
            return unquote(path, errors="strict")
        except UnicodeDecodeError:
            return unquote(path, encoding="latin-1")
    if upstream == "tomcat":
        # Tomcat answers 400 to a path that is not UTF-8, so only UTF-8 gets this far.
        return unquote(path, errors="replace")
    if upstream == "aiohttp":
        # yarl decodes what is UTF-8 and leaves the escapes of the bytes that are not.
        return _ESCAPE_RUN.sub(_decode_keeping_invalid, path)
    return decoded(path)


_ESCAPE_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _decode_keeping_invalid(run: re.Match[str]) -> str:
    text = bytes.fromhex(run.group().replace("%", "")).decode("utf-8", "surrogateescape")
    return "".join(f"%{ord(char) - 0xDC00:02X}" if 0xDC80 <= ord(char) <= 0xDCFF else char for char in text)


# --- raw HTTP through the proxy --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def summary(self) -> str:
        return self.body[:200].decode("utf-8", "replace").strip()


def parse_answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if match is None:
        return Answer(0, {}, raw)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return Answer(int(match.group(1)), headers, body)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def send(port: int, spelling: str, probe: str, cookie: str | None = None) -> Answer:
    """One GET of `spelling`, sent byte for byte (non-ASCII as UTF-8, lone surrogates as raw bytes)."""
    head = (
        f"GET {spelling} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {BROWSER_UA}\r\n"
        f"Accept: application/json\r\n{PROBE_HEADER}: {probe}\r\nConnection: close\r\n"
    )
    if cookie is not None:
        head += f"Cookie: {cookie}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((head + "\r\n").encode("utf-8", "surrogateescape"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), ANSWER_TIMEOUT)
    finally:
        writer.transport.abort()
    return parse_answer(raw)


@dataclass
class Bench:
    """The proxy in front of one upstream, with the recording relay between them."""

    upstream: str
    proxy: Proxy
    relay: RecordingRelay
    probes: Iterator[int]

    @property
    def port(self) -> int:
        return int(self.proxy.url.rsplit(":", 1)[1])

    async def exchange(self, spelling: str, cookie: str | None = None) -> tuple[Answer, list[str]]:
        """The answer to `spelling`, and the targets the upstream received for it."""
        probe = str(next(self.probes))
        answer = await send(self.port, spelling, probe, cookie)
        await asyncio.sleep(SETTLE)
        return answer, self.relay.seen.get(probe, [])

    async def run(self, spellings: list[str], cookie: str | None = None) -> list[Exchange]:
        """All spellings, CONCURRENCY at a time; each with what the upstream received for it."""
        limit = asyncio.Semaphore(CONCURRENCY)
        first = next(self.probes)
        for _ in spellings:
            next(self.probes)

        async def one(index: int, spelling: str) -> Answer:
            async with limit:
                return await send(self.port, spelling, str(first + index), cookie)

        answers = await asyncio.gather(*(one(i, s) for i, s in enumerate(spellings)))
        await asyncio.sleep(SETTLE)
        return [
            Exchange(spelling, judge(spelling), answer, self.relay.seen.get(str(first + index), []))
            for index, (spelling, answer) in enumerate(zip(spellings, answers, strict=True))
        ]

    async def sign_in(self) -> tuple[str, str]:
        """A signed-in Cookie header value and the user id the upstream then sees, via a real login."""
        browser = Browser()
        try:
            status, _, page = await browser.login(f"{self.proxy.url}/", EMAIL)
            assert status == 200, page[:500]
            name = self.proxy.app[LIVE].runtime.cookie.name
            value = browser.cookie(name)
            assert value, "no session cookie after the login"
        finally:
            await browser.close()
        user = routed_by(self.upstream, page.encode("utf-8", "surrogateescape")).user
        assert user, f"the upstream saw no X-Forwarded-User after the login: {page[:300]}"
        return f"{name}={value}", user


@dataclass(frozen=True)
class Exchange:
    spelling: str
    target: paths.Target | None  # the rules' canonical target; None when canonical_target refuses
    answer: Answer
    forwarded: list[str]  # request targets the upstream received for this one request

    def describe(self, problems: list[str]) -> str:
        canonical = "REFUSED" if self.target is None else self.target.path
        return (
            f"{self.spelling!r} (canonical {canonical!r}) -> {self.answer.status}, upstream received "
            f"{self.forwarded!r}, answered {self.answer.summary()!r}: {'; '.join(problems)}"
        )


BenchFactory = Callable[[str], Awaitable[Bench]]


@pytest.fixture
async def bench_factory(
    request: pytest.FixtureRequest, proxy_factory: ProxyFactory, aiohttp_server: AiohttpServer
) -> AsyncIterator[BenchFactory]:
    relays: list[RecordingRelay] = []
    probes = itertools.count(1)

    async def start(upstream: str) -> Bench:
        if upstream == "aiohttp":
            url = str((await aiohttp_server(make_routing_app())).make_url("")).rstrip("/")
        else:
            servers: Upstreams = request.getfixturevalue("upstream_servers")
            url = getattr(servers, upstream).url
        relay = await RecordingRelay(int(url.rsplit(":", 1)[1])).start()
        relays.append(relay)
        proxy = await proxy_factory(
            routes={"skip_auth": SKIP_AUTH}, upstreams=[{"url": relay.url, "timeout": 5}]
        )
        return Bench(upstream, proxy, relay, probes)

    yield start
    for relay in relays:
        await relay.stop()


# --- the upstreams on their own --------------------------------------------------------------------------

# (path sent directly, resource, decoded path); the decoded path is what a servlet container reports.
DIRECT = [
    ("/public/a%20b", "public", "/public/a b"),
    ("/public/%C3%A9%22q", "public", '/public/\u00e9"q'),
    ("/admin/x", "admin", "/admin/x"),
    ("/admin/", "admin", "/admin/"),
    ("/", "default", "/"),
    ("/other/x", "default", "/other/x"),
    ("/publicx", "default", "/publicx"),
]


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_each_upstream_routes_and_reports_as_expected(
    upstream: str, request: pytest.FixtureRequest, aiohttp_server: AiohttpServer
) -> None:
    """Without the proxy: each server answers every resource with the JSON the differential tests read."""
    if upstream == "aiohttp":
        url = str((await aiohttp_server(make_routing_app())).make_url("")).rstrip("/")
    else:
        servers: Upstreams = request.getfixturevalue("upstream_servers")
        url = getattr(servers, upstream).url
    port = int(url.rsplit(":", 1)[1])
    for path, resource, plain in DIRECT:
        for user in (None, "user-1"):
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            if user:
                head += f"X-Forwarded-User: {user}\r\n"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((head + "\r\n").encode())
            answer = parse_answer(await asyncio.wait_for(reader.read(-1), ANSWER_TIMEOUT))
            writer.close()
            assert answer.status == 200, (upstream, path, answer)
            assert answer.headers["content-type"].startswith("text/plain"), answer.headers
            routed = routed_by(upstream, answer.body)
            assert routed.resource == expected_resource(upstream, path) == resource, (path, routed)
            assert routed.path == plain, (path, routed)
            assert routed.uri == path, (path, routed)
            assert routed.user == user, (path, routed)
    # The servlet containers' "/admin/*" also covers "/admin"; nginx's and aiohttp's prefixes do not.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /admin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = parse_answer(await asyncio.wait_for(reader.read(-1), ANSWER_TIMEOUT))
    writer.close()
    assert routed_by(upstream, answer.body).resource == expected_resource(upstream, "/admin")


def test_nginx_lines_are_read_even_when_not_json() -> None:
    line = b'{"location":"public","uri":"/public/"q\\\xe9","request_uri":"/public/%22q","user":null}\n'
    assert parse_nginx_line(line) == {
        "location": "public",
        "uri": '/public/"q\\\udce9',
        "request_uri": "/public/%22q",
        "user": None,
    }


# --- the differential tests ------------------------------------------------------------------------------


def refusal_problems(exchange: Exchange) -> Iterator[str]:
    """A spelling canonical_target refuses: answered 400 by the proxy, and sent to nobody."""
    if exchange.answer.status != 400:
        yield "refused by canonical_target, but not answered 400"
    if exchange.forwarded:
        yield "refused by canonical_target, but forwarded"


def routing_problems(upstream: str, target: paths.Target, routed: Routed) -> Iterator[str]:
    """The upstream must have routed the canonical path to the resource the rules judged, and decoded
    the very path that was judged from the very URI the proxy sent."""
    if routed.resource != expected_resource(upstream, target.path):
        yield f"the upstream routed to {routed.resource!r}, not what the rules judged"
    if routed.path != expected_decoded(upstream, target.path):
        yield f"the upstream decoded the path as {routed.path!r}"
    if routed.uri != target.wire:
        yield f"the upstream reports the URI {routed.uri!r}"


def anonymous_problems(bench: Bench, exchange: Exchange) -> Iterator[str]:
    status, target, forwarded = exchange.answer.status, exchange.target, exchange.forwarded
    if target is None:
        yield from refusal_problems(exchange)
        return
    public = is_public(target.path)
    if not public and forwarded:
        yield "NOT PUBLIC, yet forwarded anonymously"
    if forwarded and forwarded != [target.wire_target]:
        yield f"forwarded something else than the canonical {target.wire_target!r}"
    if status == 200:
        if not public:
            yield "NOT PUBLIC, yet answered 200 anonymously"
        try:
            routed = routed_by(bench.upstream, exchange.answer.body)
        except ValueError:
            yield "200 without the upstream's JSON"
            return
        if routed.resource == "admin" and not public:
            yield "REACHED THE ADMIN RESOURCE anonymously"
        yield from routing_problems(bench.upstream, target, routed)
        if routed.user is not None:
            yield "an anonymous request carried X-Forwarded-User"
    elif status in (401, 302):
        if public:
            yield "judged public, yet refused as unauthenticated"
    elif status == 400:
        if not forwarded:
            yield "answered 400 by the proxy, though canonical_target accepts it"
    else:
        yield "unexpected status"


def signed_in_problems(bench: Bench, exchange: Exchange, user: str) -> Iterator[str]:
    status, target, forwarded = exchange.answer.status, exchange.target, exchange.forwarded
    if target is None:
        yield from refusal_problems(exchange)
        return
    if forwarded != [target.wire_target]:
        yield f"the upstream did not receive exactly {target.wire_target!r}"
    if status == 200:
        try:
            routed = routed_by(bench.upstream, exchange.answer.body)
        except ValueError:
            yield "200 without the upstream's JSON"
            return
        yield from routing_problems(bench.upstream, target, routed)
        # Public paths skip authentication altogether: the session is not even read, so no identity.
        wanted = None if is_public(target.path) else user
        if routed.user != wanted:
            yield f"X-Forwarded-User was {routed.user!r}, not {wanted!r}"
    elif status != 400 or not forwarded:
        # A 400 is acceptable only from the upstream, refusing the canonical form itself.
        yield "unexpected status for a signed-in request"


def upstream_refusals(exchanges: list[Exchange]) -> list[str]:
    """Canonical targets the upstream itself refused (400): not a hole, but worth knowing."""
    return sorted(
        {exchange.target.wire for exchange in exchanges if exchange.target and exchange.answer.status == 400}
    )


def report(upstream: str, title: str, problems: list[str], exchanges: list[Exchange]) -> str:
    shown = "\n".join(problems[:80])
    more = f"\n... and {len(problems) - 80} more" if len(problems) > 80 else ""
    refusals = upstream_refusals(exchanges)
    return (
        f"{upstream}, {title}: {len(problems)} of {len(exchanges)} spellings went wrong\n{shown}{more}\n"
        f"(canonical paths {upstream} itself answered 400: {refusals})"
    )


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_no_spelling_reaches_a_protected_resource_anonymously(
    upstream: str, bench_factory: BenchFactory
) -> None:
    bench = await bench_factory(upstream)
    exchanges = await bench.run(CORPUS)
    problems = [
        exchange.describe(found)
        for exchange in exchanges
        if (found := list(anonymous_problems(bench, exchange)))
    ]
    print(report(upstream, "anonymous", problems, exchanges))
    assert not problems, report(upstream, "anonymous", problems, exchanges)


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_signed_in_requests_reach_the_resource_the_rules_judged(
    upstream: str, bench_factory: BenchFactory
) -> None:
    bench = await bench_factory(upstream)
    cookie, user = await bench.sign_in()
    exchanges = await bench.run(CORPUS, cookie)
    problems = [
        exchange.describe(found)
        for exchange in exchanges
        if (found := list(signed_in_problems(bench, exchange, user)))
    ]
    print(report(upstream, "signed in", problems, exchanges))
    assert not problems, report(upstream, "signed in", problems, exchanges)


# --- regressions with exact expectations -----------------------------------------------------------------


async def test_css_parameter_never_reaches_jettys_admin_servlet(bench_factory: BenchFactory) -> None:
    """Jetty routes `/admin/x;.css` to the admin servlet; a `\\.css$` rule must not see it as a stylesheet."""
    bench = await bench_factory("jetty")
    answer, forwarded = await bench.exchange("/admin/x;.css")
    assert answer.status == 401, answer
    assert forwarded == []


@pytest.mark.parametrize("upstream", sorted(SERVLET_CONTAINERS))
@pytest.mark.parametrize("spelling", ["/public/%2e%2e;/admin", "/public/..;/admin", "/public/..;/admin/x"])
async def test_dot_dot_with_parameters_is_refused(
    upstream: str, spelling: str, bench_factory: BenchFactory
) -> None:
    """Tomcat routes `/public/..;/admin` to the admin servlet: the proxy must refuse it outright."""
    bench = await bench_factory(upstream)
    answer, forwarded = await bench.exchange(spelling)
    assert answer.status == 400, answer
    assert forwarded == []


@pytest.mark.parametrize(
    "spelling",
    [
        "/public/%%32e%%32e/admin/",
        "/public/%%32e/admin/",
        "/public/%25%32%65%25%32%65/admin/",
        "/public/%25%32%65/admin/",
        "/public/%%300/admin/",
        "/public/x%%300",
    ],
)
async def test_double_encoded_escapes_are_refused(spelling: str, bench_factory: BenchFactory) -> None:
    bench = await bench_factory("tomcat")
    answer, forwarded = await bench.exchange(spelling)
    assert answer.status == 400, answer
    assert forwarded == []
