"""`/auth` for nginx `auth_request` / Traefik `forwardAuth`, and `/userinfo` for the signed-in user.

Both answer from the same cached session check as proxied requests. `/auth` never redirects: 202 with
`X-Auth-Request-*` headers, 401 without a valid session (or `step_up_required` when the route wants a
fresher affirmation), 403 when the rules or the query's narrowing refuse the user. Behind a trusted
proxy it judges the original request (`X-Forwarded-Uri`, `-Method`, `-Host`) like a proxied one: its
canonical path and host choose the `[[routes]]` entry, whose mode, allow-lists, TTL and step-up apply,
and `skip_auth` routes pass without a session.
"""

from __future__ import annotations

from aiohttp import web

from authproxy import gate, pages
from authproxy.context import RUNTIME, peer_trusted, request_id
from authproxy.core.authorization import Rules, denial
from authproxy.core.paths import AmbiguousTarget, Target, canonical_target, split_absolute
from authproxy.core.routing import Auth, decide
from authproxy.errors import AmbiguousRequest, StepUpRequired
from authproxy.gate import auth_mode
from authproxy.runtime import Runtime


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
    runtime = request[RUNTIME]
    original = _original(request) if peer_trusted(request) else None
    route = runtime.route_table.default
    mode: Auth = "required"
    if original is not None:
        host, method, target, as_judged = original
        route = runtime.route_table.match(host, method, target.path)
        mode = auth_mode(runtime, route, method, target.path)
        # The front proxy, not authproxy, sends the request upstream, and sends it as the client spelled
        # it: a spelling that is not already canonical might reach another resource there, so it gets
        # no more than a signed-in request would.
        if not as_judged:
            mode = "required"
    if mode == "public":
        return web.Response(status=202, headers=pages.MARKER)
    session = await gate.load_session(request, runtime)
    user = None
    if session is not None:
        user = await gate.check_session(
            request, runtime, session, rules=route.rules, ttl=route.session_check_ttl
        )
    if user is None or session is None:
        if mode == "optional":
            return web.Response(status=202, headers=pages.MARKER)  # anonymous: no identity headers
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    step_up = route.step_up_max_age is not None
    if step_up and decide(route, user, runtime.rules, runtime.clock()).outcome == "step-up":
        raise StepUpRequired()
    narrowing = _narrowing(request, runtime)
    if narrowing is not None and denial(user, narrowing) is not None:
        return pages.json_error(
            403, "access_denied", "This account is not allowed here.", request_id(request)
        )
    names = runtime.forward_auth_headers
    headers = {
        names.user: user.id,
        names.email: user.email,
        names.preferred_username: user.email,
        **pages.MARKER,
    }
    if runtime.config.headers.pass_access_token:
        headers[names.access_token] = session.access_token
    return web.Response(status=202, headers=headers)


def _original(request: web.Request) -> tuple[str, str, Target, bool] | None:
    """The original request a trusted front proxy names: its host (`X-Forwarded-Host`, else `Host`),
    method (`X-Forwarded-Method`, else this request's), canonical target (`X-Forwarded-Uri`), and
    whether it was spelled canonically. None without `X-Forwarded-Uri`. An ambiguous target, or two
    lines of any of the three headers, is refused with 400.
    """
    uris = request.headers.getall("X-Forwarded-Uri", ())
    methods = request.headers.getall("X-Forwarded-Method", ())
    hosts = request.headers.getall("X-Forwarded-Host", ())
    if len(uris) > 1 or len(methods) > 1 or len(hosts) > 1:
        raise AmbiguousRequest("more than one X-Forwarded-Uri, X-Forwarded-Method or X-Forwarded-Host line")
    if not uris:
        return None
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
    host = hosts[0] if hosts else request.headers.get("Host", "")
    return host, method, target, raw.partition("?")[0] == target.path


async def userinfo(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    found = await gate.signed_in(request, runtime)
    if found is None:
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    _, user = found
    body = {
        "user": user.id,
        "email": user.email,
        "preferredUsername": user.email,
        "verified": user.verified,
        "affirmationDate": user.affirmation_date,
    }
    return web.json_response(body, headers=pages.MARKER)
