"""Everything a request handler needs, built once from the config by the composition root (`app.py`).

The application holds the live one (`app[LIVE].runtime`); the request context
(`routes.common.in_context`) hands it to each request (`context.RUNTIME`), which keeps it to the end,
so a reload that swaps in a new runtime never changes the objects a request in flight is using.
Nothing here does I/O at construction time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from authproxy.assertion import Assertions
from authproxy.config import Config
from authproxy.cookies import CookieValues, SessionCookie
from authproxy.core.authorization import Rules
from authproxy.core.headers import ClientIPs, IdentityNames, UpstreamHeaders
from authproxy.core.paths import CanonicalTargets, RouteRules
from authproxy.core.redirect import RedirectPolicy
from authproxy.core.routing import Route, RouteTable
from authproxy.core.seal import Sealer
from authproxy.core.transaction import TTL, TransactionCookies
from authproxy.forwarder import Router, Upstream
from authproxy.h1 import Pool
from authproxy.line_buffer import Lines
from authproxy.metrics import Metrics
from authproxy.pages import Branding
from authproxy.provider.broker import BrokerClient
from authproxy.provider.checker import Fetch, SessionChecker
from authproxy.provider.client import CentralAuthClient
from authproxy.request_ids import RequestIds
from authproxy.session.store import SessionStore
from authproxy.tracing import Tracing
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
    route_table: RouteTable
    # The upstream of each `[[routes]]` entry that names one, by the entry's index.
    route_upstreams: dict[int, Upstream]
    branding: Branding
    metrics: Metrics
    client_ips: ClientIPs
    upstream_headers: UpstreamHeaders
    identity_headers: IdentityNames  # to the upstream
    forward_auth_headers: IdentityNames  # in a forward-auth answer
    callback_url: str
    login_url: str
    prefix: str
    # public_url's parts: where logins run, whatever host a request came to.
    public_origin: str = ""
    public_host: str = ""
    public_scheme: str = "https"
    # Signs `X-Authproxy-Jwt-Assertion` and publishes its keys; None without `[headers] jwt_assertion`.
    assertions: Assertions | None = None
    clock: Callable[[], float] = time.time  # wall time: session expiry, cookie ages
    # Durations and TTLs (the session-check cache, dead tokens): never jumps with the wall clock.
    monotonic: Callable[[], float] = time.monotonic
    used_states: UsedStates = field(default_factory=UsedStates)
    request_ids: RequestIds = field(default_factory=RequestIds)
    access_lines: Lines = field(default_factory=Lines)
    probe_cache: dict[str, tuple[float, str]] = field(default_factory=dict)
    # Created in the app's cleanup context, once the event loop runs.
    upstream_pool: Pool | None = None
    backchannel_pool: Pool | None = None  # CentralAuth's connections, apart from the upstreams'
    centralauth: CentralAuthClient | None = None
    session_checker: SessionChecker | None = None
    # userinfo with its calls counted by outcome; the checker and the login callback both use it.
    counted_userinfo: Fetch | None = None
    # Open websockets and event streams by session (see `authproxy.watch`), and the client sessions
    # upstream websockets are opened with, apart from CentralAuth's; both are kept across reloads.
    connections: Connections = field(default_factory=Connections)
    websocket_clients: Clients | None = None
    # Spans and their exporter (`[tracing]`), started with the app; None when tracing is off, which is
    # all a request then spends on it. Kept across reloads (its settings need a restart).
    tracing: Tracing | None = None
    # A supervised worker's line to the check broker (`authproxy.provider.broker`); kept across reloads.
    broker: BrokerClient | None = None

    def upstream_for(self, route: Route, path: str) -> Upstream | None:
        """Where a request on `route` goes: the route's own upstream, or the longest-prefix choice."""
        if route.index is not None and route.index in self.route_upstreams:
            return self.route_upstreams[route.index]
        return self.router.pick(path)

    @property
    def provider(self) -> CentralAuthClient:
        if self.centralauth is None:
            raise RuntimeError("the CentralAuth client is created when the application starts")
        return self.centralauth

    @property
    def userinfo(self) -> Fetch:
        if self.counted_userinfo is None:
            raise RuntimeError("the CentralAuth client is created when the application starts")
        return self.counted_userinfo

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
    def backchannel(self) -> Pool:
        if self.backchannel_pool is None:
            raise RuntimeError("the CentralAuth connection pool is created when the application starts")
        return self.backchannel_pool

    @property
    def websockets(self) -> Clients:
        if self.websocket_clients is None:
            raise RuntimeError("the websocket client sessions are created when the application starts")
        return self.websocket_clients


@dataclass
class Live:
    """The runtime new requests start on; a reload replaces it in one assignment."""

    runtime: Runtime


LIVE = web.AppKey("live", Live)
