"""The catch-all route: decide whether a request may pass, then hand it to the forwarder.

Policy lives here — skip-auth and API rules on the normalized path, the cached session check, the
`[authorization]` rules, identity headers — while the forwarder below knows nothing of sessions.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from authproxy import audit, pages, websocket
from authproxy.authorization import denial
from authproxy.errors import AccessDenied, SessionRejected
from authproxy.headers import forwarded_value
from authproxy.logs import fingerprint
from authproxy.paths import normalize_path
from authproxy.provider.user import User
from authproxy.proxy import forward
from authproxy.routes.auth import start_url
from authproxy.routes.common import end_user_ip, peer_trusted, request_id, user_agent
from authproxy.runtime import RUNTIME, Runtime
from authproxy.session.model import Session


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    # Classify and forward the same normalized path, so the upstream routes what the rules judged.
    raw_path = request.raw_path
    path = normalize_path(raw_path)
    query = raw_path.partition("?")[2]
    upstream = runtime.router.pick(path)
    if upstream is None:
        message = "No application is configured for this path."
        return pages.error_page(404, "Not found", message, request_id(request), branding=runtime.branding)
    user: User | None = None
    session: Session | None = None
    if not runtime.routes.skip_auth(request.method, raw_path, path):
        session = await load_session(request, runtime)
        if session is None:
            return unauthenticated(request, runtime)
        user = await check_session(request, runtime, session)
        if user is None:
            response = unauthenticated(request, runtime)
            runtime.cookie.clear(response)
            return response
    headers = _upstream_headers(request, runtime, user, session)
    target = f"{path}?{query}" if query else path
    if websocket.is_upgrade(request):
        url = upstream.url + target
        return await websocket.bridge(runtime.http, request, url, headers, upstream.timeout)
    return await forward(
        runtime.pool, request, upstream, headers, target, runtime.metrics.upstream_latency.observe
    )


async def load_session(request: web.Request, runtime: Runtime) -> Session | None:
    value = runtime.session_cookie(request)
    return await runtime.store.load(value) if value else None


async def check_session(request: web.Request, runtime: Runtime, session: Session) -> User | None:
    """The user if CentralAuth (or the cache) vouches for the session now; None if it ended it.

    An outage raises CentralAuthUnavailable (a 503, the session kept) unless the stale window covers it.
    """
    try:
        outcome = await runtime.checker.check(session.access_token, end_user_ip(request), user_agent(request))
    except SessionRejected as exc:
        runtime.metrics.revoked.inc()
        audit.event(
            "session.revoked",
            request_id(request),
            reason=exc.error_code,
            session=fingerprint(session.access_token),
        )
        await runtime.store.delete(request.cookies.get(runtime.cookie.name, ""))
        await runtime.store.revoked(session.access_token)
        return None
    runtime.metrics.count_session_check(outcome.source)
    rule = denial(outcome.user, runtime.rules)
    if rule is not None:
        audit.event("access.denied", request_id(request), rule=rule, user=outcome.user.id)
        raise AccessDenied(rule)
    return outcome.user


def unauthenticated(request: web.Request, runtime: Runtime) -> web.Response:
    api = runtime.routes.api(request.method, request.raw_path) or pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )
    if api:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    location = start_url(runtime, request.raw_path)
    return web.Response(status=302, headers={"Location": location, **pages.MARKER})


def _upstream_headers(
    request: web.Request, runtime: Runtime, user: User | None, session: Session | None
) -> CIMultiDict[str]:
    headers = runtime.upstream_headers(request.headers.items())
    trusted = peer_trusted(request)
    headers["X-Forwarded-For"] = end_user_ip(request)
    headers["X-Forwarded-Proto"] = forwarded_value(request.headers.get("X-Forwarded-Proto"), trusted) or (
        request.scheme
    )
    headers["X-Forwarded-Host"] = forwarded_value(request.headers.get("X-Forwarded-Host"), trusted) or (
        request.host
    )
    headers["X-Request-Id"] = request_id(request)
    if user is not None and session is not None:
        headers["X-Forwarded-User"] = user.id
        headers["X-Forwarded-Email"] = user.email
        headers["X-Forwarded-Preferred-Username"] = user.email
        if runtime.config.headers.pass_access_token:
            headers["X-Forwarded-Access-Token"] = session.access_token
    return headers
