"""The composition root: builds every component from the config and wires the routes.

Nothing else constructs long-lived objects; tests build the same application with `build_app(config)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from authproxy import answers, logs, tracing
from authproxy.access_log import AccessLogger
from authproxy.assertion import Assertions
from authproxy.config import Config, RouteConfig, UpstreamConfig, split_host_port
from authproxy.cookies import CookieValues, SessionCookie
from authproxy.core.authorization import Rules
from authproxy.core.headers import PROFILES, ClientIPs, UpstreamHeaders, self_test
from authproxy.core.paths import CanonicalTargets, RouteRules
from authproxy.core.redirect import RedirectPolicy
from authproxy.core.routing import Route, RouteTable
from authproxy.core.seal import Sealer
from authproxy.core.signing_keys import read_signing_keys
from authproxy.core.transaction import TransactionCookies
from authproxy.core.user import User
from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.forwarder import Router, Upstream
from authproxy.h1 import Pool
from authproxy.metrics import Metrics, multiprocess_mode
from authproxy.pages import Branding
from authproxy.provider.broker import BROKER_ENV, BrokerClient
from authproxy.provider.checker import (
    ChainedChecks,
    DeadTokens,
    DeadTokensFanout,
    Fetch,
    SessionChecker,
    SharedChecks,
)
from authproxy.provider.client import CentralAuthClient
from authproxy.routes import auth, compat, forward_auth, health, jwks, proxy, signout
from authproxy.routes.common import Handler, in_context
from authproxy.runtime import LIVE, Live, Runtime
from authproxy.session.store import CookieStore, SessionStore, redis_store
from authproxy.watch import GOING_AWAY
from authproxy.websocket import Clients

if TYPE_CHECKING:
    from authproxy.session.redis import RedisClient

log = structlog.get_logger("authproxy")


def build_runtime(
    config: Config,
    clock: Callable[[], float] = time.time,
    redis: RedisClient | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Runtime:
    session = config.session
    secrets = [secret.get_secret_value() for secret in session.cookie_secrets]
    sealer = Sealer(secrets)
    cookie = SessionCookie.from_settings(
        session.cookie_name,
        secure=session.cookie_secure,
        samesite=session.cookie_samesite,
        domain=session.cookie_domain,
    )
    public = urlsplit(config.server.public_url)
    prefix = config.server.proxy_prefix
    store: SessionStore
    if session.store == "redis":
        from authproxy.session.redis import RedisStore, client_for  # imported here only: see redis_store

        client = redis if redis is not None else client_for(session)
        store = RedisStore(client, sealer, cookie.name, clock)
    else:
        store = CookieStore(sealer, cookie.name, clock)
    transactions = TransactionCookies(sealer, session.cookie_name, secure=session.cookie_secure)
    route_table = RouteTable(
        [_route(index, entry, config) for index, entry in enumerate(config.routes.table)], Route.build(None)
    )
    return Runtime(
        config=config,
        store=store,
        sealer=sealer,
        cookie=cookie,
        session_cookie=CookieValues(cookie.name),
        transactions=transactions,
        redirects=RedirectPolicy(
            public_url=f"{public.scheme}://{public.netloc}",
            allowed_domains=tuple(config.redirects.allowed_domains) + route_table.redirect_domains(),
        ),
        rules=Rules(
            client_id=config.centralauth.client_id,
            allowed_email_domains=frozenset(config.authorization.allowed_email_domains),
            allowed_emails=frozenset(config.authorization.allowed_emails),
            require_verified_email=config.authorization.require_verified_email,
            allow_blocked_users=config.authorization.allow_blocked_users,
        ),
        routes=RouteRules.from_config(config.routes.skip_auth, config.routes.api),
        targets=CanonicalTargets(config.routes.keep_path_parameters),
        router=Router([_upstream(table) for table in config.upstreams]),
        route_table=route_table,
        route_upstreams={
            index: Upstream(entry.path if not entry.path.startswith("~") else "/", entry.upstream)
            for index, entry in enumerate(config.routes.table)
            if entry.upstream is not None
        },
        metrics=Metrics(),
        branding=Branding(config.branding.title, config.branding.logo_url, config.branding.footer),
        client_ips=ClientIPs(config.server.trusted_proxies),
        identity_headers=PROFILES[config.headers.profile][0],
        forward_auth_headers=PROFILES[config.headers.profile][1],
        upstream_headers=UpstreamHeaders(cookie.name, transactions.prefix, config.headers.strip_extra),
        callback_url=f"{config.server.public_url}{prefix}/callback",
        login_url=f"{config.centralauth.base_url}/login",
        prefix=prefix,
        public_origin=f"{public.scheme}://{public.netloc}",
        public_host=public.netloc.lower(),
        public_scheme=public.scheme,
        assertions=_assertions(config, clock),
        clock=clock,
        monotonic=monotonic,
    )


def _assertions(config: Config, clock: Callable[[], float]) -> Assertions | None:
    """The assertion signer, from the key file as it is now: a reload reads a rotated file again."""
    headers = config.headers
    if not headers.jwt_assertion:
        return None
    try:
        keys = read_signing_keys(Path(headers.jwt_signing_key_file).read_bytes())
    except (OSError, ValueError) as exc:  # changed since the config was loaded: a reload keeps the old one
        raise ValueError(f"headers.jwt_signing_key_file: {exc}") from None
    return Assertions(keys, config.server.public_url, headers.jwt_audience, clock)


def _route(index: int, entry: RouteConfig, config: Config) -> Route:
    """A `[[routes]]` entry; allow-lists it leaves empty are the global ones, and its
    `require_verified_email` adds to the global rule, never lifts it."""
    rules = None
    own_lists = bool(entry.allowed_emails or entry.allowed_email_domains)
    if own_lists or entry.require_verified_email:
        base = config.authorization
        rules = Rules(
            client_id=config.centralauth.client_id,
            allowed_email_domains=frozenset(
                entry.allowed_email_domains if own_lists else base.allowed_email_domains
            ),
            allowed_emails=frozenset(entry.allowed_emails if own_lists else base.allowed_emails),
            require_verified_email=entry.require_verified_email or base.require_verified_email,
            allow_blocked_users=base.allow_blocked_users,
        )
    return Route.build(
        index,
        entry.path,
        host=entry.host,
        methods=entry.methods,
        upstream=entry.upstream or "",
        auth=entry.auth,
        api=entry.api,
        rules=rules,
        session_check_ttl=entry.session_check_ttl,
        step_up_max_age=entry.step_up_max_age,
        strip_prefix=entry.strip_prefix,
        bearer=entry.bearer,
        pass_authorization=entry.pass_authorization,
    )


def _upstream(table: UpstreamConfig) -> Upstream:
    return Upstream(
        table.path,
        table.url,
        preserve_host=table.preserve_host,
        timeout=table.timeout,
        connect_timeout=table.connect_timeout,
        send_timeout=table.send_timeout,
        ca_file=table.ca_file,
        verify=table.verify,
        server_name=table.server_name,
        client_cert_file=table.client_cert_file,
        client_key_file=table.client_key_file,
    )


def build_app(
    config: Config, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
) -> web.Application:
    """The application for `config`. Tests pass their own clocks: `clock` is wall time (expiry
    times), `monotonic` measures durations (the session-check TTL, the memory of dead tokens)."""
    runtime = build_runtime(config, clock, monotonic=monotonic)
    # Refuse to start if a spoofed identity header or a proxy cookie could reach an upstream.
    self_test(
        runtime.cookie.name, runtime.transactions.prefix, runtime.upstream_headers, config.headers.strip_extra
    )
    app = web.Application()
    live = app[LIVE] = Live(runtime)
    if config.tracing.otlp_endpoint:
        # First in, last out: the spans of the last requests leave after everything else has closed.
        attach = lambda started: setattr(app[LIVE].runtime, "tracing", started)  # noqa: E731
        app.cleanup_ctx.append(tracing.lifetime(config.tracing, attach))
    app.cleanup_ctx.append(_client_sessions)
    app.on_shutdown.append(_end_connections)
    app.cleanup_ctx.append(_metrics_listener)
    app.on_cleanup.append(_flush_access_log)
    prefix = runtime.prefix

    def route(method: str, path: str, handler: Handler, name: str) -> None:
        # Every handler runs in the request context (`routes.common.in_context`); GET answers HEAD too.
        if method == "GET":
            app.router.add_get(path, in_context(handler, live), name=name)
        else:
            app.router.add_route(method, path, in_context(handler, live), name=name)

    route("GET", "/ping", health.ping, "health")
    route("GET", "/ready", health.ready, "ready")
    route("GET", f"{prefix}/start", auth.start, "login")
    route("GET", f"{prefix}/callback", auth.callback, "callback")
    route("GET", f"{prefix}/sign_in", auth.sign_in, "sign_in")
    route("GET", f"{prefix}/sign_out", signout.sign_out, "sign_out")
    route("POST", f"{prefix}/sign_out", signout.sign_out, "sign_out_post")
    route("GET", f"{prefix}/signed_out", signout.signed_out, "signed_out")
    route("GET", f"{prefix}/auth", forward_auth.auth, "forward_auth")
    # `/auth/<path>` checks <path> (Envoy ext_authz's path_prefix); any method, never proxied.
    route("*", f"{prefix}/auth/{{path:[\\s\\S]*}}", forward_auth.auth_path, "forward_auth_path")
    route("GET", f"{prefix}/userinfo", forward_auth.userinfo, "userinfo")
    route("GET", f"{prefix}/jwks.json", jwks.jwks, "jwks")
    if config.centralauth.compat_routes:
        # Before the catch-all: with compat routes on, these paths are the proxy's, never the app's.
        route("GET", "/api/auth/login", compat.login, "compat_login")
        route("GET", "/api/auth/affirm", compat.affirm, "compat_affirm")
        route("GET", "/api/auth/user", compat.user, "compat_user")
        route("GET", "/api/auth/callback", auth.callback, "compat_callback")
        route("GET", "/api/auth/logout", signout.sign_out, "compat_logout")
        route("POST", "/api/auth/logout", signout.sign_out, "compat_logout_post")
    # Any path, including one whose decoded form holds a newline (`.` would not match it, and the router
    # would answer 404 itself instead of the proxy refusing the target).
    route("*", "/{tail:[\\s\\S]*}", proxy.handle, "proxy")
    return app


async def _client_sessions(app: web.Application) -> AsyncIterator[None]:
    """Per worker: one upstream connection pool, one for CentralAuth, and the websocket client
    sessions, whose connections are bounded by `[websocket] max_open` on their own."""
    runtime = app[LIVE].runtime
    websockets = runtime.websocket_clients = Clients(runtime.config.websocket.max_open)
    server = runtime.config.server
    pool = runtime.upstream_pool = Pool(
        limit=server.upstream_connections,
        keepalive=server.upstream_keepalive,
        acquire_timeout=server.upstream_acquire_timeout,
    )
    broker_path = os.environ.get(BROKER_ENV, "")
    if broker_path:  # a supervised worker: its siblings share session-check answers through the broker
        runtime.broker = BrokerClient(
            broker_path,
            wait=runtime.config.centralauth.timeout,
            keep=_longest_ttl(runtime.config),
            # Looks the runtime up on every message: a reload replaces it.
            on_dead=lambda digest: _evict_hex(app[LIVE].runtime, digest.hex()),
        )
    # CentralAuth's own pool: neither upstreams nor websockets can starve session checks and logins.
    backchannel = runtime.backchannel_pool = Pool(
        limit=BACKCHANNEL_CONNECTIONS,
        keepalive=BACKCHANNEL_KEEPALIVE,
        acquire_timeout=runtime.config.centralauth.timeout,
    )
    _attach_backchannel(runtime)
    runtime.metrics.track_cache_size(lambda: len(app[LIVE].runtime.checker))
    listener = None
    redis = redis_store(runtime.store)
    if redis is not None:
        from authproxy.session.redis import listen_for_revocations  # imported here only: see redis_store

        # Looks the checker up on every message: a reload replaces it.
        listener = asyncio.ensure_future(
            listen_for_revocations(redis.client, lambda digest: _evict_hex(app[LIVE].runtime, digest))
        )
    yield
    if listener is not None:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    if redis is not None:
        await redis.client.aclose()
    if runtime.broker is not None:
        await runtime.broker.close()
    await pool.close()
    await backchannel.close()
    await websockets.close()


def _attach_backchannel(runtime: Runtime, dead: DeadTokens | None = None) -> None:
    """The CentralAuth client and the session-check cache, built from the runtime's config; `dead` is
    a former checker's memory of dead tokens, kept."""
    centralauth = runtime.config.centralauth
    runtime.centralauth = CentralAuthClient(
        runtime.backchannel,
        base_url=centralauth.base_url,
        client_id=centralauth.client_id,
        client_secret=centralauth.client_secret.get_secret_value(),
        public_url=runtime.config.server.public_url,
        timeout=centralauth.timeout,
    )
    runtime.counted_userinfo = _counted(runtime.centralauth, runtime.metrics)
    # The shared levels a miss asks before CentralAuth: this instance's workers (the broker), then
    # every replica (Redis). Dead tokens are told to both.
    redis = redis_store(runtime.store)
    replicas = None
    if redis is not None:
        from authproxy.session.redis_checks import RedisChecks  # imported here only: see redis_store

        replicas = RedisChecks(redis.client, keep=_longest_ttl(runtime.config), wait=centralauth.timeout)
    tiers: SharedChecks | None = replicas
    if runtime.broker is not None:
        tiers = runtime.broker if replicas is None else ChainedChecks(runtime.broker, replicas)
    memories = [memory for memory in (redis, runtime.broker) if memory is not None]
    shared = memories[0] if len(memories) == 1 else DeadTokensFanout(*memories) if memories else None
    runtime.session_checker = SessionChecker(
        runtime.userinfo,
        ttl=centralauth.session_check_ttl,
        stale_grace=centralauth.stale_grace if centralauth.on_outage == "stale" else 0.0,
        max_entries=centralauth.cache_max_entries,
        # No session outlives the cookie's max_age, so neither need the memory of its token's death.
        dead_lifetime=float(runtime.config.session.max_age),
        wait=centralauth.timeout,
        shared=shared,
        clock=runtime.monotonic,
        dead=dead,
        longest_ttl=_longest_ttl(runtime.config),
        tiers=tiers,
    )


