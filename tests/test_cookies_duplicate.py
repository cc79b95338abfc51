"""Duplicate session cookies: a second value for the session cookie's name is never used, nor is the first.

With `cookie_domain` set (or `cookie_secure = false`) the cookie has no `__Host-` prefix, so a sibling
subdomain can plant one of the same name for the shared domain, and the browser then sends both. The
attacker's own valid session is the planted cookie that matters: if it won, the victim would act as the
attacker (and, say, upload their files into the attacker's account). The rule in `authproxy.cookies`:
distinct values are refused with a 400 that expires both copies; identical ones count as one; a name is
the session cookie's only if its bytes are. Requests go over raw sockets so that no client library
reorders, merges or drops the cookies.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from conftest import ProxyFactory
from multidict import CIMultiDict, CIMultiDictProxy
from support.chaos import exchange, status_of
from support.harness import BROWSER_UA, HTML, Proxy

from authproxy.cookies import ConflictingCookies, CookieValues
from authproxy.runtime import LIVE

ADA = "ada@example.com"
EVE = "eve@example.com"
DOMAIN = "example.test"


async def sealed_session(proxy: Proxy, email: str) -> str:
    """A fresh session cookie value for `email`, read from the callback's Set-Cookie.

    Read by hand: a client cookie jar would drop a cookie for `example.test` set by 127.0.0.1.
    """
    name = proxy.app[LIVE].runtime.cookie.name
    jar = aiohttp.CookieJar(unsafe=True)  # for the login transaction's cookie, set by 127.0.0.1
    async with aiohttp.ClientSession(
        cookie_jar=jar, headers={"User-Agent": BROWSER_UA, "Accept": HTML}
    ) as http:
        async with http.get(f"{proxy.url}/") as response:
            form = response.url
        async with http.post(form, data={"email": email}, allow_redirects=False) as response:
            callback = response.headers["Location"]
        async with http.get(callback, allow_redirects=False) as response:
            assert response.status == 302
            return response.cookies[name].value


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        self.status = status_of(raw)
        self.headers: CIMultiDict[str] = CIMultiDict()
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            self.headers.add(name.strip(), value.strip())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def send(proxy: Proxy, cookie_lines: list[bytes], path: str = "/private", accept: str = HTML) -> Answer:
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {BROWSER_UA}\r\nAccept: {accept}\r\n"
        "Connection: close\r\n"
    ).encode()
    head += b"".join(b"Cookie: " + line + b"\r\n" for line in cookie_lines)
    return Answer(await exchange(int(proxy.url.rsplit(":", 1)[1]), head + b"\r\n"))


def assert_signed_in_as(answer: Answer, email: str) -> None:
    assert answer.status == 200, answer.text[:300]
    headers = {name.lower(): value for name, value in json.loads(answer.body)["headers"]}
    assert headers["x-forwarded-email"] == email


def assert_refused(answer: Answer, *, domain: str | None = DOMAIN) -> None:
    """400, no one's session, and both copies of the cookie expired (host-only and on the domain)."""
    assert answer.status == 400, answer.text[:300]
    assert "conflicting sign-in cookies" in answer.text
    assert ADA not in answer.text and EVE not in answer.text
    expired: list[str | None] = []
    for line in answer.headers.getall("Set-Cookie", []):
        morsel = SimpleCookie(line)["_authproxy"]
        assert morsel.value == "" and morsel["max-age"] == "0" and morsel["path"] == "/"
        expired.append(morsel["domain"] or None)
    assert expired == ([None, domain] if domain else [None])


@pytest.fixture
async def shared(proxy_factory: ProxyFactory) -> tuple[Proxy, str, str]:
    """A proxy with a shared cookie domain, and valid sessions for ada (the user) and eve (the planter)."""
    proxy = await proxy_factory(session={"cookie_domain": DOMAIN})
    assert proxy.app[LIVE].runtime.cookie.name == "_authproxy"
    return proxy, await sealed_session(proxy, ADA), await sealed_session(proxy, EVE)


