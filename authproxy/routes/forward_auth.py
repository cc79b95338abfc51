"""`/auth` for nginx `auth_request` / Traefik `forwardAuth`, and `/userinfo` for the signed-in user.

Both answer from the same cached session check as proxied requests. `/auth` never redirects: 202 with
`X-Auth-Request-*` headers, 401 without a valid session, 403 when the query's narrowing refuses the
user. Behind a trusted proxy it judges the original request (`X-Forwarded-Uri`, `-Method`) on its
canonical path so that `skip_auth` routes pass without a session.
"""

from __future__ import annotations

from aiohttp import web

from authproxy import pages
from authproxy.authorization import Rules, denial
from authproxy.errors import AmbiguousRequest
from authproxy.paths import AmbiguousTarget, canonical_target, split_absolute
from authproxy.provider.user import User
from authproxy.routes.common import peer_trusted, request_id
from authproxy.routes.proxy import check_session, load_session
from authproxy.runtime import RUNTIME, Runtime
from authproxy.session.model import Session


async def _signed_in(request: web.Request, runtime: Runtime) -> tuple[Session, User] | None:
    session = await load_session(request, runtime)
    if session is None:
        return None
    user = await check_session(request, runtime, session)
    return None if user is None else (session, user)


def _narrowing(request: web.Request, runtime: Runtime) -> Rules | None:
    """Extra per-location rules from the query (`allowed_emails`, `allowed_email_domains`)."""
    emails = _csv(request.query.get("allowed_emails"))
    domains = _csv(request.query.get("allowed_email_domains"))
    if not emails and not domains:
        return None
    return Rules(runtime.rules.client_id, allowed_email_domains=domains, allowed_emails=emails)


def _csv(value: str | None) -> frozenset[str]:
    return frozenset(item.strip().lower().lstrip("@") for item in (value or "").split(",") if item.strip())


async def auth(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if peer_trusted(request) and _original_is_public(request, runtime):
        return web.Response(status=202, headers=pages.MARKER)
    signed_in = await _signed_in(request, runtime)
    if signed_in is None:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    session, user = signed_in
    narrowing = _narrowing(request, runtime)
    if narrowing is not None and denial(user, narrowing) is not None:
        return pages.json_error(
            403, "access_denied", "This account is not allowed here.", request_id(request)
        )
    headers = {
        "X-Auth-Request-User": user.id,
        "X-Auth-Request-Email": user.email,
        "X-Auth-Request-Preferred-Username": user.email,
        **pages.MARKER,
    }
    if runtime.config.headers.pass_access_token:
        headers["X-Auth-Request-Access-Token"] = session.access_token
    return web.Response(status=202, headers=headers)


def _original_is_public(request: web.Request, runtime: Runtime) -> bool:
    """Whether the original request a trusted proxy names (`X-Forwarded-Uri`, `-Method`) is public.

    It is judged on its canonical path like a proxied request. The front proxy, not authproxy, sends
    the request upstream, and sends it as the client spelled it; so a spelling that is not already
    canonical (`/public//x`, `/public/%61`) is never public here, as the upstream might read it
    otherwise. An ambiguous one, or two lines of either header, is refused with 400.
    """
    uris = request.headers.getall("X-Forwarded-Uri", ())
    methods = request.headers.getall("X-Forwarded-Method", ())
    if len(uris) > 1 or len(methods) > 1:
        raise AmbiguousRequest("more than one X-Forwarded-Uri or X-Forwarded-Method line")
    if not uris:
        return False
    raw = uris[0]
    if not raw.startswith("/"):
        split = split_absolute(raw)
        if split is None:
            raise AmbiguousRequest("an X-Forwarded-Uri that is neither a path nor an absolute URL")
        raw = split[1]
    try:
        target = canonical_target(raw)
    except AmbiguousTarget as exc:
        raise AmbiguousRequest(f"X-Forwarded-Uri refused: {exc.reason}") from None
    method = methods[0].upper() if methods else request.method
    return raw.partition("?")[0] == target.path and runtime.routes.skip_auth(method, target.path)


async def userinfo(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    signed_in = await _signed_in(request, runtime)
    if signed_in is None:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    _, user = signed_in
    body = {
        "user": user.id,
        "email": user.email,
        "preferredUsername": user.email,
        "verified": user.verified,
        "affirmationDate": user.affirmation_date,
    }
    return web.json_response(body, headers=pages.MARKER)
