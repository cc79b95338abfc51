"""Request-level helpers shared by the routes: request ids, client identity, and error answers."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import structlog
from aiohttp import web

from authproxy import pages
from authproxy.cookies import ConflictingCookies
from authproxy.errors import (
    AccessDenied,
    AuthproxyError,
    CentralAuthUnavailable,
    LoginError,
    LoginExpired,
    UpstreamBusy,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from authproxy.headers import combined
from authproxy.runtime import RUNTIME

log = structlog.get_logger("authproxy")

REQUEST_ID = web.RequestKey("request_id", str)
# The end user's IP, worked out once per request by `request_context`: the session check, the
# upstream's X-Forwarded-For and the access log all use this one value.
CLIENT_IP = web.RequestKey("client_ip", str)
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestIds:
    """Fresh request ids of 96 random bits, drawn from the OS in batches rather than one call per id."""

    def __init__(self, batch: int = 256) -> None:
        self._size = 12 * batch
        self._pool = b""
        self._next = self._size
        # A forked child must not hand out the ids its parent has drawn already.
        os.register_at_fork(after_in_child=self._discard)

    def _discard(self) -> None:
        self._next = self._size

    def __call__(self) -> str:
        start = self._next
        if start >= self._size:
            self._pool = os.urandom(self._size)
            start = 0
        self._next = start + 12
        return self._pool[start : start + 12].hex()


new_request_id = RequestIds()


def request_id(request: web.Request) -> str:
    return str(request.get(REQUEST_ID, ""))


def peer_trusted(request: web.Request) -> bool:
    return request.app[RUNTIME].client_ips.peer_trusted(request.remote)


def end_user_ip(request: web.Request) -> str:
    return request[CLIENT_IP]


def _end_user_ip(request: web.Request) -> str:
    forwarded_for = combined(request.headers.getall("X-Forwarded-For", ()))
    return request.app[RUNTIME].client_ips.client(request.remote, forwarded_for)


def user_agent(request: web.Request) -> str:
    return request.headers.get("User-Agent", "")


def api_client(request: web.Request) -> bool:
    return pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (a trusted proxy's, or a fresh one) and render AuthproxyErrors."""
    incoming = request.headers.get("X-Request-Id", "")
    trusted = incoming and _REQUEST_ID_RE.fullmatch(incoming) and peer_trusted(request)
    rid = incoming if trusted else new_request_id()
    request[REQUEST_ID] = rid
    request[CLIENT_IP] = _end_user_ip(request)
    metrics = request.app[RUNTIME].metrics
    metrics.request_started()
    try:
        response = await handler(request)
    except AuthproxyError as exc:
        response = render_error(request, exc)
    finally:
        metrics.request_finished()
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", rid)
    return response


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
    runtime = request.app[RUNTIME]
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
    prefix = request.app[RUNTIME].prefix
    # Where the user was going: the login's own target at the callback, else this page (a GET only:
    # following a link repeats no form submission).
    here = request.path_qs if request.method in ("GET", "HEAD") else "/"
    target = return_to or (here if not request.path.startswith(f"{prefix}/") else "/")
    start = f"{prefix}/start?{urlencode({'rd': target})}"
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
