"""Forward-auth for every front proxy: `[forward_auth] success_status`, `/oauth2/auth/<path>` (Envoy's
`ext_authz`), `X-Original-URL`/`-Method` (ingress-nginx), which source wins and when they disagree, and
`deploy/envoy/envoy.yaml` replayed request by request.

Envoy is not packaged here, so its part replays the exact check request Envoy's ext_authz HTTP client
builds (`source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc`): the downstream method,
`path_prefix` + the downstream `:path` (query included, spelled as the client sent it), the downstream
`Host`, `content-length: 0`, `authorization` and the headers `allowed_headers` matches, then the headers
Envoy's own HTTP client adds. The downstream request is what the example's connection manager and
header-mutation filter make of a browser's request. The shape and the patterns are read from the
example file, and the requests go over a raw socket to a real authproxy, so neither aiohttp's client
nor the test can tidy the path. Envoy's decision is then applied as Envoy applies it: a pass only on
200, with the headers `allowed_upstream_headers` matches.

nginx (`deploy/nginx/authproxy.conf`, see tests/test_nginx.py and tests/test_route_policy.py) is run
once more here with `success_status = 200`; Caddy is tests/test_caddy.py, ingress-nginx
tests/test_ingress_nginx.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import ProxyFactory
from multidict import CIMultiDict
from support.echo import received_headers
from support.harness import BROWSER_UA, HTML, Browser, Proxy, deep_merge, free_port
from support.logins import SignedIn, signed_in
from support.nginx import Nginx, site_tls, start_nginx
from yarl import URL

ROOT = Path(__file__).resolve().parents[1]
ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
ADA = "ada@example.com"
BOB = "bob@staff.example"
JSON = {"Accept": "application/json"}
TRUSTED = {"server": {"trusted_proxies": ["127.0.0.1/32"]}}
ROUTES: dict[str, Any] = {
    "routes": [
        {"path": "/open/", "auth": "public"},
        {"path": "/staff/", "allowed_email_domains": ["staff.example"]},
        {"path": "/forms/", "auth": "public", "methods": ["GET"]},
        {"path": "/maybe/", "auth": "optional"},
        {"host": "admin.test", "path": "/", "allowed_emails": [BOB]},
    ]
}
IDENTITY = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-preferred-username")
# Spellings of /staff/x (or worse) that begin like the public /open/: none may pass anonymously.
PATH_TRICKS = [
    "/open/%2e%2e/staff/x",
    "/open/../staff/x",
    "/open;x/../staff/x",
    "/open/./../staff/x",
    "/open//../staff/x",
    "/open/%2E%2E/staff/x",
    "/open/x/..%2f..%2fstaff/x",
    "/open/..;/staff/x",
    "/open/%252e%252e/staff/x",
]


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def identity(self) -> dict[str, str]:
        return {name: value for name, value in self.headers.items() if name.lower() in IDENTITY}


async def raw_request(proxy: Proxy, head: str) -> Reply:
    """Send `head` (request line and headers, CRLF-separated, no body) as bytes; read one answer (a HEAD's
    has no body)."""
    url = URL(proxy.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        headers: CIMultiDict[str] = CIMultiDict()
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.add(name.strip(), value.strip())
        length = 0 if head.startswith("HEAD ") else int(headers.get("Content-Length", "0"))
        body = await reader.readexactly(length)
        return Reply(status, headers, body)
    finally:
        writer.close()
        await writer.wait_closed()


async def check(
    proxy: Proxy, target: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    """One request to the proxy with `target` on its request line exactly as given."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {URL(proxy.url).raw_authority}"]
    given = dict(headers or {})
    if "Host" in given:
        lines[1] = f"Host: {given.pop('Host')}"
    lines += [f"{name}: {value}" for name, value in given.items()]
    return await raw_request(proxy, "\r\n".join(lines))


@pytest.fixture
async def trusting(proxy_factory: ProxyFactory) -> Proxy:
    """A proxy behind a trusted front proxy (127.0.0.1), with the route table."""
    return await proxy_factory(**deep_merge(TRUSTED, ROUTES))


