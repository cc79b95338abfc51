"""The composition root: builds every component from the config and wires the routes.

Nothing else constructs long-lived objects; tests build the same application with `build_app(config)`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from authproxy.authorization import Rules
from authproxy.config import Config, split_host_port
from authproxy.cookies import SessionCookie
from authproxy.headers import self_test
from authproxy.paths import RouteRules
from authproxy.provider.checker import SessionChecker
from authproxy.provider.client import CentralAuthClient
from authproxy.proxy import Router, Upstream, make_client_session
from authproxy.redirect import RedirectPolicy
from authproxy.routes import auth, health, proxy
from authproxy.routes.common import request_context
from authproxy.runtime import RUNTIME, Runtime
from authproxy.session.seal import Sealer
from authproxy.session.store import CookieStore
from authproxy.transaction import TransactionCookies

log = structlog.get_logger("authproxy")


def build_runtime(config: Config, clock: Callable[[], float] = time.time) -> Runtime:
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
    return Runtime(
        config=config,
        store=CookieStore(sealer, cookie.name, clock),
        cookie=cookie,
        transactions=TransactionCookies(sealer, session.cookie_name, secure=session.cookie_secure),
        redirects=RedirectPolicy(
            public_url=f"{public.scheme}://{public.netloc}",
            allowed_domains=tuple(config.redirects.allowed_domains),
        ),
        rules=Rules(
            client_id=config.centralauth.client_id,
            allowed_email_domains=frozenset(config.authorization.allowed_email_domains),
            allowed_emails=frozenset(config.authorization.allowed_emails),
            require_verified_email=config.authorization.require_verified_email,
            allow_blocked_users=config.authorization.allow_blocked_users,
        ),
        routes=RouteRules.from_config(config.routes.skip_auth, config.routes.api),
        router=Router([Upstream(u.path, u.url, u.preserve_host, u.timeout) for u in config.upstreams]),
        trusted_proxies=list(config.server.trusted_proxies),
        callback_url=f"{config.server.public_url}{prefix}/callback",
        login_url=f"{config.centralauth.base_url}/login",
        prefix=prefix,
        clock=clock,
    )


def build_app(config: Config, clock: Callable[[], float] = time.time) -> web.Application:
    runtime = build_runtime(config, clock)
    # Refuse to start if a spoofed identity header or a proxy cookie could reach an upstream.
    self_test(runtime.cookie.name, runtime.transactions.prefix)
    app = web.Application(middlewares=[request_context])
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(_client_sessions)
    prefix = runtime.prefix
    app.router.add_get("/ping", health.ping)
    app.router.add_get(f"{prefix}/start", auth.start)
    app.router.add_get(f"{prefix}/callback", auth.callback)
    app.router.add_get(f"{prefix}/sign_in", auth.sign_in)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


async def _client_sessions(app: web.Application) -> AsyncIterator[None]:
    """One pooled client session per worker, for the upstreams and CentralAuth alike."""
    runtime = app[RUNTIME]
    centralauth = runtime.config.centralauth
    http = make_client_session()
    runtime.client_session = http
    runtime.centralauth = CentralAuthClient(
        http,
        base_url=centralauth.base_url,
        client_id=centralauth.client_id,
        client_secret=centralauth.client_secret.get_secret_value(),
        public_url=runtime.config.server.public_url,
        timeout=centralauth.timeout,
    )
    runtime.session_checker = SessionChecker(
        runtime.centralauth.userinfo,
        ttl=centralauth.session_check_ttl,
        stale_grace=centralauth.stale_grace if centralauth.on_outage == "stale" else 0.0,
        max_entries=centralauth.cache_max_entries,
    )
    yield
    await http.close()


def serve(config: Config) -> None:
    host, port = split_host_port(config.server.listen)
    log.info("serve.start", listen=config.server.listen, public_url=config.server.public_url)
    web.run_app(build_app(config), host=host, port=port, print=None, access_log=None)
