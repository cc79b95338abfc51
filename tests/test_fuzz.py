"""Property-based fuzzing of what a hostile browser controls: cookies, callback queries, headers, paths.

Pure parts first (the Redis session reference, the login-transaction cookie), then the running proxy:
generated callback queries must never yield a 5xx or a session, and generated requests — header sets,
cookies, paths, methods, on every route — must never let an exception escape as a 500, nor let a
client-supplied identity reach the upstream. The cookie sealer itself, the redirect validator, header
stripping and path normalization have their own properties in test_session_seal, test_redirect,
test_headers_strip and test_paths.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from conftest import ProxyFactory
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from support.chaos import LogCheck, exchange, status_of
from support.harness import Proxy
from support.redis_server import RedisServer
from support.sessions import NOW, session
from yarl import URL

from authproxy.core.seal import Sealer
from authproxy.core.transaction import MAX_PENDING, STATE_RE, TTL, LoginTransaction, TransactionCookies
from authproxy.runtime import LIVE
from authproxy.session.redis import KEY_PREFIX, RedisStore
from authproxy.session.redis import make_client as make_redis_client
from authproxy.session.store import CookieStore

# FUZZ_EXAMPLES=5000 for a long hunt; the default keeps `make test` quick.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SECRET = "fuzz-secret-0123456789abcdefghijklmnopqrstuvwxyz"
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrstu"


def flip(value: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[index % len(raw)] ^= 0x01 << (index % 8)
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


# --- the Redis store's cookie reference and record -----------------------------------------------------


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, str]]:
    """A Redis store on a real server, and the cookie value of one live session in it."""
    client = make_redis_client(redis_server.url)
    store = RedisStore(client, Sealer([SECRET]), "_authproxy", clock=lambda: NOW)
    value = await store.save(session())
    assert await store.load(value) == session()
    yield store, value
    await client.aclose()


@FUZZ
@given(value=st.text(max_size=400))
@example(value="")
@example(value="A" * 86)
async def test_redis_store_arbitrary_cookie_text(redis_store: tuple[RedisStore, str], value: str) -> None:
    store, _ = redis_store
    assert await store.load(value) is None
    await store.delete(value)  # a garbage cookie at sign-out deletes nothing and raises nothing


@FUZZ
@given(index=st.integers(min_value=0), cut=st.integers(min_value=0))
async def test_redis_store_flipped_or_truncated_reference(
    redis_store: tuple[RedisStore, str], index: int, cut: int
) -> None:
    store, value = redis_store
    assert await store.load(flip(value, index)) is None
    assert await store.load(value[: cut % len(value)]) is None
    assert await store.load(value) == session()  # the real one still opens


@FUZZ
@given(payload=st.binary(max_size=200))
@example(payload=b"\x00" * 64)
async def test_redis_store_sealed_references_to_nothing(
    redis_store: tuple[RedisStore, str], payload: bytes
) -> None:
    """Correctly sealed references (only the key holder can make them) of any length, to no record."""
    store, _ = redis_store
    assert await store.load(Sealer([SECRET]).seal(payload, "session-ref:_authproxy")) is None


async def test_redis_store_refuses_values_of_other_names_keys_and_stores(
    redis_store: tuple[RedisStore, str],
) -> None:
    store, value = redis_store
    client = store.client
    assert await RedisStore(client, Sealer([SECRET]), "_other", clock=lambda: NOW).load(value) is None
    assert (
        await RedisStore(client, Sealer([OTHER_SECRET]), "_authproxy", clock=lambda: NOW).load(value) is None
    )
    cookie_store = CookieStore(Sealer([SECRET]), "_authproxy", clock=lambda: NOW)
    assert await cookie_store.load(value) is None  # a Redis reference is not a cookie session
    assert await store.load(await cookie_store.save(session())) is None  # nor the other way round
    transactions = TransactionCookies(Sealer([SECRET]), "_authproxy", secure=False)
    login = LoginTransaction.new("/", NOW)
    assert await store.load(transactions.seal(login)) is None


@FUZZ
@given(index=st.integers(min_value=0), cut=st.integers(min_value=0, max_value=200))
async def test_redis_store_tampered_records(
    redis_store: tuple[RedisStore, str], index: int, cut: int
) -> None:
    """Whoever can write to Redis still cannot forge or alter a session without the per-session key."""
    store, value = redis_store
    client = store.client
    (key,) = await client.keys(KEY_PREFIX + "*")
    record = await client.get(key)
    assert isinstance(record, bytes)
    try:
        tampered = bytearray(record)
        tampered[index % len(tampered)] ^= 0x01 << (index % 8)
        await client.set(key, bytes(tampered))
        assert await store.load(value) is None
        await client.set(key, record[: cut % len(record)])
        assert await store.load(value) is None
    finally:
        await client.set(key, record)


async def test_redis_store_record_moved_to_another_session(redis_store: tuple[RedisStore, str]) -> None:
    """Records are bound to their session id: copying one over another's key opens neither."""
    store, value = redis_store
    other = await store.save(session(user_id="mallory", email="mallory@example.com"))
    client = store.client
    keys = await client.keys(KEY_PREFIX + "*")
    records = {key: await client.get(key) for key in keys}
    first, second = keys
    first_record, second_record = records[first], records[second]
    assert isinstance(first_record, bytes) and isinstance(second_record, bytes)
    await client.set(first, second_record)
    await client.set(second, first_record)
    assert await store.load(value) is None
    assert await store.load(other) is None


