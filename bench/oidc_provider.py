"""A minimal OpenID Connect provider, only to sign Apache's mod_auth_openidc in for the benchmark.

It answers what the authorization code flow needs and nothing else: discovery (served for
completeness; Apache is configured with the endpoints statically), the JWKS, an authorize endpoint
that approves at once and redirects straight back with `code` and `state`, and a token endpoint that
checks the client (client_secret_post or client_secret_basic) and the code, and answers with an access
token and an RS256 ID token carrying the request's nonce. The signing key is made at start-up; codes
are single-use. It serves HTTPS only, since mod_auth_openidc accepts nothing else for a statically
configured provider's endpoints: `write_tls` makes a self-signed certificate for 127.0.0.1 beforehand,
which Apache trusts through OIDCCABundlePath and the harness's sign-in client through an SSL context.
Nothing here is called while a run is measured: mod_auth_openidc does not ask its provider again once
a session exists.

    python -m bench.oidc_provider --listen 127.0.0.1:9002 --client-id ID --client-secret SECRET \
        --tls-cert DIR/cert.pem --tls-key DIR/key.pem
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from bench import aio

EMAIL = "bench@example.com"
SUBJECT = "bench-user"
TOKEN_SECONDS = 3600
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def write_tls(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key: (cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None


class Provider:
    def __init__(self, issuer: str, client_id: str, client_secret: str) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.kid = _b64(hashlib.sha256(_uint(numbers.n).encode()).digest()[:12])
        self.jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid}
        self.jwk |= {"n": _uint(numbers.n), "e": _uint(numbers.e)}
        self.grants: dict[str, _Grant] = {}
        self.counts = {"authorize": 0, "token": 0}

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "scopes_supported": ["openid", "email"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.jwk]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.counts)

    async def authorize(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            raise web.HTTPBadRequest(text="unknown client or response type")
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri.startswith("http://127.0.0.1:"):
            raise web.HTTPBadRequest(text="redirect_uri must be on loopback")
        self.counts["authorize"] += 1
        code = secrets.token_urlsafe(24)
        self.grants[code] = _Grant(self.client_id, redirect_uri, query.get("nonce"))
        answer = {"code": code}
        if "state" in query:
            answer["state"] = query["state"]
        separator = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(f"{redirect_uri}{separator}{urlencode(answer)}")

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                client_id = ""
        if client_id != self.client_id or not hmac.compare_digest(client_secret, self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.grants.pop(str(form.get("code", "")), None)
        if (
            form.get("grant_type") != "authorization_code"
            or grant is None
            or form.get("redirect_uri") != grant.redirect_uri
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.counts["token"] += 1
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": SUBJECT,
            "aud": self.client_id,
            "iat": now,
            "exp": now + TOKEN_SECONDS,
            "email": EMAIL,
            "email_verified": True,
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "expires_in": TOKEN_SECONDS,
                "id_token": self.sign(claims),
            },
            headers={"Cache-Control": "no-store"},
        )


async def serve(host: str, port: int, client_id: str, client_secret: str, tls: ssl.SSLContext) -> None:
    provider = Provider(f"https://{host}:{port}", client_id, client_secret)
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", provider.discovery)
    app.router.add_get("/jwks", provider.jwks)
    app.router.add_get("/authorize", provider.authorize)
    app.router.add_post("/token", provider.token)
    app.router.add_get("/_stats", provider.stats)
    await aio.serve(app, "oidc_provider", host, port, ssl_context=tls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (the issuer is https://HOST:PORT)")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--tls-cert", required=True, type=Path, help="PEM certificate (see write_tls)")
    parser.add_argument("--tls-key", required=True, type=Path, help="PEM private key")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.tls_cert, args.tls_key)
    aio.run(serve(host, int(port), args.client_id, args.client_secret, tls))


if __name__ == "__main__":
    main()