async def test_each_session_alone_is_its_users(shared: tuple[Proxy, str, str]) -> None:
    proxy, ada, eve = shared
    assert_signed_in_as(await send(proxy, [b"_authproxy=" + ada.encode()]), ADA)
    assert_signed_in_as(await send(proxy, [b"_authproxy=" + eve.encode()]), EVE)


@pytest.mark.parametrize("lines", ["one-line", "two-lines"])
@pytest.mark.parametrize("order", ["planted-first", "planted-last"])
async def test_the_planters_valid_session_never_stands_in(
    shared: tuple[Proxy, str, str], order: str, lines: str
) -> None:
    proxy, ada, eve = shared
    pairs = [b"_authproxy=" + eve.encode(), b"_authproxy=" + ada.encode()]
    if order == "planted-last":
        pairs.reverse()
    cookie_lines = [b"; ".join(pairs)] if lines == "one-line" else pairs
    assert_refused(await send(proxy, cookie_lines))


async def test_the_refusal_is_json_for_programs(shared: tuple[Proxy, str, str]) -> None:
    proxy, ada, eve = shared
    answer = await send(proxy, [f"_authproxy={ada}; _authproxy={eve}".encode()], accept="application/json")
    assert_refused(answer)
    assert json.loads(answer.body)["error"] == "conflicting_cookies"


async def test_a_page_offers_to_sign_in_again(shared: tuple[Proxy, str, str]) -> None:
    proxy, ada, eve = shared
    answer = await send(proxy, [f"_authproxy={eve}; _authproxy={ada}".encode()])
    assert "Sign in again" in answer.text and 'href="/oauth2/start"' in answer.text


@pytest.mark.parametrize(
    "planted",
    ["garbage", "", "a=b", '"quoted"', "x" * 3000],
    ids=["garbage", "empty", "with-equals", "quoted", "long"],
)
async def test_any_second_value_is_refused(shared: tuple[Proxy, str, str], planted: str) -> None:
    proxy, ada, _ = shared
    assert_refused(await send(proxy, [f"_authproxy={ada}; _authproxy={planted}".encode()]))
    assert_refused(await send(proxy, [f"_authproxy={planted}; _authproxy={ada}".encode()]))


@pytest.mark.parametrize(
    "cookie_lines",
    [
        ["_authproxy={v}; _authproxy={v}"],
        ["_authproxy={v}", "_authproxy={v}"],
        ["a=1; _authproxy={v};b=2; _authproxy = {v} ; c=3"],
        ["_authproxy={v}", "other=1", "\t_authproxy={v}\t"],
    ],
    ids=["same-line", "two-lines", "spacing", "tabs"],
)
async def test_identical_copies_count_as_one(shared: tuple[Proxy, str, str], cookie_lines: list[str]) -> None:
    proxy, ada, _ = shared
    answer = await send(proxy, [line.format(v=ada).encode() for line in cookie_lines])
    assert_signed_in_as(answer, ADA)


async def test_spaces_around_a_name_do_not_hide_a_second_value(shared: tuple[Proxy, str, str]) -> None:
    proxy, ada, eve = shared
    assert_refused(await send(proxy, [f"_authproxy={ada};  _authproxy\t= {eve}".encode()]))


# Cookies whose names resemble the session cookie's but whose bytes differ: none is the session cookie.
LOOKALIKES = [
    b"_authproxy\xff",  # not UTF-8: aiohttp decodes it to a lone surrogate
    b"_authproxy\xc3\xa9",
    b"_authproxyx",
    b"x_authproxy",
    b"_AUTHPROXY",
    b'"_authproxy"',
    b"_authproxy_login_",
    b"__Host-_authproxy",
    b"_auth proxy",
]