# --- the login transaction cookie ---------------------------------------------------------------------

TRANSACTIONS = TransactionCookies(Sealer([SECRET]), "_authproxy", secure=True)
STATES = st.one_of(st.text(max_size=60), st.from_regex(STATE_RE, fullmatch=True))
COOKIE_JARS = st.dictionaries(
    st.one_of(st.text(max_size=30), STATES.map(TRANSACTIONS.name)), st.text(max_size=120), max_size=8
)


@FUZZ
@given(state=st.one_of(st.none(), STATES), cookies=COOKIE_JARS, now=st.floats(allow_nan=False))
def test_transaction_open_never_raises(state: str | None, cookies: dict[str, str], now: float) -> None:
    assert TRANSACTIONS.open(state, cookies, now) is None


@FUZZ
@given(
    index=st.integers(min_value=0),
    cut=st.integers(min_value=0),
    other=st.from_regex(STATE_RE, fullmatch=True),
)
def test_transaction_cookie_tampering(index: int, cut: int, other: str) -> None:
    login = LoginTransaction.new("/deep/link?q=1", NOW)
    value = TRANSACTIONS.seal(login)
    name = TRANSACTIONS.name(login.state)
    assert TRANSACTIONS.open(login.state, {name: value}, NOW) == login
    assert TRANSACTIONS.open(login.state, {name: flip(value, index)}, NOW) is None
    assert TRANSACTIONS.open(login.state, {name: value[: cut % len(value)]}, NOW) is None
    assume(other != login.state)
    # A transaction cookie is bound to its own state's name: replanted under another state, it is dead.
    assert TRANSACTIONS.open(other, {TRANSACTIONS.name(other): value}, NOW) is None
    # Other keys, other cookie names, plain-HTTP naming: none opens it.
    assert (
        TransactionCookies(Sealer([OTHER_SECRET]), "_authproxy", secure=True).open(
            login.state, {name: value}, NOW
        )
        is None
    )
    insecure = TransactionCookies(Sealer([SECRET]), "_authproxy", secure=False)
    assert insecure.open(login.state, {insecure.name(login.state): value}, NOW) is None


