"""The catch-all route: decide whether a request may pass, then hand it to the forwarder.

Policy lives here — the canonical target (refused with 400 when ambiguous), skip-auth and API rules on
its path, the cached session check, the `[authorization]` rules, identity headers — while the
forwarder below knows nothing of sessions.

Websockets and event streams outlive the check that let them in, so they are checked again while they
are open: each is registered in `runtime.connections` under its session and watched by
`watch.keep_checking` with the same cached check, from the same client IP and user agent, on
`session_check_ttl`. A session that CentralAuth ended or blocked, that the `[authorization]` rules now
refuse, or that expired is closed with 1008; a sign-out here (and, with Redis, anywhere) closes it at
once. A CentralAuth outage closes nothing: an outage is never a logout, and the check resumes when
CentralAuth answers again. Websockets are bridged here; event streams are found when their answer is
prepared (`_watch_event_stream`, called by the forwarder just before the headers go) and cut by
aborting the client's connection and cancelling the handler that streams them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from multidict import CIMultiDict

from authproxy import audit, pages, watch, websocket
from authproxy.authorization import denial
from authproxy.config import UpstreamConfig
from authproxy.errors import (
    AccessDenied,
    AmbiguousRequest,
    CentralAuthUnavailable,
    SessionRejected,
    SessionStoreUnavailable,
)
from authproxy.headers import combined, forwarded_value
from authproxy.logs import fingerprint
from authproxy.paths import AmbiguousTarget, CanonicalTargets, Target, split_absolute
from authproxy.provider.checker import SessionKnownDead
from authproxy.provider.user import User
from authproxy.proxy import Upstream, forward
from authproxy.routes.auth import start_url
from authproxy.routes.common import end_user_ip, peer_trusted, request_id, user_agent
from authproxy.runtime import RUNTIME, Runtime
from authproxy.session.model import Session
from authproxy.watch import Verdict, token_digest

log = structlog.get_logger("authproxy.proxy")


@dataclass(slots=True)
class _Stream:
    """An event stream being watched: stopped when its handler returns, however it returns."""

    connection: watch.Connection
    watcher: asyncio.Task[None] | None

    def stop(self, runtime: Runtime) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        runtime.connections.close(self.connection)


# The event stream being watched for a proxied request, if its answer is one.
_STREAM = web.RequestKey("authproxy_stream", _Stream)


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    # One canonical target decides everything below and is what the upstream receives.
    target = request_target(request, runtime.targets)
    path = target.path
    upstream = runtime.router.pick(path)
    if upstream is None:
        message = "No application is configured for this path."
        return pages.error_page(404, "Not found", message, request_id(request), branding=runtime.branding)
    upgrade = websocket.is_upgrade(request)
    # Before anything is spent on it: a page of another site must not open a socket with the user's
    # cookie (cross-site websocket hijacking, wherever SameSite lets the cookie go along).
    if upgrade and not _origin_allowed(request, runtime):
        raise websocket.ForeignOrigin()
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
    headers = _upstream_headers(request, runtime, upstream, user, session)
    if upgrade:
        return await _websocket(request, runtime, upstream, target, headers, session)
    on_prepare = None
    if session is not None:
        # Should the answer be an event stream, it is watched like a websocket while it streams.
        def on_prepare(response: web.StreamResponse) -> None:
            _watch_event_stream(request, runtime, session, response)

    try:
        return await forward(
            runtime.pool,
            request,
            upstream,
            headers,
            target.wire_target,
            runtime.metrics.observe_upstream,
            on_prepare,
        )
    finally:
        stream = request.get(_STREAM)
        if stream is not None:
            stream.stop(runtime)


def request_target(request: web.Request, canonical: CanonicalTargets) -> Target:
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
        return canonical(raw)
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
    user, _ = await verify_session(
        runtime,
        session,
        end_user_ip(request),
        user_agent(request),
        request_id(request),
        lambda: runtime.session_cookie(request) or "",  # read only to delete an ended session
    )
    return user


async def verify_session(
    runtime: Runtime,
    session: Session,
    client_ip: str,
    agent: str,
    rid: str,
    cookie_value: Callable[[], str],
) -> tuple[User | None, str]:
    """`check_session` for a given client IP and user agent, as at a websocket's handshake: the user (or
    None) and where the answer came from (the checker's source, or "ended")."""
    try:
        outcome = await runtime.checker.check(
            session.access_token, client_ip, agent, lifetime=session.expires_at - runtime.clock()
        )
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
    rule = denial(outcome.user, runtime.rules)
    if rule is not None:
        audit.event("access.denied", rid, rule=rule, user=outcome.user.id)
        raise AccessDenied(rule)
    return outcome.user, outcome.source


def unauthenticated(request: web.Request, runtime: Runtime, target: Target) -> web.Response:
    api = runtime.routes.api(request.method, target.path) or pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )
    if api:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    location = start_url(runtime, target.wire_target)
    return web.Response(status=302, headers={"Location": location, **pages.MARKER})


def _upstream_headers(
    request: web.Request, runtime: Runtime, upstream: Upstream, user: User | None, session: Session | None
) -> CIMultiDict[str]:
    """What the upstream receives, for a plain request and a websocket handshake alike."""
    headers = runtime.upstream_headers(request.headers.items())
    # The browser's Host exactly as sent (aiohttp's `request.host` would invent one when it is absent).
    browser_host = request.headers.get("Host")
    if upstream.preserve_host and browser_host:
        headers["Host"] = browser_host
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


