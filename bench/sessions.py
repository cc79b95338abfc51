"""Sessions for the benchmark: authproxy configs that share one cookie, real logins, minted cookies.

Every authproxy instance of a run shares the cookie secret, cookie name and `public_url`, so a cookie
from one real login (through the first instance and the fake CentralAuth) is valid on all of them;
CentralAuth ties a session to the domain it logged in on, which `public_url` is. For the memory
measurement, `mint_cookies` seals many sessions directly with the proxy's own sealer: tokens are random
but exactly as long as a real one, so every cookie and cache entry has a real one's size.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from authproxy.core.seal import Sealer
from authproxy.session.model import Session

COOKIE_NAME = "_authproxy"
EMAIL = "bench@example.com"
USER_AGENT = "authproxy-bench/1 (wrk; loadgen)"


@dataclass(frozen=True)
class Identity:
    """What every instance of one run shares."""

    public_url: str
    client_id: str = "bench-client"
    client_secret: str = field(default_factory=lambda: secrets.token_hex(32))  # 64 characters
    cookie_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))


def config_text(
    identity: Identity,
    *,
    port: int,
    idp_url: str,
    upstream_url: str,
    sink_url: str,
    workers: int,
    ttl: float,
    metrics_port: int = 0,
    trusted_proxies: tuple[str, ...] = (),
) -> str:
    metrics = f"127.0.0.1:{metrics_port}" if metrics_port else ""
    trusted = ", ".join(f'"{cidr}"' for cidr in trusted_proxies)
    return f"""\
[server]
listen = "127.0.0.1:{port}"
public_url = "{identity.public_url}"
workers = {workers}
metrics_listen = "{metrics}"
trusted_proxies = [{trusted}]

[centralauth]
base_url = "{idp_url}"
client_id = "{identity.client_id}"
client_secret = "{identity.client_secret}"
session_check_ttl = {ttl}

[session]
cookie_name = "{COOKIE_NAME}"
cookie_secrets = ["{identity.cookie_secret}"]
cookie_secure = false

[[upstreams]]
path = "/"
url = "{upstream_url}"

[[upstreams]]
path = "/upload"
url = "{sink_url}"

[logging]
format = "json"
level = "info"
access_log = true
"""


async def login(proxy_url: str, path: str = "/1k") -> str:
    """Sign in through the proxy and the fake CentralAuth as a browser would; the Cookie header value."""
    jar = aiohttp.CookieJar(unsafe=True)
    headers = {"User-Agent": USER_AGENT, "Accept": "text/html"}
    async with (
        aiohttp.ClientSession(cookie_jar=jar, headers=headers) as http,
        http.get(proxy_url + path) as response,
    ):
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"login through {proxy_url} ended with {response.status}")
    for cookie in jar:
        if cookie.key == COOKIE_NAME:
            return f"{COOKIE_NAME}={cookie.value}"
    raise RuntimeError("login set no session cookie")


def logins(proxy_url: str, count: int) -> list[str]:
    async def all_of_them() -> list[str]:
        return [await login(proxy_url) for _ in range(count)]

    return asyncio.run(all_of_them())


def token_of(cookie: str, identity: Identity) -> str:
    """The access token inside a session cookie (`name=value`)."""
    plaintext = Sealer([identity.cookie_secret]).unseal(cookie.partition("=")[2], f"session:{COOKIE_NAME}")
    session = Session.from_bytes(plaintext) if plaintext is not None else None
    if session is None:
        raise RuntimeError("the session cookie does not unseal with the run's secret")
    return session.access_token


def mint_cookies(path: Path, count: int, identity: Identity, length: int) -> Path:
    """`count` distinct valid session cookies, one Cookie header value per line."""
    sealer = Sealer([identity.cookie_secret])
    purpose = f"session:{COOKIE_NAME}"
    now = time.time()
    with path.open("w") as output:
        for number in range(count):
            token = secrets.token_urlsafe(length)[:length]
            session = Session(token, f"user-{number}", f"user-{number}@example.com", now, now + 86400)
            output.write(f"{COOKIE_NAME}={sealer.seal(session.to_bytes(), purpose)}\n")
    return path
