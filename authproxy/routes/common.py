"""Request-level helpers shared by the routes: request ids, client identity, and error answers."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from authproxy import pages
from authproxy.errors import AuthproxyError, LoginError, LoginExpired
from authproxy.headers import client_ip, is_trusted, parse_ip
from authproxy.runtime import RUNTIME

log = structlog.get_logger("authproxy")

REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    return str(request.get(REQUEST_ID, ""))


def peer_trusted(request: web.Request) -> bool:
    return is_trusted(parse_ip(request.remote or ""), request.app[RUNTIME].trusted_proxies)


def end_user_ip(request: web.Request) -> str:
    runtime = request.app[RUNTIME]
    return client_ip(request.remote, request.headers.get("X-Forwarded-For"), runtime.trusted_proxies)


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
    rid = incoming if trusted else secrets.token_hex(12)
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
    if api_client(request):
        return pages.json_error(exc.status, exc.code, exc.public, rid)
    runtime = request.app[RUNTIME]
    retry = f"{runtime.prefix}/start" if isinstance(exc, LoginError) or exc.status == 401 else None
    return pages.error_page(
        exc.status, _title(exc), exc.public, rid, retry_url=retry, branding=runtime.branding
    )


def _title(exc: AuthproxyError) -> str:
    if exc.status == 403:
        return "Access denied"
    if exc.status in (502, 503, 504):
        return "Service unavailable"
    if isinstance(exc, LoginExpired):
        return "Sign-in expired"
    if isinstance(exc, LoginError):
        return "Sign-in failed"
    return "Something went wrong"