def _longest_ttl(config: Config) -> float:
    """The longest time any route may use a session-check answer."""
    routes = [entry.session_check_ttl or 0.0 for entry in config.routes.table]
    return float(max([config.centralauth.session_check_ttl, *routes]))


# Connections to CentralAuth per worker, and how long an idle one is kept (below the usual server-side
# keep-alive; a call that meets one closed meanwhile is resent, see provider.client).
BACKCHANNEL_CONNECTIONS = 256
BACKCHANNEL_KEEPALIVE = 15.0

RESTART_ONLY = (
    ("server", "listen"),
    ("server", "workers"),
    ("server", "metrics_listen"),
    ("server", "shutdown_grace"),
    ("server", "upstream_connections"),
    ("server", "upstream_keepalive"),
    ("server", "upstream_acquire_timeout"),
    ("session", "store"),
    ("session", "redis_url"),
    ("session", "redis_sentinels"),
    ("session", "redis_sentinel_master"),
    ("session", "redis_ca_file"),
    ("session", "redis_username"),
    ("session", "redis_password"),
    # The websocket connector's limit is set when it is made.
    ("websocket", "max_open"),
    # The tracer and its exporter are started once per worker.
    ("tracing", "otlp_endpoint"),
    ("tracing", "service_name"),
    ("tracing", "sample_ratio"),
)


