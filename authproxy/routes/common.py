"""What every route shares: the request context every handler runs in, and error answers as JSON or
as a page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import structlog
from aiohttp import web

from authproxy import pages
from authproxy.context import RUNTIME, api_client, begin, end_user_ip, peer_trusted, request_id
from authproxy.cookies import ConflictingCookies
from authproxy.errors import (
    AccessDenied,
    AffirmationMismatch,
    AuthproxyError,
    CentralAuthUnavailable,
    LoginError,
    LoginExpired,
    UpstreamBusy,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from authproxy.runtime import Live

log = structlog.get_logger("authproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def in_context(handler: Handler, live: Live) -> Handler:
    """`handler`, started on the live runtime (`context.begin`) and with AuthproxyErrors rendered.

    Every route is registered wrapped in this rather than behind an aiohttp middleware: a middleware
    costs each request an extra coroutine frame (resumed at every wait), a partial and a cache lookup,
    about 3 % of a forwarded request's CPU. The catch-all route leaves aiohttp no request of its own
    to answer, so there is nothing a middleware would see that this does not.
    """

    async def contextual(request: web.Request) -> web.StreamResponse:
        runtime = live.runtime
        rid = begin(request, runtime)
        # Without tracing, this test is all a request spends on it.
        traced = (
            None
            if runtime.tracing is None
            else runtime.tracing.begin_request(request, rid, end_user_ip(request), peer_trusted(request))
        )
        metrics = runtime.metrics
        metrics.request_started()
        try:
            response = await handler(request)
        except AuthproxyError as exc:
            response = render_error(request, exc)
        except BaseException as exc:
            if traced is not None:
                traced.failed(exc)
            raise
        finally:
            metrics.request_finished()
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", rid)
        if traced is not None:
            traced.answered(response.status)
        return response

    return contextual


def render_error(
    request: web.Request, exc: AuthproxyError, *, return_to: str | None = None, signed_in: bool = True
) -> web.Response:
    """`exc` as JSON for programs, or as a page with the ways on that make sense for a person.

    The login callback passes `return_to` (its transaction's target, when it knows one) and
    `signed_in=False`: a refusal there made no session. Everywhere else an `AccessDenied` comes from
    checking an existing session.
    """
    rid = request_id(request)
    log.info("request.error", code=exc.code, status=exc.status, detail=exc.detail, request_id=rid)
    runtime = request[RUNTIME]
    if api_client(request):
        response = pages.json_error(exc.status, exc.code, exc.public, rid)
    else:
        note, actions = _ways_on(request, exc, return_to, signed_in)
        response = pages.error_page(
            exc.status, _title(exc), exc.public, rid, branding=runtime.branding, note=note, actions=actions
        )
    if isinstance(exc, ConflictingCookies):
        # Both copies go, so the sign-in this page offers ends with one session cookie, not two.
        runtime.cookie.clear_everywhere(response)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _ways_on(
    request: web.Request, exc: AuthproxyError, return_to: str | None, signed_in: bool
) -> tuple[str, tuple[pages.Action, ...]]:
    """What an error page adds to the error's message: a note, and its buttons."""
    prefix = request[RUNTIME].prefix
    # Where the user was going: the login's own target at the callback, else this page (a GET only:
    # following a link repeats no form submission).
    here = request.path_qs if request.method in ("GET", "HEAD") else "/"
    target = return_to or (here if not request.path.startswith(f"{prefix}/") else "/")
    start = f"{prefix}/start?{urlencode({'rd': target})}"
    if isinstance(exc, AffirmationMismatch):
        # The session that asked for the affirmation is untouched: back to where it was going.
        return "", (pages.Action(return_to or "/", "Back"),)
    if isinstance(exc, AccessDenied):
        if signed_in:
            note = "You are signed in, but cannot use this application with this account."
        else:
            note = "CentralAuth signed you in, but this application did not: you are not signed in here."
        # Signing out first matters when a session exists, and is harmless when none does; without it a
        # CentralAuth that remembers the browser could hand back the very same account.
        another = f"{prefix}/sign_out?{urlencode({'rd': start})}"
        return note, (
            pages.Action(another, "Use another account"),
            pages.Action(f"{prefix}/sign_out", "Sign out", secondary=True),
        )
    if isinstance(exc, CentralAuthUnavailable) and return_to is not None:
        # A failed callback cannot be repeated (its code and state are used up); a new login can.
        note = (
            "Your sign-in could not be finished, so you are not signed in yet. Try again to start a new one."
        )
        return note, (pages.Action(start, "Try again", to_sign_in=True),)
    if isinstance(exc, CentralAuthUnavailable | UpstreamUnavailable | UpstreamTimeout | UpstreamBusy):
        if request.method in ("GET", "HEAD") and not request.path.startswith(f"{prefix}/"):
            return "", (pages.Action(request.path_qs, "Try again"),)
        return "", ()
    if isinstance(exc, LoginError | ConflictingCookies) or exc.status == 401:
        # Without a known target the login goes to `/`, the start route's own default.
        retry = start if return_to is not None else f"{prefix}/start"
        return "", (pages.Action(retry, "Sign in again", to_sign_in=True),)
    return "", ()


def _title(exc: AuthproxyError) -> str:
    if isinstance(exc, AccessDenied):
        return "Access denied"
    if isinstance(exc, CentralAuthUnavailable):
        return "Sign-in service unavailable"
    if isinstance(exc, UpstreamUnavailable | UpstreamTimeout):
        return "The application is not answering"
    if isinstance(exc, UpstreamBusy):
        return "The application is busy"
    if exc.status == 403:
        return "Access denied"
    if exc.status in (502, 503, 504):
        return "Service unavailable"
    if isinstance(exc, LoginExpired):
        return "Sign-in expired"
    if isinstance(exc, ConflictingCookies):
        return "Sign in again"
    if isinstance(exc, LoginError):
        return "Sign-in failed"
    return "Something went wrong"
