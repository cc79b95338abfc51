"""The proxy under test, really started on loopback in front of a real echo upstream and the fake IdP.

`ProxyHarness.start()` writes nothing to disk: it builds the same `Config` that `load()` would from a
TOML file, so tests exercise the same validation, and runs `build_app(config)` on a real socket.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from authproxy.app import build_app, make_runner
from authproxy.config import Config

COOKIE_SECRET = "test-cookie-secret-0123456789abcdefghijklmnop"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"
)
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Proxy:
    url: str
    config: Config
    app: web.Application
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_proxy(
    *,
    idp_url: str,
    client_id: str,
    client_secret: str,
    upstream_url: str,
    overrides: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> Proxy:
    """`clock` is the proxy's wall time, `monotonic` the one its TTLs run on; tests pass a clock they
    advance themselves (`support.harness.FakeClock`) instead of sleeping."""
    port = free_port()
    base: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
        "centralauth": {
            "base_url": idp_url,
            "client_id": client_id,
            "client_secret": client_secret,
            "timeout": 2,
        },
        "session": {"cookie_secrets": [COOKIE_SECRET], "cookie_secure": False},
        "upstreams": [{"path": "/", "url": upstream_url, "timeout": 5}],
        "logging": {"format": "console", "level": "warning"},
    }
    config = Config(**deep_merge(base, overrides or {}))
    app = build_app(config, clock=clock, monotonic=monotonic)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Proxy(f"http://127.0.0.1:{port}", config, app, runner)


class FakeClock:
    """A clock that moves only when a test says so: for wall time and for TTLs alike."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Browser:
    """A browser-like client: a cookie jar, redirects followed, HTML Accept and a stable user agent."""

    def __init__(self, user_agent: str = BROWSER_UA, ip: str | None = None) -> None:
        headers = {"User-Agent": user_agent, "Accept": HTML}
        if ip is not None:
            headers["X-Forwarded-For"] = ip
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.http = aiohttp.ClientSession(cookie_jar=self.jar, headers=headers)

    async def close(self) -> None:
        await self.http.close()

    async def get(self, url: str, **kwargs: Any) -> tuple[int, URL, str]:
        async with self.http.get(url, **kwargs) as response:
            return response.status, response.url, await response.text()

    async def login(self, url: str, email: str) -> tuple[int, URL, str]:
        """Open `url`, get sent to the fake CentralAuth's form, submit `email`, follow back."""
        async with self.http.get(url) as response:
            form_url = response.url
            page = await response.text()
        assert "/login" in form_url.path and 'name="email"' in page, (form_url, page[:300])
        async with self.http.post(form_url, data={"email": email}) as response:
            return response.status, response.url, await response.text()

    def cookie(self, name: str) -> str | None:
        for cookie in self.jar:
            if cookie.key == name:
                return cookie.value
        return None