@FUZZ
@given(offset=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_transaction_lifetime(offset: float) -> None:
    login = LoginTransaction.new("/", NOW)
    cookies = {TRANSACTIONS.name(login.state): TRANSACTIONS.seal(login)}
    now = NOW + offset
    opened = TRANSACTIONS.open(login.state, cookies, now)
    assert (opened is not None) == (0 <= now - NOW <= TTL)  # valid from creation, for TTL seconds


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "state": st.just("S" * 43),
        "verifier": JSON_VALUES,
        "return_to": JSON_VALUES,
        "created_at": JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


@FUZZ
@given(payload=st.one_of(FIELDS, JSON_VALUES))
@example(payload={"state": "S" * 43, "verifier": "v", "return_to": "/", "created_at": "yesterday"})
@example(payload={"state": "S" * 43, "verifier": 1, "return_to": None, "created_at": NOW})
def test_transaction_payloads_of_the_wrong_shape_are_refused(payload: object) -> None:
    """A sealed payload of another shape (an older or newer format during a rolling deploy sharing the
    key) is no transaction; it must not raise on the callback."""
    state = "S" * 43
    value = TRANSACTIONS._sealer.seal(json.dumps(payload).encode(), TRANSACTIONS.name(state))
    opened = TRANSACTIONS.open(state, {TRANSACTIONS.name(state): value}, NOW)
    if opened is not None:
        assert isinstance(opened.verifier, str) and isinstance(opened.return_to, str)
        assert isinstance(opened.created_at, float | int)


@FUZZ
@given(cookies=COOKIE_JARS, fresh=st.integers(min_value=0, max_value=9))
def test_surplus_keeps_room_for_one_more_login(cookies: dict[str, str], fresh: int) -> None:
    for index in range(fresh):
        login = LoginTransaction.new("/", NOW - index)
        cookies[TRANSACTIONS.name(login.state)] = TRANSACTIONS.seal(login)
    doomed = set(TRANSACTIONS.surplus(cookies, NOW))
    # Only names of the proxy's own shape are pending logins; others under the prefix are left alone.
    left = [name for name in cookies if TRANSACTIONS.state_of(name) is not None and name not in doomed]
    assert len(left) <= MAX_PENDING - 1
    assert doomed <= set(cookies)


# --- the running proxy ----------------------------------------------------------------------------------


QUERY_KEYS = st.one_of(
    st.sampled_from(["code", "state", "error", "error_description", "iss", "session_state", "rd"]),
    st.text(max_size=12),
)
QUERY_VALUES = st.one_of(
    st.text(max_size=80),
    st.from_regex(STATE_RE, fullmatch=True),
    st.sampled_from(["", "%", "%00", "../", "<script>", "undefined", "null", "\x00", "\r\n"]),
)
RAW_QUERIES = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=120
)


async def session_cookies(response_headers: list[str], name: str) -> list[str]:
    return [h for h in response_headers if h.startswith(f"{name}=") and not h.startswith(f"{name}=;")]


@FUZZ
@given(
    pairs=st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=6),
    raw=st.one_of(st.none(), RAW_QUERIES),
    with_login=st.booleans(),
    accept=st.sampled_from(["text/html", "application/json", "*/*"]),
)
async def test_callback_with_generated_queries(
    proxy: Proxy,
    http: ClientSession,
    pairs: list[tuple[str, str]],
    raw: str | None,
    with_login: bool,
    accept: str,
) -> None:
    """Never a 5xx, never a session: with and without a genuine pending login (so that a generated
    `code` is really exchanged with CentralAuth under a valid state)."""
    runtime = proxy.app[LIVE].runtime
    headers = {"Accept": accept}
    if with_login:
        async with http.get(f"{proxy.url}/oauth2/start", allow_redirects=False) as response:
            state = URL(response.headers["Location"]).query["state"]
            cookie = response.cookies[runtime.transactions.name(state)]
        headers["Cookie"] = f"{cookie.key}={cookie.value}"
        pairs = [("state", state), *pairs]
    url = URL(f"{proxy.url}/oauth2/callback").with_query(pairs)
    if raw is not None:
        url = URL(f"{proxy.url}/oauth2/callback?{raw}", encoded=True)
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        assert response.status < 500, await response.text()
        assert response.status != 302 or "state" not in dict(pairs) or not with_login
        assert not await session_cookies(response.headers.getall("Set-Cookie", []), runtime.cookie.name)


