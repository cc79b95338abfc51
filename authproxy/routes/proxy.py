"""The catch-all route: decide whether a request may pass, then hand it to the forwarder.

Policy lives here — the canonical target (refused with 400 when ambiguous), skip-auth and API rules on
its path, the cached session check, the `[authorization]` rules, identity headers — while the
forwarder below knows nothing of sessions.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from authproxy import audit, pages, websocket
from authproxy.authorization import denial
from authproxy.errors import AccessDenied, AmbiguousRequest, SessionRejected
from authproxy.headers import combined, forwarded_value
from authproxy.logs import fingerprint
from authproxy.paths import AmbiguousTarget, Target, canonical_target, split_absolute
from authproxy.provider.checker import SessionKnownDead
from authproxy.provider.user import User
from authproxy.proxy import forward
from authproxy.routes.auth import start_url
from authproxy.routes.common import end_user_ip, peer_trusted, request_id, user_agent
from authproxy.runtime import RUNTIME, Runtime
from authproxy.session.model import Session


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    # One canonical target decides everything below and is what the upstream receives.
    target = request_target(request, runtime.config.routes.keep_path_parameters)
    path = target.path
    upstream = runtime.router.pick(path)
    if upstream is None:
        message = "No application is configured for this path."
        return pages.error_page(404, "Not found", message, request_id(request), branding=runtime.branding)
    user: User | None = None
    session: Session | None = None
    if not runtime.routes.skip_auth(request.method, path):
        session = await load_session(request, runtime)
        if session is None:
            return unauthenticated(request, runtime, target)
        user = await check_session(request, runtime, session)
        if user is None:
            response = unauthenticated(request, runtime, target)
            runtime.cookie.clear(response)
            return response
    headers = _upstream_headers(request, runtime, user, session)
    if websocket.is_upgrade(request):
        # aiohttp's client drops bytes that are not UTF-8 from header values; refuse rather than alter.
        if not _utf8(headers):
            raise AmbiguousRequest("a websocket handshake header is not UTF-8")
        url = upstream.url + target.wire_target
        return await websocket.bridge(runtime.http, request, url, headers, upstream.timeout)
    return await forward(
        runtime.pool, request, upstream, headers, target.wire_target, runtime.metrics.upstream_latency.observe
    )


def request_target(request: web.Request, keep_parameters: bool = False) -> Target:
    """The canonical target of `request`; AmbiguousRequest (400) when it cannot be judged unambiguously.

    An absolute-form target (`GET http://host/path`) is judged by its path when its authority is the
    request's `Host`; when the two disagree, upstreams differ on which one wins, so it is refused.
    """
    raw = request.raw_path
    if not raw.startswith("/"):
        split = split_absolute(raw)
        if split is None or split[0].lower() != request.headers.get("Host", "").lower():
            raise AmbiguousRequest("a request target that is neither a path nor an absolute URL of this host")
        raw = split[1]
    try:
        return canonical_target(raw, keep_parameters=keep_parameters)
    except AmbiguousTarget as exc:
        raise AmbiguousRequest(f"request target refused: {exc.reason}") from None


def _utf8(headers: CIMultiDict[str]) -> bool:
    try:
        for name, value in headers.items():
            name.encode("utf-8")
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def load_session(request: web.Request, runtime: Runtime) -> Session | None:
    value = runtime.session_cookie(request)
    return await runtime.store.load(value) if value else None


async def check_session(request: web.Request, runtime: Runtime, session: Session) -> User | None:
    """The user if CentralAuth (or the cache) vouches for the session now; None if it ended it.

    An outage raises CentralAuthUnavailable (a 503, the session kept) unless the stale window covers it.
    A token already known dead (signed out, or refused before) is None without asking anyone.
    """
    try:
        outcome = await runtime.checker.check(
            session.access_token,
            end_user_ip(request),
            user_agent(request),
            lifetime=session.expires_at - runtime.clock(),
        )
    except SessionKnownDead:
        return None  # its end was audited, and its record deleted, when it was first seen
    except SessionRejected as exc:
        runtime.metrics.revoked.inc()
        audit.event(
            "session.revoked",
            request_id(request),
            reason=exc.error_code,
            session=fingerprint(session.access_token),
        )
        # When the code says the session is over, the checker has already recorded the token dead and
        # told the other replicas.
        await runtime.store.delete(runtime.session_cookie(request) or "")
        return None
    runtime.metrics.count_session_check(outcome.source)
    rule = denial(outcome.user, runtime.rules)
    if rule is not None:
        audit.event("access.denied", request_id(request), rule=rule, user=outcome.user.id)
        raise AccessDenied(rule)
    return outcome.user


def unauthenticated(request: web.Request, runtime: Runtime, target: Target) -> web.Response:
    api = runtime.routes.api(request.method, target.path) or pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )
    if api:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    location = start_url(runtime, target.wire_target)
    return web.Response(status=302, headers={"Location": location, **pages.MARKER})


def _upstream_headers(
    request: web.Request, runtime: Runtime, user: User | None, session: Session | None
) -> CIMultiDict[str]:
    headers = runtime.upstream_headers(request.headers.items())
    trusted = peer_trusted(request)
    headers["X-Forwarded-For"] = end_user_ip(request)
    proto = combined(request.headers.getall("X-Forwarded-Proto", ()))
    host = combined(request.headers.getall("X-Forwarded-Host", ()))
    headers["X-Forwarded-Proto"] = forwarded_value(proto, trusted) or request.scheme
    headers["X-Forwarded-Host"] = forwarded_value(host, trusted) or request.host
    headers["X-Request-Id"] = request_id(request)
    if user is not None and session is not None:
        headers["X-Forwarded-User"] = user.id
        headers["X-Forwarded-Email"] = user.email
        headers["X-Forwarded-Preferred-Username"] = user.email
        if runtime.config.headers.pass_access_token:
            headers["X-Forwarded-Access-Token"] = session.access_token
    return headers
