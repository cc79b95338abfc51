"""Everything a request handler needs, built once from the config by the composition root (`app.py`).

Handlers reach it through `request.app[RUNTIME]`; nothing here does I/O at construction time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from authproxy.authorization import Rules
from authproxy.config import Config
from authproxy.cookies import CookieValues, SessionCookie
from authproxy.h1 import Pool
from authproxy.headers import ClientIPs, IPNetwork, UpstreamHeaders
from authproxy.metrics import Metrics
from authproxy.pages import Branding
from authproxy.paths import CanonicalTargets, RouteRules
from authproxy.provider.checker import Fetch, SessionChecker
from authproxy.provider.client import CentralAuthClient
from authproxy.proxy import Router
from authproxy.redirect import RedirectPolicy
from authproxy.session.seal import Sealer
from authproxy.session.store import SessionStore
from authproxy.transaction import TTL, TransactionCookies
from authproxy.watch import Connections
from authproxy.websocket import Clients


class UsedStates:
    """States already consumed by a callback in this worker: a replayed callback is refused at once.

    Bounded, and entries outlive the transaction TTL only briefly, so memory stays flat.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def consume(self, state: str, now: float) -> bool:
        """Record `state`; False if it had already been used."""
        while self._seen and (len(self._seen) >= self._limit or next(iter(self._seen.values())) < now - TTL):
            self._seen.popitem(last=False)
        if state in self._seen:
            return False
        self._seen[state] = now
        return True


@dataclass
class Runtime:
    config: Config
    store: SessionStore
    sealer: Sealer
    cookie: SessionCookie
    session_cookie: CookieValues
    transactions: TransactionCookies
    redirects: RedirectPolicy
    rules: Rules
    routes: RouteRules
    targets: CanonicalTargets
    router: Router
    branding: Branding
    metrics: Metrics
    trusted_proxies: list[IPNetwork]
    client_ips: ClientIPs
    upstream_headers: UpstreamHeaders
    callback_url: str
    login_url: str
    prefix: str
    clock: Callable[[], float] = time.time
    used_states: UsedStates = field(default_factory=UsedStates)
    probe_cache: dict[str, tuple[float, str]] = field(default_factory=dict)
    # Created in the app's cleanup context, once the event loop runs.
    client_session: aiohttp.ClientSession | None = None
    upstream_pool: Pool | None = None
    centralauth: CentralAuthClient | None = None
    session_checker: SessionChecker | None = None
    # userinfo with its calls counted by outcome; the checker and the login callback both use it.
    userinfo: Fetch | None = None
    # Open websockets and event streams by session (see `authproxy.watch`), and the client sessions
    # upstream websockets are opened with, apart from CentralAuth's; both are kept across reloads.
    connections: Connections = field(default_factory=Connections)
    websocket_clients: Clients | None = None

    @property
    def provider(self) -> CentralAuthClient:
        if self.centralauth is None:
            raise RuntimeError("the CentralAuth client is created when the application starts")
        return self.centralauth

    @property
    def checker(self) -> SessionChecker:
        if self.session_checker is None:
            raise RuntimeError("the session checker is created when the application starts")
        return self.session_checker

    @property
    def pool(self) -> Pool:
        if self.upstream_pool is None:
            raise RuntimeError("the upstream connection pool is created when the application starts")
        return self.upstream_pool

    @property
    def websockets(self) -> Clients:
        if self.websocket_clients is None:
            raise RuntimeError("the websocket client sessions are created when the application starts")
        return self.websocket_clients

    @property
    def http(self) -> aiohttp.ClientSession:
        if self.client_session is None:
            raise RuntimeError("the upstream client session is created when the application starts")
        return self.client_session


RUNTIME = web.AppKey("runtime", Runtime)
