"""`POST /api/v1/userinfo` and `POST /api/v1/logout`: the calls that carry a token (docs/centralauth.md).

Both take Basic client credentials and the raw access or id token as the body, with any or no
Content-Type (surrounding whitespace is stripped, cache headers are ignored). An empty, undecodable,
foreign or garbled token is `tokenInvalid`.

Userinfo checks, in order: token → session exists (`sessionMissing`) → still active
(`sessionInactive`) → max session time and inactivity on the fake clock (`sessionExpired`) → hijack
checks for each enabled sub-option, comparing `auth-ip` (first entry of a comma-separated list),
`user-agent` and `device-id` with the login's values; a mismatch ends the session for good
(`sessionInvalid`) → `domain` (origin or full URL, reduced to its origin) must be given, whitelisted
and activated for the session (`domainInvalid`). Success counts as activity and answers the User
object with the session's `affirmationDate`.

Logout ends the session and answers 200 with an empty body; logging out an already-ended session
succeeds again, so a retried logout is harmless.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from . import clientauth, tokens
from .context import Context, context
from .errors import ApiError
from .model import Session
from .origins import is_whitelisted, origin_of
from .responses import json_response


async def _session_of_token(request: web.Request, ctx: Context) -> Session:
    clientauth.require_basic(request, ctx.settings)
    try:
        token = (await request.read()).decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""
    session_id = tokens.session_id_of(ctx.settings.client_secret, token) if token else None
    if session_id is None:
        raise ApiError("tokenInvalid", "The token is missing or invalid")
    session = ctx.store.sessions.get(session_id)
    if session is None:
        raise ApiError("sessionMissing", "The session of this token does not exist")
    return session


def _same_ip(sent: str, recorded: str) -> bool:
    first = sent.split(",")[0].strip()
    try:
        return ipaddress.ip_address(first) == ipaddress.ip_address(recorded)
    except ValueError:
        return first == recorded


def _check_hijack(request: web.Request, ctx: Context, session: Session) -> None:
    check_ip, check_user_agent, check_device = ctx.settings.hijack_checks()
    headers = request.headers
    if (
        (check_ip and not _same_ip(headers.get("auth-ip", ""), session.ip))
        or (check_user_agent and headers.get("User-Agent", "") != session.user_agent)
        or (check_device and headers.get("device-id", "") != session.device_id)
    ):
        # CentralAuth invalidates the whole session on a mismatch, not just this request.
        session.ended = "hijack"
        raise ApiError("sessionInvalid", "The session does not match the supplied information")


def _check_domain(request: web.Request, ctx: Context, session: Session) -> None:
    domain = request.query.get("domain", "")
    origin = origin_of(domain) if domain else None
    settings = ctx.settings
    if origin is None:
        raise ApiError("domainInvalid", "The domain is missing or not a valid URL")
    if not is_whitelisted(origin, settings.whitelist, allow_localhost=settings.allow_localhost):
        raise ApiError("domainInvalid", "The domain is not whitelisted")
    if origin not in session.origins:
        raise ApiError("domainInvalid", "The session is not enabled for this domain")


async def userinfo(request: web.Request) -> web.Response:
    ctx = context(request)
    session = await _session_of_token(request, ctx)
    now = ctx.clock.now()
    if not session.active:
        raise ApiError("sessionInactive", "The session is no longer active")
    if session.is_expired(now, ctx.settings.max_session_time, ctx.settings.max_inactivity_time):
        raise ApiError("sessionExpired", "The session has expired")
    _check_hijack(request, ctx, session)
    _check_domain(request, ctx, session)
    session.last_activity = now
    session.user.last_login = now
    return json_response(session.user.to_json(session.affirmation_date))


async def logout(request: web.Request) -> web.Response:
    ctx = context(request)
    session = await _session_of_token(request, ctx)
    if session.active:
        session.ended = "logout"
    return web.Response(status=200)
