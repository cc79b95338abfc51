"""The signed identity assertion (`[headers] jwt_assertion`), checked the way an upstream would check it.

The upstream here is a real aiohttp app that verifies `X-Authproxy-Jwt-Assertion` with PyJWT, a JOSE
library independent of the joserfc the proxy signs with, against the key set it fetches from the proxy's
own `/oauth2/jwks.json` (PyJWT's `PyJWKClient`, as the README's example does). What it accepts came
through the proxy; forgeries, expired and misaddressed assertions, and anything a client sends under
that name, are refused or never arrive. Key rotation goes through a real reload of a rewritten key file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from conftest import ProxyFactory
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWKClient
from pytest_aiohttp import AiohttpServer
from support.configs import VALID
from support.harness import Browser, FakeClock, Proxy
from support.logins import signed_in

from authproxy import cli
from authproxy.app import reload
from authproxy.assertion import Assertions
from authproxy.core.signing_keys import read_signing_keys
from authproxy.core.user import User
from authproxy.runtime import LIVE

HEADER = "X-Authproxy-Jwt-Assertion"
SPOOFED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0."


# --- keys ----------------------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_keys(path: Path, *keys: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(b"".join(pem(key) for key in keys))
    return path


def spoil(path: Path) -> None:
    path.write_bytes(b"not a key\n")


def keys_in(path: Path) -> list[ec.EllipticCurvePrivateKey]:
    return read_signing_keys(path.read_bytes())


def kid_of(key: ec.EllipticCurvePrivateKey) -> str:
    """The RFC 7638 thumbprint of the key's public half, computed here by hand."""
    numbers = key.public_key().public_numbers()

    def b64(number: int) -> str:
        return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()

    members = f'{{"crv":"P-256","kty":"EC","x":"{b64(numbers.x)}","y":"{b64(numbers.y)}"}}'
    digest = hashes.Hash(hashes.SHA256())
    digest.update(members.encode())
    return base64.urlsafe_b64encode(digest.finalize()).rstrip(b"=").decode()


def header_of(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --- the verifying upstream ----------------------------------------------------------------------------


def verify(token: str, jwks_url: str, issuer: str, audience: str) -> dict[str, Any]:
    """What an upstream does with the header (the README's example): the key by its `kid` from the
    proxy's key set, then the signature, `alg`, `iss`, `aud`, `exp` and `iat`."""
    key = PyJWKClient(jwks_url, cache_jwk_set=False).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "aud", "sub", "iat", "exp"]},
    )
    return claims


@dataclass
class Verifier:
    """A real upstream that verifies every request's assertion and answers what it found: every header
    it received, and the verified claims or the verifier's refusal."""

    audience: str = ""  # its own origin unless a test says otherwise
    url: str = ""
    proxy: str = ""  # the proxy's URL: its key set and the issuer
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        tokens = request.headers.getall(HEADER, [])
        result: dict[str, Any] = {"headers": [[name, value] for name, value in request.headers.items()]}
        if len(tokens) == 1:
            try:
                result["claims"] = await asyncio.to_thread(
                    verify, tokens[0], f"{self.proxy}/oauth2/jwks.json", self.proxy, self.audience
                )
            except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
                result["error"] = type(exc).__name__
        elif tokens:
            result["error"] = "several assertions"
        return web.json_response(result)


VerifierFactory = Callable[..., Awaitable[Verifier]]


@pytest.fixture
async def verifier_factory(aiohttp_server: AiohttpServer) -> VerifierFactory:
    async def start(audience: str = "") -> Verifier:
        verifier = Verifier()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", verifier.handle)
        server = await aiohttp_server(app)
        verifier.url = str(server.make_url("")).rstrip("/")
        verifier.audience = audience or verifier.url
        return verifier

    return start


@pytest.fixture
async def verifier(verifier_factory: VerifierFactory) -> Verifier:
    found: Verifier = await verifier_factory()
    return found


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "signing.pem", new_key())