@pytest.fixture
async def untrusting(proxy_factory: ProxyFactory) -> Proxy:
    """The same route table, and no trusted proxies."""
    return await proxy_factory(**ROUTES)


# --- success_status -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [202, 200])
async def test_an_allowed_check_answers_success_status(
    proxy_factory: ProxyFactory, browser: Browser, status: int
) -> None:
    proxy = await proxy_factory(forward_auth={"success_status": status}, **deep_merge(TRUSTED, ROUTES))
    session = await signed_in(proxy, browser)
    cookie = {"Cookie": session.header, "User-Agent": BROWSER_UA}
    for target, headers in [
        ("/oauth2/auth", cookie),
        ("/oauth2/auth/reports", cookie),
        ("/oauth2/auth", {**cookie, "X-Forwarded-Uri": "/reports"}),
        ("/oauth2/auth", {**cookie, "X-Original-URL": "https://app.example.com/reports"}),
    ]:
        answer = await check(proxy, target, headers=headers)
        assert answer.status == status, (target, headers, answer.body[:200])
        assert answer.identity["X-Auth-Request-Email"] == ADA
    # Anonymous passes (a public route, an optional one without a session) answer the same status.
    for target in ("/oauth2/auth/open/x", "/oauth2/auth/maybe/x"):
        answer = await check(proxy, target)
        assert answer.status == status and answer.identity == {}, target
    assert (await check(proxy, "/oauth2/auth/reports")).status == 401


# --- /oauth2/auth/<path> ---------------------------------------------------------------------------------


async def test_the_appended_path_is_the_check_of_that_path_and_never_proxied(
    untrusting: Proxy, browser: Browser
) -> None:
    """From any peer: the check's own target is what it asks about, judged as if that request had been
    sent to the proxy itself (host, method, canonical path)."""
    proxy = untrusting
    assert (await check(proxy, "/oauth2/auth/open/x?q=1")).status == 202
    private = await check(proxy, "/oauth2/auth/reports?q=1", headers={"Accept": HTML})
    assert private.status == 401 and "Location" not in private.headers
    assert "X-Upstream" not in private.headers  # answered by authproxy, never the echo upstream
    assert private.json()["error"] == "unauthorized"
    # The original method: /forms/ is public for GET only.
    assert (await check(proxy, "/oauth2/auth/forms/x")).status == 202
    assert (await check(proxy, "/oauth2/auth/forms/x", method="HEAD")).status == 401
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        answer = await check(proxy, "/oauth2/auth/forms/x", method=method, headers={"Content-Length": "0"})
        assert answer.status == 401 and "X-Upstream" not in answer.headers, method

    session = await signed_in(proxy, browser, ADA)
    ada = {"Cookie": session.header, "User-Agent": BROWSER_UA}
    answer = await check(proxy, "/oauth2/auth/", method="POST", headers={**ada, "Content-Length": "0"})
    assert answer.status == 202 and answer.identity["X-Auth-Request-Email"] == ADA
    # The Host chooses host routes, as it would for a proxied request.
    denied = await check(proxy, "/oauth2/auth/x", headers={**ada, **JSON, "Host": "admin.test"})
    assert denied.status == 403 and denied.json()["error"] == "access_denied"
    assert (await check(proxy, "/oauth2/auth/staff/x", headers={**ada, **JSON})).status == 403


async def test_the_query_of_an_appended_path_is_the_original_requests_not_a_narrowing(
    untrusting: Proxy, browser: Browser
) -> None:
    session = await signed_in(untrusting, browser, ADA)
    ada = {"Cookie": session.header, "User-Agent": BROWSER_UA}
    narrowing = "allowed_emails=bob@staff.example"
    assert (await check(untrusting, f"/oauth2/auth/search?{narrowing}", headers=ada)).status == 202
    # On /oauth2/auth itself the query still narrows (nginx locations with their own rules).
    assert (await check(untrusting, f"/oauth2/auth?{narrowing}", headers=ada)).status == 403
    assert (
        await check(untrusting, "/oauth2/auth?allowed_email_domains=example.com", headers=ada)
    ).status == 202


