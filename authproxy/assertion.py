"""The signed identity assertion: `X-Authproxy-Jwt-Assertion`, an ES256 JWT an upstream can verify.

With `[headers] jwt_assertion`, every authenticated request the proxy forwards (and every forward-auth
answer) carries a short JWT stating who the user is, signed with the first key of
`jwt_signing_key_file`. An upstream that verifies it against `{proxy_prefix}/jwks.json` knows the request
came through the proxy, even if something else on its network can reach it directly.

The token: header `alg` ES256, `typ` JWT, `kid` the RFC 7638 thumbprint of the signing key; claims `iss`
(`public_url`), `aud` (`jwt_audience`, else the origin the request is for: the upstream URL's
`scheme://host[:port]` when proxying, the original request's when answering forward-auth), `sub` (the
CentralAuth user id), `email`, `email_verified`, `iat`, `exp` (`iat` + 60 s) and a random `jti`.

Signing costs CPU on every request: `python -m timeit` measured 88-99 µs for one new assertion through
joserfc (34 µs of it the ECDSA P-256 signature itself) and 0.6 µs for a cached one (CPython 3.11,
cryptography 51, joserfc 1.8, one AMD EPYC core). So a signed assertion is kept per (user id, e-mail,
verified, audience) and reused while it has more than 30 s to live: a busy user costs one signature per
half minute, and an upstream always gets a token with at least 30 s left. The cache is a bounded LRU of
10,000 entries, about 800 bytes each (`tracemalloc`; the token is about 500 characters). The wall clock
is the runtime's (`Runtime.clock`), so tests move time instead of sleeping.

Every key of the file is published (`jwks()`), the signing one first: rotation is adding a new key
second, reloading, promoting it to first once caches of the key set have had time to refresh, and
removing the old one a minute later, when no assertion it signed is still valid.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from authproxy.core.headers import combined, forwarded_value
from authproxy.core.user import User

HEADER = "X-Authproxy-Jwt-Assertion"
ALGORITHM = "ES256"
LIFETIME = 60  # seconds from `iat` to `exp`
REUSE_MARGIN = 30  # a cached assertion is reused while it has more than this many seconds left
CACHE_SIZE = 10_000
JWKS_MEDIA_TYPE = "application/json"
JWKS_CACHE_CONTROL = "public, max-age=300"

_Key = tuple[str, str, bool, str]  # (user id, e-mail, verified, audience)


def origin_of(url: str) -> str:
    """The origin a URL names, `scheme://host[:port]` in lower case (no userinfo, path or query); a
    Unix-socket upstream (`unix:///path.sock`) has no origin and is named by its URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        return url
    return f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2].lower()}"


def forwarded_origin(request: web.BaseRequest, trusted: bool) -> str:
    """The origin of the request a front proxy is asking about (forward-auth): `X-Forwarded-Proto` and
    `X-Forwarded-Host` when the peer is a trusted proxy (the rightmost value, as for proxied requests),
    else this request's own scheme and `Host`."""
    headers = request.headers
    proto = forwarded_value(combined(headers.getall("X-Forwarded-Proto", ())), trusted) or request.scheme
    host = forwarded_value(combined(headers.getall("X-Forwarded-Host", ())), trusted) or request.host
    return f"{proto.lower()}://{host.lower()}"


class Assertions:
    """Signs identity assertions with the first of `keys` and publishes all of them.

    `issuer` is `public_url`; `audience` is `jwt_audience` (empty: each caller's own audience);
    `clock` is wall time in seconds.
    """

    header = HEADER  # the request header (and forward-auth answer header) that carries the assertion

    def __init__(
        self,
        keys: Sequence[ec.EllipticCurvePrivateKey],
        issuer: str,
        audience: str = "",
        clock: Callable[[], float] = time.time,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if not keys:
            raise ValueError("an assertion needs at least one signing key")
        jwks = [ECKey.import_key(key) for key in keys]
        self._key = jwks[0]
        self.kid = self._key.thumbprint()
        self._header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.kid}
        self.issuer = issuer
        self.audience = audience
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[str, int]] = OrderedDict()
        self._cache_size = cache_size
        self._origins: dict[str, str] = {}
        published: dict[str, dict[str, Any]] = {}
        for key in jwks:
            kid = key.thumbprint()
            # A key listed twice is published once.
            published.setdefault(
                kid, {**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": ALGORITHM}
            )
        self._jwks = {"keys": list(published.values())}
        self.jwks_body = json.dumps(self._jwks, separators=(",", ":")).encode()
        self.etag = '"' + hashlib.sha256(self.jwks_body).hexdigest()[:32] + '"'

    def sign(self, user: User, audience: str) -> str:
        """The assertion for `user`, addressed to `jwt_audience` or, when that is empty, to `audience`;
        a cached one while it has more than `REUSE_MARGIN` seconds left."""
        aud = self.audience or audience
        key = (user.id, user.email, user.verified, aud)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] - now > REUSE_MARGIN:
            self._cache.move_to_end(key)
            return cached[0]
        iat = int(now)
        claims = {
            "iss": self.issuer,
            "aud": aud,
            "sub": user.id,
            "email": user.email,
            "email_verified": user.verified,
            "iat": iat,
            "exp": iat + LIFETIME,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(self._header, claims, self._key, algorithms=[ALGORITHM])
        self._cache[key] = (token, iat + LIFETIME)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return token

    def for_upstream(self, user: User, upstream_url: str) -> str:
        """The assertion for a request proxied to `upstream_url`: addressed to its origin."""
        origin = self._origins.get(upstream_url)
        if origin is None:
            # Upstream URLs come from the config, so this memo holds a handful of entries.
            origin = self._origins[upstream_url] = origin_of(upstream_url)
        return self.sign(user, origin)

    def for_forward_auth(self, user: User, request: web.BaseRequest, trusted: bool) -> str:
        """The assertion for a forward-auth answer to `request`: addressed to `jwt_audience` or the
        original request's origin (`forwarded_origin`); `trusted` is whether the peer is a trusted
        proxy (`context.peer_trusted(request)`)."""
        return self.sign(user, self.audience or forwarded_origin(request, trusted))

    def jwks(self) -> dict[str, Any]:
        """The public key set, `{"keys": [...]}`, the signing key first (a copy: callers may keep it)."""
        return {"keys": [dict(key) for key in self._jwks["keys"]]}