# --- websockets and event streams ----------------------------------------------------------------------


def _origin_allowed(request: web.Request, runtime: Runtime) -> bool:
    return websocket.origin_allowed(
        request.headers.getall("Origin", ()),
        runtime.config.server.public_url,
        runtime.config.websocket.allowed_origins,
    )


def _upstream_config(runtime: Runtime, upstream: Upstream) -> UpstreamConfig:
    # Paths are unique across upstreams, so the path names the table the router's choice came from.
    for config in runtime.config.upstreams:
        if config.path == upstream.path:
            return config
    raise RuntimeError(f"no [[upstreams]] table for path {upstream.path!r}")


async def _websocket(
    request: web.Request,
    runtime: Runtime,
    upstream: Upstream,
    target: Target,
    headers: CIMultiDict[str],
    session: Session | None,
) -> web.StreamResponse:
    # aiohttp's client drops bytes that are not UTF-8 from header values; refuse rather than alter.
    if not _utf8(headers):
        raise AmbiguousRequest("a websocket handshake header is not UTF-8")
    settings = runtime.config.websocket
    digest = token_digest(session.access_token) if session is not None else None
    try:
        connection = runtime.connections.open(watch.WEBSOCKET, digest, limit=settings.max_open)
    except watch.RegistryFull:
        raise websocket.TooManyWebsockets() from None
    watcher: asyncio.Task[None] | None = None
    try:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        try:
            leg = await websocket.connect(
                runtime.websockets,
                _upstream_config(runtime, upstream),
                target.wire_target,
                headers,
                [p for p in protocols if p],
                settings.max_message_size,
            )
        except websocket.Refused as refused:
            return await websocket.pass_refusal(request, refused)
        watcher = _watch(request, runtime, connection, session, settings.max_lifetime)
        ws = await websocket.relay(request, leg, connection, settings.max_message_size)
        if connection.ended.done():
            _log_end(request, connection, session)
        return ws
    finally:
        if watcher is not None:
            watcher.cancel()
        runtime.connections.close(connection)


def _watch_event_stream(
    request: web.Request, runtime: Runtime, session: Session, response: web.StreamResponse
) -> None:
    """A proxied, signed-in answer that is an event stream is watched like a websocket while it
    streams, and cut (the client's connection aborted, its handler cancelled) when its session ends."""
    if _STREAM in request or not _event_stream(response.headers.get("Content-Type", "")):
        return
    handler = asyncio.current_task()  # the handler streaming the answer: prepare runs inside it

    def cut(code: int, reason: str) -> None:
        _log_end(request, connection, session)
        if request.transport is not None:
            request.transport.abort()
        # An idle stream waits on the upstream, not the client: only cancelling the handler ends it.
        if handler is not None:
            handler.cancel()

    connection = runtime.connections.open(watch.STREAM, token_digest(session.access_token), on_end=cut)
    request[_STREAM] = _Stream(connection, _watch(request, runtime, connection, session, 0))


def _event_stream(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


def _watch(
    request: web.Request,
    runtime: Runtime,
    connection: watch.Connection,
    session: Session | None,
    max_lifetime: float,
) -> asyncio.Task[None] | None:
    """Start re-checking `connection`'s session, and its deadlines; None when there is nothing to watch."""
    now = asyncio.get_running_loop().time()
    deadlines: list[tuple[float, str]] = []
    check = None
    if session is not None:
        deadlines.append((now + session.expires_at - runtime.clock(), "session expired"))
        cookie_value = runtime.session_cookie(request) or ""
        check = _recheck(
            runtime,
            session,
            end_user_ip(request),
            user_agent(request),
            request_id(request),
            lambda: cookie_value,
        )
    if max_lifetime > 0:
        deadlines.append((now + max_lifetime, "maximum lifetime reached"))
    if check is None and not deadlines:
        return None

    def ttl() -> float:
        return runtime.config.centralauth.session_check_ttl  # read each time: a reload may change it

    return asyncio.ensure_future(watch.keep_checking(connection, check, ttl, deadlines))


def _recheck(
    runtime: Runtime, session: Session, client_ip: str, agent: str, rid: str, cookie_value: Callable[[], str]
) -> watch.Check:
    """One re-check of an open connection's session, as its handshake was checked."""

    async def check() -> Verdict:
        try:
            user, source = await verify_session(runtime, session, client_ip, agent, rid, cookie_value)
        except AccessDenied:
            return Verdict("access denied")
        except CentralAuthUnavailable:
            # An outage is never a logout: the connection stays, and is checked again a TTL later.
            return Verdict(asked=True)
        except SessionStoreUnavailable:
            # Only deleting the record of a session CentralAuth has just refused reaches the store.
            return Verdict("session ended")
        if user is None:
            return Verdict("session ended")
        return Verdict(asked=source != "hit")

    return check


def _log_end(request: web.Request, connection: watch.Connection, session: Session | None) -> None:
    code, reason = connection.ended.result()
    log.info(
        f"{connection.kind}.ended",
        code=code,
        reason=reason,
        request_id=request_id(request),
        session=fingerprint(session.access_token) if session is not None else None,
    )