IDENTITY_SPELLINGS = [
    "X-Forwarded-User",
    "x-forwarded-email",
    "X_Forwarded_User",
    "x.forwarded.preferred-username",
    "X-Auth-Request-User",
    "X-Forwarded-Access-Token",
    "auth-ip",
    "device-id",
]
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            *IDENTITY_SPELLINGS,
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
            "X-Forwarded-Uri",
            "X-Forwarded-Method",
            "X-Real-IP",
            "Forwarded",
            "X-Request-Id",
            "Accept",
            "X-Requested-With",
            "Authorization",
            "Origin",
            "Referer",
            "Sec-Fetch-Site",
            "X-Auth-Request-Redirect",
            "User-Agent",
            "Range",
            "If-None-Match",
            "Accept-Encoding",
        ]
    ),
    st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}", fullmatch=True).filter(
        lambda name: name.lower() not in {"host", "content-length", "transfer-encoding", "content-type"}
    ),
)
# Visible ASCII, spaces and obs-text: everything a header value may carry on the wire.
HEADER_VALUES = st.one_of(
    st.binary(max_size=60).map(lambda raw: bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip()),
    st.sampled_from(
        [b"http://[", b"http://[::1", b"//evil.example", b"\xff\xfe", b"1.2.3.4, unknown, [::1]:80", b"none"]
    ),
)
PATH_PIECES = st.sampled_from(
    [
        "/",
        "//",
        "/.",
        "/..",
        "/%2e%2e",
        "/%2F",
        "/%5C",
        "/%00",
        "/%25",
        "/%",
        "/;",
        "/..;",
        "/public",
        "/oauth2",
    ]
)
PATH_TEXT = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=12
)
ROUTES = st.sampled_from(
    [
        "/",
        "/public/",
        "/private/",
        "/oauth2/start",
        "/oauth2/callback",
        "/oauth2/sign_in",
        "/oauth2/sign_out",
        "/oauth2/auth",
        "/oauth2/userinfo",
        "/ping",
        "/ready",
    ]
)


@st.composite
def requests(draw: st.DrawFn, cookie_name: str, login_prefix: str) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND"]))
    path = draw(ROUTES) + "".join(draw(st.lists(st.one_of(PATH_PIECES, PATH_TEXT), max_size=4)))
    # Unique names: aiohttp refuses repeated singletons (two User-Agents) before any handler runs,
    # and the parser's refusals are test_abuse's subject.
    headers = draw(
        st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=10, unique_by=lambda h: h[0].lower())
    )
    cookie_names = st.one_of(st.sampled_from([cookie_name, login_prefix + "A" * 43, "app"]), PATH_TEXT)
    cookies = draw(st.lists(st.tuples(cookie_names, HEADER_VALUES), max_size=4))
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: proxy.test"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if cookies:
        lines.append(b"Cookie: " + b"; ".join(name.encode() + b"=" + value for name, value in cookies))
    body = draw(st.sampled_from([b"", b"csrf=x", b'{"a": 1}']))
    lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def fuzz_proxy(proxy_factory: ProxyFactory) -> Proxy:
    return await proxy_factory(
        routes={"skip_auth": ["^/public/"], "api": ["^/api/"]},
        server={"trusted_proxies": ["10.0.0.0/8"]},  # a list to consult, but the test client is not on it
    )


@FUZZ
@given(data=st.data())
@example(data=None)
async def test_generated_requests_never_escape_as_a_500(
    fuzz_proxy: Proxy, logs: LogCheck, data: st.DataObject | None
) -> None:
    runtime = fuzz_proxy.app[LIVE].runtime
    port = int(fuzz_proxy.url.rsplit(":", 1)[1])
    if data is None:  # a fixed case: a sign-out carrying an Origin that does not parse as a URL
        raw = b"GET /oauth2/sign_out HTTP/1.1\r\nHost: p\r\nOrigin: http://[\r\nConnection: close\r\n\r\n"
    else:
        raw = data.draw(requests(runtime.cookie.name, runtime.transactions.prefix))
    answer = await exchange(port, raw, wait=2.0)
    status = status_of(answer)
    assert status not in (0, 500), (raw[:300], answer[:500])
    assert status < 500 or answer.count(b"X-Authproxy: 1") == 1, "a 5xx not rendered by the proxy"
    if status == 200 and b'"headers": [[' in answer:  # the echo upstream: what it was sent
        echoed = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        sent = {name.lower(): value for name, value in echoed["headers"]}
        assert not {name.lower().replace("_", "-").replace(".", "-") for name in IDENTITY_SPELLINGS} & set(
            sent
        )
        assert sent["x-forwarded-for"] == "127.0.0.1"
        assert not re.search(
            rf"(^|; )({re.escape(runtime.cookie.name)}|{re.escape(runtime.transactions.prefix)})",
            sent.get("cookie", ""),
        )
    await asyncio.sleep(0)
    logs.assert_clean()
