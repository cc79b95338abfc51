"""A real front proxy (Caddy, an ingress-nginx rendering) doing forward-auth against a real authproxy.

What the forward-auth integration tests share: the route table they run under, the answers they read,
and the fixture plumbing that starts authproxy behind the front proxy over TLS on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from multidict import CIMultiDictProxy
from yarl import URL

from support.echo import received_headers
from support.harness import Browser, Proxy, deep_merge, free_port
from support.nginx import site_tls

ADA = "ada@example.com"  # admitted by the global rules, not by /staff/'s
BOB = "bob@staff.example"  # admitted by /staff/'s allow-list
JSON = {"Accept": "application/json"}
# `/open/` is public, `/staff/` admits staff.example only, `/forms/` is public for GET only.
ROUTES: dict[str, Any] = {
    "routes": [
        {"path": "/open/", "auth": "public"},
        {"path": "/staff/", "allowed_email_domains": ["staff.example"]},
        {"path": "/forms/", "auth": "public", "methods": ["GET"]},
    ]
}
IDENTITY = ["x-auth-request-user", "x-auth-request-email", "x-auth-request-preferred-username"]
# Spellings that only resolve to /staff/x after a public prefix: never a public request.
PATH_TRICKS = [
    "/open/%2e%2e/staff/x",
    "/open/../staff/x",
    "/open;x/../staff/x",
    "/open//../staff/x",
    "/open/x/..%2f..%2fstaff/x",
]


class Front(Protocol):
    async def stop(self) -> None: ...


F = TypeVar("F", bound=Front)


@dataclass
class Site(Generic[F]):
    url: str
    proxy: Proxy
    front: F


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def received(self) -> tuple[str, str, dict[str, str]]:
        """The method, path and headers (names lower-cased) the echo app behind the front proxy received."""
        assert self.status == 200 and self.headers.get("X-Upstream") == "echo", (self.status, self.text[:300])
        payload = self.json()
        return payload["method"], payload["path"], received_headers(payload)


async def fetch(
    browser: Browser,
    url: str | URL,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    follow: bool = False,
    **kwargs: Any,
) -> Answer:
    async with browser.http.request(
        method, url, headers=headers, allow_redirects=follow, ssl=site_tls().client_context, **kwargs
    ) as response:
        return Answer(response.status, response.headers, await response.text())


async def sites(
    start_proxy: Callable[..., Awaitable[Proxy]],
    start_front: Callable[[int, str], Awaitable[F]],
) -> AsyncIterator[Callable[..., Awaitable[Site[F]]]]:
    """The body of a `site_factory` fixture: authproxy (trusting loopback, `public_url` the front
    proxy's TLS URL, secure cookies, `ROUTES` and the test's overrides), then the front proxy on the
    chosen port, given authproxy's authority; all stopped at the end."""
    started: list[F] = []

    async def start(**overrides: Any) -> Site[F]:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        behind = {
            "server": {"public_url": url, "trusted_proxies": ["127.0.0.1/32"]},
            "session": {"cookie_secure": True},
        }
        proxy = await start_proxy(**deep_merge(deep_merge(behind, ROUTES), overrides))
        front = await start_front(port, URL(proxy.url).raw_authority)
        started.append(front)
        return Site(url, proxy, front)

    yield start
    for front in started:
        await front.stop()