@pytest.mark.parametrize("name", LOOKALIKES, ids=[repr(n)[2:-1] for n in LOOKALIKES])
async def test_lookalike_names_are_other_cookies(shared: tuple[Proxy, str, str], name: bytes) -> None:
    proxy, ada, eve = shared
    for pairs in (
        [name + b"=" + eve.encode(), b"_authproxy=" + ada.encode()],
        [b"_authproxy=" + ada.encode(), name + b"=" + eve.encode()],
    ):
        assert_signed_in_as(await send(proxy, [b"; ".join(pairs)]), ADA)
    # Alone, a lookalike is no session.
    alone = await send(proxy, [name + b"=" + eve.encode()])
    assert alone.status == 302 and alone.headers["Location"].startswith("/oauth2/start")


async def test_a_name_without_a_value_is_no_cookie_of_that_name(shared: tuple[Proxy, str, str]) -> None:
    proxy, ada, _ = shared
    assert_signed_in_as(await send(proxy, [f"_authproxy; _authproxy={ada}; _authproxy".encode()]), ADA)


@pytest.mark.parametrize("path", ["/oauth2/auth", "/oauth2/userinfo", "/oauth2/sign_out"])
async def test_other_routes_refuse_too(shared: tuple[Proxy, str, str], path: str) -> None:
    proxy, ada, eve = shared
    for accept in (HTML, "application/json"):
        answer = await send(proxy, [f"_authproxy={eve}; _authproxy={ada}".encode()], path=path, accept=accept)
        assert_refused(answer)
        assert "X-Auth-Request-Email" not in answer.headers


async def test_without_a_cookie_domain_only_the_host_only_copy_is_expired(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory()
    ada = await sealed_session(proxy, ADA)
    assert_refused(await send(proxy, [f"_authproxy={ada}; _authproxy=planted".encode()]), domain=None)


async def test_with_the_host_prefix_the_rule_is_the_same(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(session={"cookie_secure": True})
    name = proxy.app[LIVE].runtime.cookie.name
    assert name == "__Host-_authproxy"
    answer = await send(proxy, [f"{name}=a; {name}=b".encode()])
    assert answer.status == 400
    (line,) = answer.headers.getall("Set-Cookie")
    morsel = SimpleCookie(line)[name]
    assert morsel["max-age"] == "0" and morsel["secure"] and not morsel["domain"]


# --- the reader itself ----------------------------------------------------------------------------------


def request(*cookie_lines: str) -> web.Request:
    """Just what the reader looks at: aiohttp's own mocked request cannot carry undecodable bytes."""
    headers = CIMultiDictProxy(CIMultiDict(("Cookie", line) for line in cookie_lines))
    return cast(web.Request, SimpleNamespace(headers=headers))


def test_the_reader_follows_the_rule() -> None:
    read = CookieValues("_authproxy")
    assert read(request()) is None
    assert read(request("a=1")) is None
    assert read(request("_authproxy=v")) == "v"
    assert read(request("_authproxy==v=")) == "=v="
    assert read(request(" _authproxy = v ; _authproxy=v")) == "v"
    assert read(request("a=1", "_authproxy=v")) == "v"
    assert read(request("_authproxy\udcff=w; _authproxy=v")) == "v"
    for conflicting in (
        ("_authproxy=v; _authproxy=w",),
        ("_authproxy=v", "_authproxy=w"),
        ("_authproxy=v;_authproxy=",),
    ):
        with pytest.raises(ConflictingCookies):
            read(request(*conflicting))
        with pytest.raises(ConflictingCookies):  # the remembered answer is the same
            read(request(*conflicting))


def test_the_reader_remembers_a_bounded_number_of_headers() -> None:
    read = CookieValues("_authproxy", size=3)
    for index in range(10):
        assert read(request(f"_authproxy=v{index}")) == f"v{index}"
    assert len(read._memo) == 3
    assert read(request("_authproxy=v9")) == "v9"