@pytest.mark.parametrize("spelling", PATH_TRICKS)
async def test_an_appended_path_trick_gets_no_public_leniency(untrusting: Proxy, spelling: str) -> None:
    answer = await check(untrusting, "/oauth2/auth" + spelling, headers=JSON)
    assert answer.status in (400, 401), (spelling, answer.status)


async def test_a_canonical_public_path_spelled_otherwise_needs_a_session(untrusting: Proxy) -> None:
    for spelling in ("/open/./x", "/open//x", "/%6Fpen/x", "/open/y/../x", "/open/x;v=1"):
        assert (await check(untrusting, "/oauth2/auth" + spelling, headers=JSON)).status == 401, spelling


@pytest.mark.parametrize(
    "target",
    [
        "/oauth2/auth/a%2fb",  # an encoded slash: upstreams differ on it
        "/oauth2/auth/a%00b",
        "/oauth2/auth/a\\b",
        "/oauth2/%61uth/open/x",  # the check's own prefix spelled otherwise
        "/oauth2/auth/%2e%2e/oauth2/userinfo%",
    ],
)
async def test_an_ambiguous_appended_target_is_refused(untrusting: Proxy, target: str) -> None:
    answer = await check(untrusting, target, headers=JSON)
    assert answer.status == 400 and answer.json()["error"] == "ambiguous_request", target


