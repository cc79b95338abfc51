"""Request-level helpers shared by the routes: request ids, client identity, and error answers."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from authproxy import pages
from authproxy.cookies import ConflictingCookies
from authproxy.errors import AuthproxyError, LoginError, LoginExpired
from authproxy.headers import combined
from authproxy.runtime import RUNTIME

log = structlog.get_logger("authproxy")

REQUEST_ID = web.RequestKey("request_id", str)
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
    in_flight = request.app[RUNTIME].metrics.in_flight
    in_flight.inc()
    try:
        response = await handler(request)
    except AuthproxyError as exc:
        response = render_error(request, exc)
    finally:
        in_flight.dec()
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", rid)
    return response


def render_error(request: web.Request, exc: AuthproxyError) -> web.Response:
    rid = request_id(request)
    log.info("request.error", code=exc.code, status=exc.status, detail=exc.detail, request_id=rid)
    runtime = request.app[RUNTIME]
    if api_client(request):
        response = pages.json_error(exc.status, exc.code, exc.public, rid)
    else:
        again = isinstance(exc, LoginError | ConflictingCookies) or exc.status == 401
        retry = f"{runtime.prefix}/start" if again else None
        response = pages.error_page(
            exc.status, _title(exc), exc.public, rid, retry_url=retry, branding=runtime.branding
        )
    if isinstance(exc, ConflictingCookies):
        # Both copies go, so the sign-in this page offers ends with one session cookie, not two.
        runtime.cookie.clear_everywhere(response)
    return response


def _title(exc: AuthproxyError) -> str:
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