def reload(app: web.Application, config: Config) -> list[str]:
    """Apply a new, already validated config to a running app without dropping a connection.

    A new runtime is built from the new config and swapped in with one assignment: requests in flight
    finish on the runtime they started with (`context.RUNTIME`), later ones start on the new one.
    What belongs to the process carries over (the listening sockets, the connection pools, the
    metrics, open websockets, request ids, the log buffer, used login states), and so does every
    cache whose inputs did not change: the session-check cache and its CentralAuth client while
    `[centralauth]` and the session lifetime are the same, the session store while `[session]` is, the
    client-IP and canonical-target memos while their settings are. The memory of dead tokens always
    carries over: a reload never lets a signed-out session back in. `[logging]` is applied again.
    Settings that need a restart are kept as they were and named in the returned list.
    """
    live = app[LIVE]
    old = live.runtime
    kept = [
        f"{section}.{key}"
        for section, key in RESTART_ONLY
        if getattr(getattr(config, section), key) != getattr(getattr(old.config, section), key)
    ]
    if kept:
        updates: dict[str, dict[str, object]] = {}
        for name in kept:
            section, key = name.split(".")
            updates.setdefault(section, {})[key] = getattr(getattr(old.config, section), key)
        config = config.model_copy(
            update={s: getattr(config, s).model_copy(update=u) for s, u in updates.items()}
        )
    redis = redis_store(old.store)
    fresh = build_runtime(
        config, old.clock, redis=redis.client if redis is not None else None, monotonic=old.monotonic
    )
    self_test(
        fresh.cookie.name, fresh.transactions.prefix, fresh.upstream_headers, config.headers.strip_extra
    )
    for name in _PROCESS_STATE:
        setattr(fresh, name, getattr(old, name))
    if config.session == old.config.session:
        fresh.store = old.store
    if config.server.trusted_proxies == old.config.server.trusted_proxies:
        fresh.client_ips = old.client_ips
    if config.routes.keep_path_parameters == old.config.routes.keep_path_parameters:
        fresh.targets = old.targets
    if config.centralauth == old.config.centralauth and config.session.max_age == old.config.session.max_age:
        fresh.centralauth, fresh.counted_userinfo = old.centralauth, old.counted_userinfo
        fresh.session_checker = old.session_checker
    else:
        _attach_backchannel(fresh, dead=old.checker.dead)
    # A kept checker (and the broker, which is the process's) still keeps answers for the old routes'
    # longest TTL: a route whose TTL grew would otherwise find them gone early (more calls, never stale).
    fresh.checker.keep_for(_longest_ttl(config))
    if config.logging != old.config.logging:
        logs.configure(config.logging.format, config.logging.level)
    live.runtime = fresh
    return kept