async def test_the_old_skip_auth_rules_apply_to_every_source(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(routes={"skip_auth": ["GET ^/public/"]}, **TRUSTED)
    for target, headers in [
        ("/oauth2/auth/public/x", {}),
        ("/oauth2/auth", {"X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"}),
        ("/oauth2/auth", {"X-Original-URL": "https://app.test/public/x", "X-Original-Method": "GET"}),
    ]:
        answer = await check(proxy, target, headers=headers)
        assert answer.status == 202 and answer.identity == {}, (target, headers)
    assert (await check(proxy, "/oauth2/auth/public/x", method="POST")).status == 401
    assert (await check(proxy, "/oauth2/auth/public/%2e%2e/x")).status == 401
    assert (await check(proxy, "/oauth2/auth/private")).status == 401


# --- which source wins -----------------------------------------------------------------------------------


async def test_headers_count_from_trusted_proxies_only(trusting: Proxy, untrusting: Proxy) -> None:
    public = [
        {"X-Forwarded-Uri": "/open/x"},
        {"X-Original-URL": "https://app.example.com/open/x"},
        {"X-Original-URL": "/open/x", "X-Original-Method": "GET"},
    ]
    for headers in public:
        assert (await check(trusting, "/oauth2/auth", headers=headers)).status == 202, headers
        # From an untrusted peer the check is of the default route: signed in or not.
        assert (await check(untrusting, "/oauth2/auth", headers=headers)).status == 401, headers
        # Nor can such a peer contradict its own appended path with a header nobody believes.
        assert (await check(untrusting, "/oauth2/auth/reports", headers=headers)).status == 401, headers
    method = {"X-Original-URL": "https://app.example.com/forms/x", "X-Original-Method": "POST"}
    assert (await check(trusting, "/oauth2/auth", headers=method)).status == 401


async def test_x_original_url_names_the_host_too(trusting: Proxy, browser: Browser) -> None:
    session = await signed_in(trusting, browser, ADA)
    ada = {"Cookie": session.header, "User-Agent": BROWSER_UA, **JSON}
    # ingress-nginx sends the auth-url's host as Host: the original host is X-Original-URL's.
    to_admin = {**ada, "Host": "authproxy.svc", "X-Original-URL": "https://admin.test/x"}
    assert (await check(trusting, "/oauth2/auth", headers=to_admin)).status == 403
    to_app = {**ada, "Host": "authproxy.svc", "X-Original-URL": "https://app.test:8443/x"}
    assert (await check(trusting, "/oauth2/auth", headers=to_app)).status == 202


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        # The appended path against the headers (Envoy passing a client's copy on).
        ("/oauth2/auth/reports", {"X-Forwarded-Uri": "/open/x"}),
        ("/oauth2/auth/reports", {"X-Original-URL": "https://h.test/open/x"}),
        ("/oauth2/auth/open/x?a=1", {"X-Forwarded-Uri": "/open/x?a=2"}),
        ("/oauth2/auth/forms/x", {"X-Forwarded-Method": "POST"}),
        ("/oauth2/auth/x", {"Host": "app.test", "X-Forwarded-Host": "admin.test"}),
        # Two headers naming different requests (a proxy writing one and passing the client's other).
        ("/oauth2/auth", {"X-Forwarded-Uri": "/open/x", "X-Original-URL": "https://h.test/reports"}),
        (
            "/oauth2/auth",
            {"X-Forwarded-Uri": "/forms/x", "X-Forwarded-Method": "GET", "X-Original-Method": "PUT"},
        ),
        ("/oauth2/auth", {"X-Original-URL": "https://admin.test/x", "X-Forwarded-Host": "app.test"}),
        # Two lines of one header, or a value that names no request.
        ("/oauth2/auth", {"X-Original-URL": "/open/x", "x-original-url": "/open/y"}),
        ("/oauth2/auth", {"X-Original-Method": "GET", "x-original-method": "GET"}),
        ("/oauth2/auth", {"X-Original-URL": "ftp://h.test/open/x"}),
        ("/oauth2/auth", {"X-Original-URL": "https://h.test/open/%2e%2e%2fstaff"}),
        ("/oauth2/auth", {"X-Forwarded-Uri": "/open/x", "X-Forwarded-Method": "G E T"}),
    ],
)
async def test_sources_that_disagree_are_refused(
    trusting: Proxy, target: str, headers: dict[str, str]
) -> None:
    lines = [f"GET {target} HTTP/1.1", f"Host: {headers.get('Host', 'app.test')}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name != "Host"]
    answer = await raw_request(trusting, "\r\n".join([*lines, "Accept: application/json"]))
    assert answer.status == 400 and answer.json()["error"] == "ambiguous_request", (target, headers)


async def test_sources_that_agree_are_one_request(trusting: Proxy) -> None:
    agreeing = [
        (
            "/oauth2/auth/open/x",
            {"Host": "a.test", "X-Forwarded-Uri": "/open/x", "X-Original-URL": "https://a.test/open/x"},
        ),
        ("/oauth2/auth/forms/x", {"X-Forwarded-Method": "get", "X-Original-Method": "GET"}),
        ("/oauth2/auth/open/x", {"Host": "App.Test:443", "X-Forwarded-Host": "app.test"}),
        ("/oauth2/auth", {"X-Forwarded-Uri": "/open/x", "X-Original-URL": "https://app.test/open/x"}),
    ]
    for target, headers in agreeing:
        assert (await check(trusting, target, headers=headers)).status == 202, (target, headers)
    # Spellings of the same canonical path agree, but the pass is only for the canonical spelling.
    spelled = {"X-Forwarded-Uri": "/open/x", "X-Original-URL": "https://app.test/open/./x"}
    assert (await check(trusting, "/oauth2/auth", headers={**spelled, **JSON})).status == 401


@pytest.mark.parametrize("spelling", PATH_TRICKS)
async def test_a_path_trick_in_x_original_url_gets_no_public_leniency(trusting: Proxy, spelling: str) -> None:
    headers = {"X-Original-URL": f"https://app.test{spelling}", "X-Original-Method": "GET", **JSON}
    answer = await check(trusting, "/oauth2/auth", headers=headers)
    assert answer.status in (400, 401), (spelling, answer.status)


# --- Envoy: deploy/envoy/envoy.yaml, replayed ------------------------------------------------------------


@dataclass(frozen=True)
class Envoy:
    """What the example tells Envoy's HTTP filters, as the replay needs it."""

    path_prefix: str
    allowed_headers: list[dict[str, Any]]
    upstream_headers: list[dict[str, Any]]
    removed: list[str]
    timeout_ms: int
    authproxy: dict[str, Any]  # the authproxy config the example's header comment asks for


def string_matches(patterns: list[dict[str, Any]], name: str) -> bool:
    """Envoy's StringMatcher list, for lower-case header names."""
    for pattern in patterns:
        value = name.lower() if pattern.get("ignore_case") else name
        if "exact" in pattern and value == pattern["exact"]:
            return True
        if "prefix" in pattern and value.startswith(pattern["prefix"]):
            return True
        if "suffix" in pattern and value.endswith(pattern["suffix"]):
            return True
        if "contains" in pattern and pattern["contains"] in value:
            return True
        if "safe_regex" in pattern and re.fullmatch(pattern["safe_regex"]["regex"], value):
            return True
    return False


def read_envoy() -> Envoy:
    text = ENVOY.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    filters = {entry["name"]: entry["typed_config"] for entry in manager["typed_config"]["http_filters"]}
    assert list(filters)[-1] == "envoy.filters.http.router"
    names = list(filters)
    assert names.index("envoy.filters.http.header_mutation") < names.index("envoy.filters.http.ext_authz")
    authz = filters["envoy.filters.http.ext_authz"]
    service = authz["http_service"]
    mutations = filters["envoy.filters.http.header_mutation"]["mutations"]["request_mutations"]
    return Envoy(
        path_prefix=service["path_prefix"],
        allowed_headers=authz["allowed_headers"]["patterns"],
        upstream_headers=service["authorization_response"]["allowed_upstream_headers"]["patterns"],
        removed=[mutation["remove"] for mutation in mutations],
        timeout_ms=int(float(service["server_uri"]["timeout"].removesuffix("s")) * 1000),
        authproxy=example_config(text),
    )


def example_config(text: str) -> dict[str, Any]:
    """The TOML the header comment shows: the indented comment lines after "in its config file:"."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if "in its config file:" in line) + 1
    block: list[str] = []
    for line in lines[start:]:
        if line.startswith("#   ") or line == "#":
            block.append(line[4:])
        else:
            break
    return tomllib.loads("\n".join(block).strip())


ENVOY_CONFIG = read_envoy()


def test_the_envoy_example_is_wired_as_the_replay_assumes() -> None:
    config = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    authz = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    service = authz["typed_config"]["http_service"]
    assert service["server_uri"]["cluster"] in clusters
    assert authz["typed_config"]["failure_mode_allow"] is False
    assert ENVOY_CONFIG.path_prefix == "/oauth2/auth"
    assert ENVOY_CONFIG.authproxy["forward_auth"]["success_status"] == 200
    assert ENVOY_CONFIG.authproxy["server"]["trusted_proxies"]
    # The session and the client reach authproxy; the check's answer names the identity headers.
    for name in ("cookie", "user-agent", "x-forwarded-for", "accept"):
        assert string_matches(ENVOY_CONFIG.allowed_headers, name), name
    for name in IDENTITY:
        assert string_matches(ENVOY_CONFIG.upstream_headers, name), name
        assert name in ENVOY_CONFIG.removed, f"a client's {name} must go before the check"
    assert manager["use_remote_address"] is True and manager["normalize_path"] is True
    # authproxy's own pages are routed to it with the filter off, before the app's catch-all.
    (host,) = manager["route_config"]["virtual_hosts"]
    first, last = host["routes"]
    assert first["match"] == {"prefix": "/oauth2/"} and first["route"]["cluster"] == "authproxy"
    assert first["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    assert last["match"] == {"prefix": "/"} and last["route"]["cluster"] == "app"
    assert "typed_per_filter_config" not in last


@dataclass
class EnvoyDecision:
    reply: Reply

    @property
    def allowed(self) -> bool:
        return self.reply.status == 200

    @property
    def to_upstream(self) -> dict[str, str]:
        """The answer's headers Envoy copies into the app's request on a pass."""
        return {
            name.lower(): value
            for name, value in self.reply.headers.items()
            if string_matches(ENVOY_CONFIG.upstream_headers, name.lower())
        }


async def through_envoy(
    proxy: Proxy,
    path: str,
    *,
    method: str = "GET",
    host: str = "app.example.com",
    session: SignedIn | None = None,
    headers: dict[str, str] | None = None,
    envoy: Envoy = ENVOY_CONFIG,
) -> EnvoyDecision:
    """Envoy's check for a browser's `method path` on `host`: the downstream request as the example's
    connection manager and header-mutation filter leave it, then the check request ext_authz sends."""
    downstream = {"user-agent": BROWSER_UA, "accept": HTML}
    if session is not None:
        downstream["cookie"] = session.header
    downstream.update({name.lower(): value for name, value in (headers or {}).items()})
    # use_remote_address: the browser's address (here loopback) ends X-Forwarded-For.
    forwarded_for = downstream.get("x-forwarded-for")
    downstream["x-forwarded-for"] = f"{forwarded_for}, 127.0.0.1" if forwarded_for else "127.0.0.1"
    downstream["x-forwarded-proto"] = "https"
    downstream["x-request-id"] = str(uuid.uuid4())
    for name in envoy.removed:
        downstream.pop(name, None)
    lines = [
        f"{method} {envoy.path_prefix}{path} HTTP/1.1",
        f"host: {host}",
        "content-length: 0",
    ]
    lines += [
        f"{name}: {value}"
        for name, value in downstream.items()
        if name == "authorization" or string_matches(envoy.allowed_headers, name)
    ]
    # Envoy's own HTTP client (the router) adds these to the check request.
    lines += [f"x-envoy-expected-rq-timeout-ms: {envoy.timeout_ms}", "x-envoy-internal: true"]
    return EnvoyDecision(await raw_request(proxy, "\r\n".join(lines)))


@pytest.fixture
async def behind_envoy(proxy_factory: ProxyFactory) -> Proxy:
    """authproxy configured as envoy.yaml's header comment says, with the route table."""
    example = ENVOY_CONFIG.authproxy
    overrides = {
        "forward_auth": example["forward_auth"],
        "server": {"trusted_proxies": example["server"]["trusted_proxies"]},
    }
    return await proxy_factory(**deep_merge(overrides, ROUTES))


async def test_envoy_allows_a_signed_in_request_with_authproxys_identity(
    behind_envoy: Proxy, browser: Browser
) -> None:
    session = await signed_in(behind_envoy, browser, ADA)
    for method, path in [("GET", "/reports?year=2024&q=x"), ("POST", "/api/items"), ("DELETE", "/")]:
        decision = await through_envoy(behind_envoy, path, method=method, session=session)
        assert decision.allowed, (method, path, decision.reply.status, decision.reply.body[:200])
        upstream = decision.to_upstream
        assert upstream["x-auth-request-email"] == upstream["x-auth-request-preferred-username"] == ADA
        assert upstream["x-auth-request-user"] and upstream["x-auth-request-user"] != ADA
    # A client's own identity headers never reach the check, nor could they pass it.
    forged = {"x-auth-request-email": "forged@evil.example", "x-forwarded-email": "forged@evil.example"}
    decision = await through_envoy(behind_envoy, "/reports", session=session, headers=forged)
    assert decision.to_upstream["x-auth-request-email"] == ADA


async def test_envoy_denies_without_a_session_and_on_a_routes_allow_list(
    behind_envoy: Proxy, browser: Browser
) -> None:
    signed_out = await through_envoy(behind_envoy, "/reports", headers=JSON)
    assert not signed_out.allowed and signed_out.reply.status == 401
    assert signed_out.reply.json()["error"] == "unauthorized"
    # The browser's 401 is what local_reply_config turns into the sign-in redirect; never a pass.
    assert (await through_envoy(behind_envoy, "/reports")).reply.status == 401

    ada = await signed_in(behind_envoy, browser, ADA)
    refused = await through_envoy(behind_envoy, "/staff/x", session=ada, headers=JSON)
    assert refused.reply.status == 403 and refused.reply.json()["error"] == "access_denied"
    assert refused.to_upstream == {}
    other_host = await through_envoy(behind_envoy, "/x", host="admin.test", session=ada, headers=JSON)
    assert other_host.reply.status == 403


async def test_envoy_public_and_per_route_rules(behind_envoy: Proxy, browser: Browser) -> None:
    public = await through_envoy(behind_envoy, "/open/logo.png?v=3")
    assert public.allowed and public.to_upstream == {}
    # /forms/ is public for GET: Envoy sends the original method, so a POST needs a session.
    assert (await through_envoy(behind_envoy, "/forms/x")).allowed
    assert (await through_envoy(behind_envoy, "/forms/x", method="POST")).reply.status == 401
    assert (await through_envoy(behind_envoy, "/maybe/x")).allowed

    bob = await signed_in(behind_envoy, browser, BOB)
    staff = await through_envoy(behind_envoy, "/staff/x", session=bob)
    assert staff.allowed and staff.to_upstream["x-auth-request-email"] == BOB
    assert (await through_envoy(behind_envoy, "/x", host="admin.test", session=bob)).allowed


@pytest.mark.parametrize("spelling", PATH_TRICKS)
async def test_envoy_path_tricks_get_no_public_leniency(behind_envoy: Proxy, spelling: str) -> None:
    """Without the example's normalize_path, Envoy appends the client's spelling as it came."""
    decision = await through_envoy(behind_envoy, spelling, headers=JSON)
    assert not decision.allowed and decision.reply.status in (400, 401), spelling


async def test_envoy_passing_a_clients_header_on_cannot_choose_the_target(behind_envoy: Proxy) -> None:
    """An `allowed_headers` wider than the example's (a prefix: x-forwarded) lets a client's
    X-Forwarded-Uri through; authproxy finds it disagreeing with the appended path."""
    wide = dataclasses.replace(ENVOY_CONFIG, allowed_headers=[{"prefix": "x-"}, {"exact": "accept"}])
    lie = {"x-forwarded-uri": "/open/x", "x-forwarded-method": "GET"}
    decision = await through_envoy(behind_envoy, "/reports", headers={**lie, **JSON}, envoy=wide)
    assert decision.reply.status == 400 and decision.reply.json()["error"] == "ambiguous_request"


# --- nginx auth_request with success_status = 200 ---------------------------------------------------------


@pytest.fixture
async def nginx_200(proxy_factory: ProxyFactory, echo_url: str) -> AsyncIterator[tuple[str, Nginx]]:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    settings = {
        "server": {"public_url": url, "trusted_proxies": ["127.0.0.1/32"]},
        "session": {"cookie_secure": True},
        "forward_auth": {"success_status": 200},
    }
    proxy = await proxy_factory(**deep_merge(settings, ROUTES))
    nginx = await start_nginx(https_port=port, authproxy_url=proxy.url, app_url=echo_url)
    yield url, nginx
    await nginx.stop()


async def test_nginx_auth_request_takes_success_status_200(
    nginx_200: tuple[str, Nginx], browser: Browser
) -> None:
    url, _ = nginx_200
    tls = site_tls().client_context

    async def get(path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        async with browser.http.get(URL(url + path, encoded=True), ssl=tls, **kwargs) as response:
            await response.read()
            return response

    public = await get("/open/x")
    assert public.status == 200 and public.headers["X-Upstream"] == "echo"
    assert (await get("/open/%2e%2e/staff/x", headers=JSON)).status == 401
    async with browser.http.get(url + "/reports", ssl=tls) as response:
        form = response.url
    async with browser.http.post(form, data={"email": ADA}, ssl=tls) as response:
        assert response.status == 200
        payload = await response.json()
    assert payload["path"] == "/reports"
    assert received_headers(payload)["x-forwarded-email"] == ADA
    assert (await get("/staff/x", headers=JSON)).status == 403
