"""The gate: load a request's session, check it with CentralAuth (or the cache), and decide.

Every route that needs a signed-in user comes through here: the proxy, forward-auth, userinfo and
sign-out. A session is let in only while CentralAuth vouches for it from this client IP and user
agent (within `session_check_ttl`) and the `[authorization]` rules admit its user. A session that
CentralAuth ended is deleted and remembered dead; an outage is never a logout (CentralAuthUnavailable,
a 503, unless the stale window covers it).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from authproxy import audit, pages
from authproxy.context import end_user_ip, request_id, user_agent
from authproxy.core.authorization import Rules, denial
from authproxy.core.paths import Target
from authproxy.core.routing import Auth, Route
from authproxy.core.user import User
from authproxy.errors import (
    AccessDenied,
    AmbiguousRequest,
    CentralAuthUnavailable,
    SessionRejected,
    StepUpRequired,
)
from authproxy.logs import fingerprint
from authproxy.provider.checker import Outcome, SessionKnownDead
from authproxy.runtime import Runtime
from authproxy.session.model import Session
from authproxy.session.store import redis_store
from authproxy.tracing import OUTCOME, Tracing


def start_url(runtime: Runtime, return_to: str) -> str:
    """The proxy's own login start, coming back to `return_to`."""
    return f"{runtime.prefix}/start?{urlencode({'rd': return_to})}"


async def load_session(request: web.Request, runtime: Runtime) -> Session | None:
    value = runtime.session_cookie(request)
    return await runtime.store.load(value) if value else None


def cached_user(
    request: web.Request,
    runtime: Runtime,
    session: Session,
    *,
    rules: Rules | None = None,
    ttl: float | None = None,
    device_id: str = "",
) -> User | None:
    """`check_session` when the checker's cache has a fresh answer: the user, the rules applied (an
    AccessDenied as there); None on a miss, and then `check_session`. The cache-hit path, most
    requests, made without a coroutine. A traced request always takes `check_session` (its span)."""
    if runtime.tracing is not None:
        return None
    user = runtime.checker.cached(
        session.access_token, end_user_ip(request), user_agent(request), ttl=ttl, device_id=device_id
    )
    if user is None:
        return None
    runtime.metrics.count_session_check("hit")
    _admit(runtime, user, rules, request_id(request))
    return user


def _admit(runtime: Runtime, user: User, rules: Rules | None, rid: str) -> None:
    """Apply `rules` (a route's own, or the global `[authorization]`): AccessDenied, audited, if they
    refuse the user."""
    rule = denial(user, rules or runtime.rules)
    if rule is not None:
        audit.event("access.denied", rid, rule=rule, user=user.id)
        raise AccessDenied(rule)


async def check_session(
    request: web.Request,
    runtime: Runtime,
    session: Session,
    *,
    rules: Rules | None = None,
    ttl: float | None = None,
    device_id: str = "",
) -> User | None:
    """The user if CentralAuth (or the cache, within `ttl`: a route's own, or the global one) vouches
    for the session now and `rules` (a route's own, or the global `[authorization]`) admit them; None if
    CentralAuth ended it; AccessDenied if the rules refuse the user.

    An outage raises CentralAuthUnavailable (a 503, the session kept) unless the stale window covers it.
    A token already known dead (signed out, or refused before) is None without asking anyone.
    """
    user, _ = await verify_session(
        runtime,
        session,
        end_user_ip(request),
        user_agent(request),
        request_id(request),
        lambda: runtime.session_cookie(request) or "",  # read only to delete an ended session
        rules=rules,
        ttl=ttl,
        device_id=device_id,
    )
    return user


# Outcomes of a check that CentralAuth has just answered (here, or in another worker or replica).
_FRESH = frozenset({"miss", "shared"})


async def verify_session(
    runtime: Runtime,
    session: Session,
    client_ip: str,
    agent: str,
    rid: str,
    cookie_value: Callable[[], str],
    *,
    rules: Rules | None = None,
    ttl: float | None = None,
    device_id: str = "",
) -> tuple[User | None, str]:
    """`check_session` for a given client IP and user agent, as at a websocket's handshake: the user (or
    None) and where the answer came from (the checker's source, or "ended")."""
    checking = runtime.checker.check(
        session.access_token,
        client_ip,
        agent,
        lifetime=session.expires_at - runtime.clock(),
        ttl=ttl,
        device_id=device_id,
    )
    try:
        outcome = await (checking if runtime.tracing is None else _traced_check(runtime.tracing, checking))
    except SessionKnownDead:
        return None, "ended"  # its end was audited, and its record deleted, when it was first seen
    except SessionRejected as exc:
        runtime.metrics.revoked.inc()
        audit.event("session.revoked", rid, reason=exc.error_code, session=fingerprint(session.access_token))
        # When the code says the session is over, the checker has already recorded the token dead and
        # told the other replicas.
        await runtime.store.delete(cookie_value())
        return None, "ended"
    runtime.metrics.count_session_check(outcome.source)
    if outcome.source in _FRESH:
        redis = redis_store(runtime.store)
        if redis is not None:  # the "last check" of `authproxy sessions list`
            await redis.touch(cookie_value())
    _admit(runtime, outcome.user, rules, rid)
    return outcome.user, outcome.source


