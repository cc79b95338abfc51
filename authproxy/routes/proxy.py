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

from authproxy import pages, watch, websocket
from authproxy.context import RUNTIME, end_user_ip, peer_trusted, request_id, user_agent
from authproxy.core.headers import combined, forwarded_value
from authproxy.core.paths import AmbiguousTarget, CanonicalTargets, Target, split_absolute
from authproxy.core.routing import Route, decide
from authproxy.core.user import User
from authproxy.errors import (
    AccessDenied,
    AmbiguousRequest,
    CentralAuthUnavailable,
    SessionStoreUnavailable,
)
from authproxy.forwarder import Upstream, forward
from authproxy.gate import (
    Bearer,
    accepts_bearer,
    auth_mode,
    bearer_credentials,
    cached_user,
    check_session,
    invalid_bearer,
    load_session,
    step_up,
    unauthenticated,
    verify_session,
    wants_json,
)
from authproxy.logs import fingerprint
from authproxy.runtime import LIVE, Runtime
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
# The route a proxied request fell under: an open connection is re-checked by its rules and TTL.
_ROUTE = web.RequestKey("authproxy_route", Route)
# A native client's device id: an open connection is re-checked with it, as its handshake was.
_DEVICE = web.RequestKey("authproxy_device", str)


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request[RUNTIME]
    # One canonical target decides everything below and is what the upstream receives.
    target = request_target(request, runtime.targets)
    path = target.path
    # The Host header as sent is what the route is chosen by, and what the upstream receives.
    route = request[_ROUTE] = runtime.route_table.match(request.headers.get("Host", ""), request.method, path)
    upstream = runtime.upstream_for(route, path)
    if upstream is None:
        message = "No application is configured for this path."
        return pages.error_page(404, "Not found", message, request_id(request), branding=runtime.branding)
    upgrade = websocket.is_upgrade(request)
    # Before anything is spent on it: a page of another site must not open a socket with the user's
    # cookie (cross-site websocket hijacking, wherever SameSite lets the cookie go along).
    if upgrade and not _origin_allowed(request, runtime):
        raise websocket.ForeignOrigin()
    auth = auth_mode(runtime, route, request.method, path)
    user: User | None = None
    session: Session | None = None
    ended = False  # the request carried a session CentralAuth has ended: its cookie is cleared
    presented: Bearer | None = None  # the credentials of a native or API client, when it sent them
    bearer_on = accepts_bearer(runtime, route)
    if auth != "public":
        session = await load_session(request, runtime)
        if session is None and bearer_on:
            presented = bearer_credentials(request)
            session = presented.session(runtime) if presented is not None else None
            if presented is not None and presented.device_id:
                request[_DEVICE] = presented.device_id
        if session is not None:
            device_id = presented.device_id if presented is not None else ""
            ttl = route.session_check_ttl
            user = cached_user(request, runtime, session, rules=route.rules, ttl=ttl, device_id=device_id)
            if user is None:
                user = await check_session(
                    request, runtime, session, rules=route.rules, ttl=ttl, device_id=device_id
                )
            ended = user is None and presented is None
            if user is None:
                session = None
        if user is None and presented is not None:
            return invalid_bearer(request)  # never a redirect, optional route or not
        if user is None and auth == "required":
            response = unauthenticated(
                request, runtime, target, api=wants_json(request, runtime, route, path)
            )
            if ended:
                runtime.cookie.clear(response)
            return response
        if user is not None and route.step_up_max_age is not None:
            decision = decide(route, user, runtime.rules, runtime.clock())
            if decision.outcome == "step-up":
                api = presented is not None or wants_json(request, runtime, route, path)
                return step_up(request, runtime, target, api=api)
    wire_target = route.forwarded_target(target)
    headers = _upstream_headers(request, runtime, upstream, user, session)
    if bearer_on and not route.pass_authorization:
        # The header carried (or may have carried) a CentralAuth token: it is the proxy's to judge,
        # not the app's to see.
        headers.popall("Authorization", None)
    if upgrade:
        if runtime.tracing is not None:
            runtime.tracing.inject(headers)  # the handshake carries the request span's context
        return await _websocket(request, runtime, upstream, wire_target, headers, session)

    def on_prepare(response: web.StreamResponse) -> None:
        if ended:
            # An optional route answers anyway, anonymously; the dead cookie goes with the answer.
            runtime.cookie.clear(response)
        if session is not None:
            # Should the answer be an event stream, it is watched like a websocket while it streams.
            _watch_event_stream(request, runtime, session, response)

    exchange = forward(
        runtime.pool,
        request,
        upstream,
        headers,
        wire_target,
        runtime.metrics.observe_upstream,
        on_prepare if ended or session is not None else None,
    )
    try:
        if runtime.tracing is None:
            return await exchange
        # The forwarder reads `headers` once awaited: the exchange's span puts its context in first.
        return await runtime.tracing.upstream_exchange(
            exchange, request.method, upstream.url + wire_target, headers
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


def _upstream_headers(
    request: web.Request, runtime: Runtime, upstream: Upstream, user: User | None, session: Session | None
) -> CIMultiDict[str]:
    """What the upstream receives, for a plain request and a websocket handshake alike."""
    trusted = peer_trusted(request)
    # A client's trace context passes only from a trusted proxy, and only while the proxy does not
    # trace (when it does, the upstream gets the proxy's own context instead).
    headers = runtime.upstream_headers(request.headers.items(), trusted and runtime.tracing is None)
    # The browser's Host exactly as sent (aiohttp's `request.host` would invent one when it is absent).
    browser_host = request.headers.get("Host")
    if upstream.preserve_host and browser_host:
        headers["Host"] = browser_host
    headers["X-Forwarded-For"] = end_user_ip(request)
    proto = combined(request.headers.getall("X-Forwarded-Proto", ()))
    host = combined(request.headers.getall("X-Forwarded-Host", ()))
    headers["X-Forwarded-Proto"] = forwarded_value(proto, trusted) or request.scheme
    headers["X-Forwarded-Host"] = forwarded_value(host, trusted) or request.host
    headers["X-Request-Id"] = request_id(request)
    if user is not None and session is not None:
        token = session.access_token if runtime.config.headers.pass_access_token else None
        runtime.identity_headers.write(headers, user, token)
        if runtime.assertions is not None:
            # Proof for the upstream that the request came through the proxy (a client's copy was stripped).
            headers[runtime.assertions.header] = runtime.assertions.for_upstream(user, upstream.url)
    return headers


# --- websockets and event streams ----------------------------------------------------------------------


def _origin_allowed(request: web.Request, runtime: Runtime) -> bool:
    return websocket.origin_allowed(
        request.headers.getall("Origin", ()),
        runtime.config.server.public_url,
        runtime.config.websocket.allowed_origins,
    )


async def _websocket(
    request: web.Request,
    runtime: Runtime,
    upstream: Upstream,
    wire_target: str,
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
                upstream,
                wire_target,
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
    """Start re-checking `connection`'s session, and its deadlines; None when there is nothing to watch.

    An open connection outlives the request that opened it, so its re-checks run on the live runtime
    (`app[LIVE]`), not the one the handshake started on: a reload that narrows `[authorization]` or
    changes the TTL applies to sockets already open.
    """
    live = request.app[LIVE]
    route = request[_ROUTE]
    now = asyncio.get_running_loop().time()
    deadlines: list[tuple[float, str]] = []
    check = None
    if session is not None:
        deadlines.append((now + session.expires_at - runtime.clock(), "session expired"))
        cookie_value = runtime.session_cookie(request) or ""
        check = _recheck(
            lambda: live.runtime,
            route,
            session,
            end_user_ip(request),
            user_agent(request),
            request.get(_DEVICE, ""),
            request_id(request),
            lambda: cookie_value,
        )
    if max_lifetime > 0:
        deadlines.append((now + max_lifetime, "maximum lifetime reached"))
    if check is None and not deadlines:
        return None

    def ttl() -> float:
        if route.session_check_ttl is not None:
            return route.session_check_ttl
        return live.runtime.config.centralauth.session_check_ttl  # read each time: a reload may change it

    return asyncio.ensure_future(watch.keep_checking(connection, check, ttl, deadlines))


def _recheck(
    current: Callable[[], Runtime],
    route: Route,
    session: Session,
    client_ip: str,
    agent: str,
    device_id: str,
    rid: str,
    cookie_value: Callable[[], str],
) -> watch.Check:
    """One re-check of an open connection's session, as its handshake was checked, on the runtime
    `current` returns at the time."""

    async def check() -> Verdict:
        try:
            user, source = await verify_session(
                current(),
                session,
                client_ip,
                agent,
                rid,
                cookie_value,
                rules=route.rules,
                ttl=route.session_check_ttl,
                device_id=device_id,
            )
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
