"""The catch-all route: decide whether a request may pass, then hand it to the forwarder.

Policy lives here (skip-auth and API rules, session check, identity headers); the forwarder below it
knows nothing of sessions.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from multidict import CIMultiDict

from authproxy import pages
from authproxy.authorization import denial
from authproxy.errors import AccessDenied, SessionRejected
from authproxy.headers import is_identity_header, strip_cookies
from authproxy.logs import fingerprint
from authproxy.paths import normalize_path
from authproxy.provider.user import User
from authproxy.proxy import forward, request_headers
from authproxy.routes.auth import start_url
from authproxy.routes.common import end_user_ip, peer_trusted, request_id, user_agent
from authproxy.runtime import RUNTIME, Runtime
from authproxy.session.model import Session

log = structlog.get_logger("authproxy")


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    # Classify and forward the same normalized path, so the upstream routes what the rules judged.
    path = normalize_path(request.raw_path)
    query = request.raw_path.partition("?")[2]
    upstream = runtime.router.pick(path)
    if upstream is None:
        return pages.error_page(
            404, "Not found", "No application is configured for this path.", request_id(request)
        )
    skip = runtime.routes.skip_auth(request.method, request.raw_path)
    session = None if skip else await _load_session(request, runtime)
    user: User | None = None
    if not skip:
        if session is None:
            return _unauthenticated(request, runtime)
        try:
            user = await runtime.provider.userinfo(
                session.access_token, end_user_ip(request), user_agent(request)
            )
        except SessionRejected as exc:
            log.info(
                "session.revoked",
                reason=exc.error_code,
                session=fingerprint(session.access_token),
                request_id=request_id(request),
            )
            response = _unauthenticated(request, runtime)
            runtime.cookie.clear(response)
            return response
        rule = denial(user, runtime.rules)
        if rule is not None:
            log.info("access.denied", rule=rule, user=user.id, request_id=request_id(request))
            raise AccessDenied(rule)
    headers = _upstream_headers(request, runtime, user, session)
    return await forward(runtime.http, request, upstream, headers, f"{path}?{query}" if query else path)


async def _load_session(request: web.Request, runtime: Runtime) -> Session | None:
    value = request.cookies.get(runtime.cookie.name)
    return await runtime.store.load(value) if value else None


def _unauthenticated(request: web.Request, runtime: Runtime) -> web.Response:
    api = runtime.routes.api(request.method, request.raw_path) or pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )
    if api:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    return web.Response(
        status=302, headers={"Location": start_url(runtime, request.raw_path), **pages.MARKER}
    )


def _upstream_headers(
    request: web.Request, runtime: Runtime, user: User | None, session: Session | None
) -> CIMultiDict[str]:
    headers = request_headers(CIMultiDict(request.headers), frozenset({"cookie"}))
    for name in [name for name in headers if is_identity_header(name)]:
        headers.popall(name)
    cookie = strip_cookies(
        request.headers.get("Cookie", ""), runtime.cookie.name, runtime.transactions.prefix
    )
    if cookie:
        headers["Cookie"] = cookie
    trusted = peer_trusted(request)
    headers["X-Forwarded-For"] = end_user_ip(request)
    headers["X-Forwarded-Proto"] = (
        request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip() if trusted else ""
    ) or request.scheme
    headers["X-Forwarded-Host"] = (
        request.headers.get("X-Forwarded-Host", "").rsplit(",", 1)[-1].strip() if trusted else ""
    ) or request.host
    headers["X-Request-Id"] = request_id(request)
    if user is not None and session is not None:
        headers["X-Forwarded-User"] = user.id
        headers["X-Forwarded-Email"] = user.email
        headers["X-Forwarded-Preferred-Username"] = user.email
        if runtime.config.headers.pass_access_token:
            headers["X-Forwarded-Access-Token"] = session.access_token
    return headers