async def _traced_check(tracing: Tracing, checking: Awaitable[Outcome]) -> Outcome:
    """The session check in its span, current while the checker runs: a CentralAuth call it makes
    (in a task of its own, which inherits the context) is the span's child."""
    with tracing.session_check() as step:
        try:
            outcome = await checking
        except SessionKnownDead:
            step.set(OUTCOME, "dead")
            raise
        except SessionRejected:
            step.set(OUTCOME, "rejected")
            raise
        except CentralAuthUnavailable:
            step.set(OUTCOME, "unavailable")
            raise
        step.set(OUTCOME, outcome.source)
        return outcome


async def signed_in(request: web.Request, runtime: Runtime) -> tuple[Session, User] | None:
    """The session and its user when the request carries a session that checks out; None otherwise."""
    session = await load_session(request, runtime)
    if session is None:
        return None
    user = await check_session(request, runtime, session)
    return None if user is None else (session, user)


@dataclass(frozen=True, slots=True)
class Bearer:
    """A native or API client's credentials: `Authorization: Bearer <access token>` and its
    `device-id` header (what CentralAuth's native login recorded; empty for other clients)."""

    token: str
    device_id: str

    def session(self, runtime: Runtime) -> Session:
        """The token as a session to check; who it belongs to is CentralAuth's answer."""
        now = runtime.clock()
        return Session(self.token, "", "", now, now + float(runtime.config.session.max_age))


# RFC 6750's b64token: the only characters a bearer token may have.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def accepts_bearer(runtime: Runtime, route: Route) -> bool:
    """Whether bearer tokens count on `route`: its own `bearer`, else `accept_bearer_tokens`."""
    if route.bearer is not None:
        return route.bearer
    return runtime.config.centralauth.accept_bearer_tokens


def bearer_credentials(request: web.Request) -> Bearer | None:
    """The request's bearer token and device id, or None without an `Authorization: Bearer` header.

    Two `Authorization` lines, or two `device-id` lines, are refused (400): which one a client meant
    cannot be known, and an upstream might read the other. Another scheme (Basic) is no bearer token.
    """
    lines = request.headers.getall("Authorization", ())
    devices = request.headers.getall("device-id", ())
    if len(lines) > 1 or len(devices) > 1:
        raise AmbiguousRequest("more than one Authorization or device-id line")
    if not lines:
        return None
    scheme, _, token = lines[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not _B64TOKEN.fullmatch(token):
        raise AmbiguousRequest("a bearer token with characters RFC 6750 does not allow")
    return Bearer(token, devices[0].strip() if devices else "")


def invalid_bearer(request: web.Request) -> web.Response:
    """RFC 6750's answer to a token CentralAuth does not vouch for: 401, never a redirect."""
    response = pages.json_error(401, "invalid_token", "The access token is not valid.", request_id(request))
    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


def auth_mode(runtime: Runtime, route: Route, method: str, path: str) -> Auth:
    """A `[[routes]]` entry's own mode; under no route, the old table's `skip_auth` rules decide."""
    if route.index is not None:
        return route.auth
    return "public" if runtime.routes.skip_auth(method, path) else "required"


def wants_json(request: web.Request, runtime: Runtime, route: Route, path: str) -> bool:
    """Whether an unauthenticated answer is a 401 JSON rather than a redirect: an API route (a
    `[[routes]]` entry's `api`, or the old table's `api` rules for requests under no route), or a client
    that asks for JSON."""
    api = route.api if route.index is not None else runtime.routes.api(request.method, path)
    return api or pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )


def unauthenticated(request: web.Request, runtime: Runtime, target: Target, *, api: bool) -> web.Response:
    if api:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    return web.Response(
        status=302, headers={"Location": login_start(request, runtime, target), **pages.MARKER}
    )


def step_up(request: web.Request, runtime: Runtime, target: Target, *, api: bool) -> web.Response:
    """A browser goes through an affirmation login (`affirm=1`) and back; an API client gets a 401."""
    if api:
        required = StepUpRequired()
        return pages.json_error(required.status, required.code, required.public, request_id(request))
    location = f"{login_start(request, runtime, target)}&affirm=1"
    return web.Response(status=302, headers={"Location": location, **pages.MARKER})


def login_start(request: web.Request, runtime: Runtime, target: Target) -> str:
    """Where a browser starts signing in to come back to `target`.

    On the proxy's own host, the start route on that host, with a relative return URL. On another host
    that a route serves, the login must run on `public_url`'s host (CentralAuth knows one callback, and
    the login's own cookie lives where the callback is), coming back to the full URL on this host; the
    session cookie reaches both hosts through `cookie_domain`.
    """
    host = request.headers.get("Host", "")
    if host.lower() == runtime.public_host or not runtime.route_table.serves_host(host):
        return start_url(runtime, target.wire_target)
    return f"{runtime.public_origin}{start_url(runtime, f'{runtime.public_scheme}://{host}{target.wire_target}')}"