async def assertion_proxy(
    proxy_factory: ProxyFactory,
    verifier: Verifier,
    key_file: Path,
    *,
    upstreams: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> Proxy:
    headers = {"jwt_assertion": True, "jwt_signing_key_file": str(key_file), **overrides.pop("headers", {})}
    proxy = await proxy_factory(
        upstreams=upstreams or [{"path": "/", "url": verifier.url, "timeout": 10}],
        headers=headers,
        **overrides,
    )
    verifier.proxy = proxy.url
    return proxy


async def fetch(browser: Browser, url: str, headers: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    async with browser.http.get(url, headers=headers or []) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


def received(body: dict[str, Any]) -> list[str]:
    """The values of every header the upstream received whose name folds to the assertion's."""
    return [
        value
        for name, value in body["headers"]
        if name.lower().replace("_", "-").replace(".", "-") == HEADER.lower()
    ]


async def direct(verifier: Verifier, token: str) -> dict[str, Any]:
    """Send `token` straight to the upstream, past the proxy, as anyone on its network could."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{verifier.url}/direct", headers={HEADER: token}) as response:
            body: dict[str, Any] = await response.json()
            return body


async def whoami(browser: Browser, proxy: Proxy) -> dict[str, Any]:
    async with browser.http.get(f"{proxy.url}/oauth2/userinfo") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


# --- what an upstream receives -------------------------------------------------------------------------


async def test_a_signed_in_request_carries_an_assertion_the_upstream_verifies(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    proxy = await assertion_proxy(proxy_factory, verifier, key_file)
    await signed_in(proxy, browser)
    body = await fetch(browser, f"{proxy.url}/page")
    assert "error" not in body, body
    claims = body["claims"]
    user = await whoami(browser, proxy)
    assert claims["iss"] == proxy.config.server.public_url == proxy.url
    assert claims["aud"] == verifier.url  # the upstream's origin: scheme://host:port
    assert claims["sub"] == user["user"] and claims["sub"] != "ada@example.com"
    assert claims["email"] == "ada@example.com" == user["email"]
    assert claims["email_verified"] is user["verified"]
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 5
    assert len(claims["jti"]) >= 16
    (token,) = received(body)
    (key,) = keys_in(key_file)
    assert header_of(token) == {"alg": "ES256", "typ": "JWT", "kid": kid_of(key)}
    # The identity headers say the same.
    headers = {name.lower(): value for name, value in body["headers"]}
    assert headers["x-forwarded-user"] == claims["sub"]


async def test_without_jwt_assertion_no_assertion_is_sent(
    proxy_factory: ProxyFactory, verifier: Verifier, browser: Browser
) -> None:
    proxy = await proxy_factory(upstreams=[{"path": "/", "url": verifier.url, "timeout": 10}])
    verifier.proxy = proxy.url
    await signed_in(proxy, browser)
    body = await fetch(browser, f"{proxy.url}/page")
    assert received(body) == []
    assert proxy.app[LIVE].runtime.assertions is None


# Spellings a lenient upstream folds into the one name: case, `_` and `.` for `-`, and repeats.
SPELLINGS = [
    HEADER,
    HEADER.lower(),
    HEADER.upper(),
    HEADER.replace("-", "_"),
    HEADER.lower().replace("-", "_"),
    HEADER.replace("-", "."),
    HEADER.replace("-", "_", 1),
    "x-authproxy-jwt_assertion",
    "X.AUTHPROXY.JWT.ASSERTION",
]


@pytest.mark.parametrize("signed", [True, False], ids=["signed-in", "anonymous"])
async def test_a_client_sent_assertion_never_arrives_in_any_spelling(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser, signed: bool
) -> None:
    proxy = await assertion_proxy(proxy_factory, verifier, key_file, routes={"skip_auth": ["^/public/"]})
    if signed:
        await signed_in(proxy, browser)
    # Every spelling at once, and the canonical name twice more.
    spoofs = [(name, SPOOFED) for name in SPELLINGS] + [(HEADER, SPOOFED + "2"), (HEADER, SPOOFED + "3")]
    for path in ("/page", "/public/page") if signed else ("/public/page",):
        body = await fetch(browser, f"{proxy.url}{path}", spoofs)
        values = [value for _, value in body["headers"]]
        assert not any(value.startswith(SPOOFED) for value in values), path
        if signed and path == "/page":
            assert len(received(body)) == 1  # exactly one: the proxy's own, which verifies
            assert "error" not in body and body["claims"]["email"] == "ada@example.com"
        else:
            assert received(body) == [], path  # skip_auth and anonymous requests carry no identity


# --- what the verifier refuses -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


async def test_forged_assertions_are_refused_by_the_verifier(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    proxy = await assertion_proxy(proxy_factory, verifier, key_file)
    await signed_in(proxy, browser)
    (genuine,) = received(await fetch(browser, f"{proxy.url}/page"))
    header, claims = header_of(genuine), claims_of(genuine)
    # The genuine one verifies when it reaches the upstream another way: the refusals below are the
    # verifier refusing the forgery, not the route.
    assert "claims" in await direct(verifier, genuine)
    other = new_key()
    forged_claims = {**claims, "sub": "mallory", "email": "mallory@example.com"}
    head, payload, signature = genuine.split(".")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    forgeries = {
        # Another key, claiming the proxy's key id.
        "other-key-same-kid": jwt.encode(forged_claims, other, algorithm="ES256", headers=header),
        # Another key under its own id, which the proxy's key set does not hold.
        "other-key-own-kid": jwt.encode(
            forged_claims, other, algorithm="ES256", headers={**header, "kid": kid_of(other)}
        ),
        # The genuine signature over altered claims, and the genuine claims with an altered signature.
        "claims-altered": f"{head}.{_b64(json.dumps(forged_claims).encode())}.{signature}",
        "signature-altered": f"{head}.{payload}.{flipped}",
        # No signature at all.
        "alg-none": _unsigned({**header, "alg": "none"}, forged_claims),
        # A MAC keyed with the public key (the old RS/HS confusion), under the proxy's key id.
        "alg-hs256": _hs256_with_public_key(proxy, header, forged_claims),
    }
    for name, token in forgeries.items():
        body = await direct(verifier, token)
        assert "claims" not in body and body.get("error"), (name, body)


def _hs256_with_public_key(proxy: Proxy, header: dict[str, Any], claims: dict[str, Any]) -> str:
    import hashlib
    import hmac

    assertions = proxy.app[LIVE].runtime.assertions
    assert assertions is not None
    secret = assertions.jwks_body
    signing_input = (
        f"{_b64(json.dumps({**header, 'alg': 'HS256'}).encode())}.{_b64(json.dumps(claims).encode())}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


async def test_an_expired_assertion_is_refused_and_a_fresh_one_follows(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    # The proxy's clock runs 90 s behind the upstream's, so what it signs expired 30 s ago.
    clock = FakeClock(time.time() - 90)
    proxy = await assertion_proxy(proxy_factory, verifier, key_file, clock=clock)
    await signed_in(proxy, browser)
    body = await fetch(browser, f"{proxy.url}/page")
    assert body.get("error") == "ExpiredSignatureError", body
    (stale,) = received(body)
    clock.advance(90)  # caught up: the cached assertion has no time left, so a new one is signed
    body = await fetch(browser, f"{proxy.url}/page")
    assert "claims" in body, body
    (fresh,) = received(body)
    assert fresh != stale
    assert (await direct(verifier, stale)).get("error") == "ExpiredSignatureError"


async def test_an_assertion_for_another_upstream_is_refused_there(
    proxy_factory: ProxyFactory, verifier_factory: VerifierFactory, key_file: Path, browser: Browser
) -> None:
    first: Verifier = await verifier_factory()
    second: Verifier = await verifier_factory()
    proxy = await assertion_proxy(
        proxy_factory,
        first,
        key_file,
        upstreams=[
            {"path": "/", "url": first.url, "timeout": 10},
            {"path": "/second", "url": second.url + "/mounted", "timeout": 10},
        ],
    )
    second.proxy = proxy.url
    await signed_in(proxy, browser)
    to_second = await fetch(browser, f"{proxy.url}/second/page")
    assert to_second["claims"]["aud"] == second.url  # the origin only: the URL's path is no part of it
    (token,) = received(to_second)
    assert (await direct(first, token)).get("error") == "InvalidAudienceError"
    assert "claims" in await direct(second, token)


async def test_jwt_audience_replaces_the_upstream_origin(
    proxy_factory: ProxyFactory, verifier_factory: VerifierFactory, key_file: Path, browser: Browser
) -> None:
    audience = "https://apps.example.com"
    expecting: Verifier = await verifier_factory(audience)
    proxy = await assertion_proxy(proxy_factory, expecting, key_file, headers={"jwt_audience": audience})
    await signed_in(proxy, browser)
    body = await fetch(browser, f"{proxy.url}/page")
    assert body["claims"]["aud"] == audience
    # An upstream that expects its own origin refuses it.
    own: Verifier = await verifier_factory()
    own.proxy = proxy.url
    assert (await direct(own, received(body)[0])).get("error") == "InvalidAudienceError"


Verify = Callable[[dict[str, str]], dict[str, Any]]


def readme_example(jwks_url: str, issuer: str, audience: str) -> Verify:
    """The README's Python verifier, pointed at this proxy and upstream."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("### Verifying that a request came through the proxy", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    for example, actual in (
        ("https://app.example.com/oauth2/jwks.json", jwks_url),
        ('issuer="https://app.example.com"', f'issuer="{issuer}"'),
        ('audience="http://127.0.0.1:8080"', f'audience="{audience}"'),
    ):
        assert example in code, example
        code = code.replace(example, actual)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the repository's own README
    verified: Verify = namespace["verified_identity"]
    return verified


async def test_the_readme_example_verifies_what_the_proxy_signs(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    proxy = await assertion_proxy(proxy_factory, verifier, key_file)
    await signed_in(proxy, browser)
    (token,) = received(await fetch(browser, f"{proxy.url}/page"))
    verified = readme_example(f"{proxy.url}/oauth2/jwks.json", proxy.url, verifier.url)
    claims = await asyncio.to_thread(verified, {HEADER: token})
    assert claims["email"] == "ada@example.com"
    for headers in ({}, {HEADER: SPOOFED}, {HEADER: token[:-8] + "AAAAAAAA"}):
        with pytest.raises(jwt.PyJWTError):
            await asyncio.to_thread(verified, headers)


# --- the cache -----------------------------------------------------------------------------------------


async def test_one_user_gets_the_same_assertion_for_half_a_minute(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    # Starts 31 s behind real time, so that every assertion below is valid for the real-time verifier.
    clock = FakeClock(time.time() - 31)
    proxy = await assertion_proxy(proxy_factory, verifier, key_file, clock=clock)
    await signed_in(proxy, browser)
    first = await fetch(browser, f"{proxy.url}/one")
    again = await fetch(browser, f"{proxy.url}/two")
    assert received(first) == received(again) and "claims" in again
    clock.advance(29)  # 31 s left: still reused
    assert received(await fetch(browser, f"{proxy.url}/three")) == received(first)
    clock.advance(2)  # 29 s left: a new one
    later = await fetch(browser, f"{proxy.url}/four")
    assert received(later) != received(first) and "claims" in later, later
    assert later["claims"]["iat"] == first["claims"]["iat"] + 31
    assert later["claims"]["jti"] != first["claims"]["jti"]
    # Another user never gets this user's assertion.
    async with contextlib.AsyncExitStack() as stack:
        other = Browser()
        stack.push_async_callback(other.close)
        await signed_in(proxy, other, "grace@example.com")
        theirs = await fetch(other, f"{proxy.url}/one")
        assert theirs["claims"]["email"] == "grace@example.com"
        assert received(theirs) != received(later)


# --- key rotation --------------------------------------------------------------------------------------


async def jwks_of(proxy: Proxy) -> tuple[list[str], str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/oauth2/jwks.json") as response:
            assert response.status == 200
            body = await response.json()
            return [key["kid"] for key in body["keys"]], response.headers["ETag"]


async def test_key_rotation_through_reloads(
    proxy_factory: ProxyFactory, verifier: Verifier, tmp_path: Path, browser: Browser
) -> None:
    old, new = new_key(), new_key()
    key_file = write_keys(tmp_path / "signing.pem", old)
    proxy = await assertion_proxy(proxy_factory, verifier, key_file)
    await signed_in(proxy, browser)
    before = await fetch(browser, f"{proxy.url}/page")
    (signed_by_old,) = received(before)
    assert header_of(signed_by_old)["kid"] == kid_of(old) and "claims" in before
    kids, etag = await jwks_of(proxy)
    assert kids == [kid_of(old)]

    # The new key first, the old one still published.
    write_keys(key_file, new, old)
    assert reload(proxy.app, proxy.config) == []
    kids, rotated_etag = await jwks_of(proxy)
    assert kids == [kid_of(new), kid_of(old)] and rotated_etag != etag
    assert "claims" in await direct(verifier, signed_by_old)  # signed before the reload, still good
    after = await fetch(browser, f"{proxy.url}/page")
    assert header_of(received(after)[0])["kid"] == kid_of(new) and "claims" in after

    # The old key retired: gone from the key set, and what it signed no longer verifies.
    write_keys(key_file, new)
    assert reload(proxy.app, proxy.config) == []
    kids, _ = await jwks_of(proxy)
    assert kids == [kid_of(new)]
    assert (await direct(verifier, signed_by_old)).get("error") == "PyJWKClientError"
    assert "claims" in await fetch(browser, f"{proxy.url}/page")


async def test_a_reload_with_a_broken_key_file_keeps_the_running_keys(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    proxy = await assertion_proxy(proxy_factory, verifier, key_file)
    running = proxy.app[LIVE].runtime
    spoil(key_file)
    with pytest.raises(ValueError, match=r"headers\.jwt_signing_key_file"):
        reload(proxy.app, proxy.config)
    assert proxy.app[LIVE].runtime is running
    await signed_in(proxy, browser)
    assert "claims" in await fetch(browser, f"{proxy.url}/page")


# --- /oauth2/jwks.json ---------------------------------------------------------------------------------


async def test_the_key_set_is_public_cacheable_and_never_proxied(
    proxy_factory: ProxyFactory, verifier: Verifier, tmp_path: Path
) -> None:
    keys = [new_key(), new_key()]
    proxy = await assertion_proxy(proxy_factory, verifier, write_keys(tmp_path / "keys.pem", *keys))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/oauth2/jwks.json") as response:
            assert response.status == 200
            assert response.content_type in ("application/json", "application/jwk-set+json")
            assert response.headers["Cache-Control"] == "public, max-age=300"
            etag = response.headers["ETag"]
            assert etag.startswith('"') and etag.endswith('"')
            body = await response.json()
        for key, published in zip(keys, body["keys"], strict=True):
            numbers = key.public_key().public_numbers()
            assert published == {
                "kty": "EC",
                "crv": "P-256",
                "x": _b64(numbers.x.to_bytes(32, "big")),
                "y": _b64(numbers.y.to_bytes(32, "big")),
                "kid": kid_of(key),
                "use": "sig",
                "alg": "ES256",
            }  # the public half only: no "d"
        async with http.get(f"{proxy.url}/oauth2/jwks.json", headers={"If-None-Match": etag}) as response:
            assert response.status == 304 and response.headers["ETag"] == etag
        # PyJWT reads it as a key set.
        assert [k.key_id for k in jwt.PyJWKSet.from_dict(body).keys] == [kid_of(key) for key in keys]
    assert verifier.paths == []  # answered by the proxy, never forwarded


async def test_the_key_set_is_404_without_jwt_assertion(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/oauth2/jwks.json") as response:
            assert response.status == 404
            assert response.headers["X-Authproxy"] == "1"  # the proxy's answer, not the echo upstream's
            assert response.headers["Cache-Control"] == "no-store"
            assert (await response.json())["error"] == "not_found"


# --- forward-auth --------------------------------------------------------------------------------------


async def test_the_forward_auth_assertion_is_addressed_to_the_original_request(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """`Assertions.for_forward_auth` on a real server: `jwt_audience`, else the origin a trusted front
    proxy names (`X-Forwarded-Proto` and `-Host`), else the request's own scheme and `Host`."""
    key = new_key()
    user = User("user-1", "ada@example.com", True, False, None, None)
    by_origin = Assertions([key], "https://auth.example.com")
    fixed = Assertions([key], "https://auth.example.com", "https://apps.example.com")

    async def answer(request: web.Request) -> web.Response:
        trusted = request.query.get("trusted") == "1"
        signer = fixed if request.query.get("fixed") == "1" else by_origin
        return web.Response(text=signer.for_forward_auth(user, request, trusted))

    app = web.Application()
    app.router.add_get("/auth", answer)
    server = await aiohttp_server(app)
    forwarded = {"X-Forwarded-Proto": "HTTPS", "X-Forwarded-Host": "App.Example.com"}

    async def audience(query: str, headers: dict[str, str]) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.make_url('/auth')}?{query}", headers=headers) as response:
                token = await response.text()
        public = {"keys": [by_origin.jwks()["keys"][0]]}
        signing = jwt.PyJWKSet.from_dict(public).keys[0]
        claims = jwt.decode(token, signing.key, algorithms=["ES256"], options={"verify_aud": False})
        return str(claims["aud"])

    assert await audience("trusted=1", forwarded) == "https://app.example.com"
    # Two front proxies: the one nearest to authproxy wrote the rightmost value.
    assert await audience("trusted=1", {"X-Forwarded-Host": "evil.example, app.example.com"}) == (
        "http://app.example.com"
    )
    own = f"http://{server.host}:{server.port}"
    assert await audience("trusted=0", forwarded) == own  # an untrusted peer's X-Forwarded-* is not believed
    assert await audience("trusted=1&fixed=1", forwarded) == "https://apps.example.com"


# --- keys on the command line and in the config --------------------------------------------------------


async def test_an_allowed_forward_auth_answer_carries_an_assertion(
    proxy_factory: ProxyFactory, verifier: Verifier, key_file: Path, browser: Browser
) -> None:
    """The answer nginx or Caddy passes on to the app: verified with PyJWT against the proxy's key set,
    addressed to the origin the request was for (here, from an untrusted peer, its own Host)."""
    proxy = await assertion_proxy(proxy_factory, verifier, key_file)
    await signed_in(proxy, browser)
    async with browser.http.get(f"{proxy.url}/oauth2/auth", allow_redirects=False) as response:
        assert response.status == 202
        token = response.headers[HEADER]
        email = response.headers["X-Auth-Request-Email"]
    claims = await asyncio.to_thread(verify, token, f"{proxy.url}/oauth2/jwks.json", proxy.url, proxy.url)
    assert claims["email"] == email == "ada@example.com"
    # Anonymous answers (401) carry none.
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{proxy.url}/oauth2/auth") as response:
            assert response.status == 401 and HEADER not in response.headers


def test_gen_signing_key_prints_one_ec_p256_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gen-signing-key"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-----BEGIN PRIVATE KEY-----\n") and out.endswith("-----END PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(out.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert len(read_signing_keys(out.encode())) == 1
    assert cli.main(["gen-signing-key"]) == 0
    assert capsys.readouterr().out != out  # a fresh key each time


CONFIG = (
    VALID
    + """
[headers]
jwt_assertion = true
"""
)


def check_config(tmp_path: Path, extra: str) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + extra, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check-config", "-c", str(path)])
    return code, out.getvalue(), err.getvalue()


def _rsa_key_file(path: Path) -> Path:
    path.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    return path


@pytest.mark.parametrize(
    "case",
    ["no-key-file", "missing-file", "rsa-key", "p384-key", "garbage", "empty-file"],
)
@pytest.mark.usefixtures("no_authproxy_env")
def test_check_config_refuses_a_missing_or_unusable_signing_key(tmp_path: Path, case: str) -> None:
    key_path = tmp_path / "signing.pem"
    if case == "rsa-key":
        _rsa_key_file(key_path)
    elif case == "p384-key":
        key_path.write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    elif case == "garbage":
        key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    elif case == "empty-file":
        key_path.write_bytes(b"")
    extra = "" if case == "no-key-file" else f'jwt_signing_key_file = "{key_path}"\n'
    code, out, err = check_config(tmp_path, extra)
    assert code == 2, (out, err)
    assert "headers.jwt_signing_key_file" in err, err
    assert "PRIVATE KEY" not in err and "MII" not in err  # no key material in the message


@pytest.mark.usefixtures("no_authproxy_env")
def test_check_config_accepts_a_generated_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gen-signing-key"]) == 0
    key_path = tmp_path / "signing.pem"
    key_path.write_text(capsys.readouterr().out)
    code, out, err = check_config(tmp_path, f'jwt_signing_key_file = "{key_path}"\n')
    assert code == 0 and "valid" in out, err