# A reload's new runtime takes these from the old one: they belong to the process, not to the config.
_PROCESS_STATE = (
    "upstream_pool",
    "backchannel_pool",
    "metrics",
    "used_states",
    "connections",
    "websocket_clients",
    "request_ids",
    "access_lines",
    "probe_cache",
    "tracing",
    "broker",
)


def _evict_hex(runtime: Runtime, digest: str) -> None:
    """A token another replica saw die (its SHA-256 in hex): drop its answers and refuse it here too,
    and close its websockets and event streams."""
    with contextlib.suppress(ValueError):
        raw = bytes.fromhex(digest)
        runtime.checker.dead_elsewhere(raw)
        runtime.connections.end_session(raw, "session ended")


async def _end_connections(app: web.Application) -> None:
    """At shutdown, websockets and event streams are told so (1001) instead of holding the grace period."""
    app[LIVE].runtime.connections.end_all(GOING_AWAY, "server shutting down")


def _counted(client: CentralAuthClient, metrics: Metrics) -> Fetch:
    """userinfo, counting each call by outcome."""

    async def fetch(token: str, client_ip: str, user_agent: str, device_id: str = "") -> User:
        try:
            user = await client.userinfo(token, client_ip, user_agent, device_id)
        except SessionRejected:
            metrics.userinfo_calls.labels("rejected").inc()
            raise
        except CentralAuthUnavailable:
            metrics.userinfo_calls.labels("unavailable").inc()
            raise
        metrics.userinfo_calls.labels("ok").inc()
        return user

    return fetch


async def _flush_access_log(app: web.Application) -> None:
    runtime = app[LIVE].runtime
    runtime.access_lines.flush()
    runtime.metrics.flush()  # the last figures, before the process (and its metrics file) goes


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """Serve /metrics on its own address, so it is never reachable through the proxied port."""
    runtime = app[LIVE].runtime
    listen = runtime.config.server.metrics_listen
    if not listen or multiprocess_mode():  # with several workers the supervisor serves the sum
        yield
        return
    host, port = split_host_port(listen)
    runner = web.AppRunner(runtime.metrics.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    yield
    await runner.cleanup()


def make_runner(app: web.Application, shutdown_grace: float = 60.0) -> web.AppRunner:
    """The runner every entry point uses: our access logger (which also feeds the request metrics),
    the proxy's own answers' headers, and fixed answers to requests the parser refused (`answers`)."""
    answers.install(app)
    # keepalive_timeout: aiohttp has no header-read timeout, and its keep-alive timer (armed at
    # connect) is what ends a connection that never finishes its headers; its default is an hour.
    return answers.Runner(
        app,
        access_log_class=AccessLogger,
        handle_signals=False,
        shutdown_timeout=shutdown_grace,
        keepalive_timeout=75,
    )
