"""Forward-auth (`/auth`, `/auth/<path>`) for front proxies, and `/userinfo` for the signed-in user.

A front proxy (nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, ingress-nginx
`auth-url`, Envoy `ext_authz`) asks before each request whether it may pass it on. The answer comes
from the same cached session check as a proxied request, and never redirects: `[forward_auth]
success_status` (202, or 200 for Envoy) with `X-Auth-Request-*` headers; 401 without a valid session
(or `step_up_required` when the route wants a fresher affirmation); 403 when the rules, or the query's
narrowing on `/auth`, refuse the user; 400 when the original request cannot be told unambiguously.

The original request (host, method, target) chooses the `[[routes]]` entry, whose mode, allow-lists,
TTL and step-up apply, and `skip_auth` routes pass without a session. Its sources, in precedence order:

- target: the check's own path after `{prefix}/auth` (Envoy's `path_prefix` puts the original path
  there; from any peer, since it is this request's own target, judged as if it had been sent to the
  proxy directly), then `X-Forwarded-Uri` (nginx, Traefik, Caddy), then `X-Original-URL` (ingress-nginx:
  a full URL, or a path);
- method: the check's own method on `/auth/<path>` (Envoy sends the original one), then
  `X-Forwarded-Method`, then `X-Original-Method`; without any, the check's own method;
- host: the check's own `Host` on `/auth/<path>`, then `X-Forwarded-Host`, then `X-Original-URL`'s
  authority; without any, the check's own `Host`.

The headers count only from `trusted_proxies`: from any other peer they are ignored, and a check of
`/auth` alone is of the default route (signed in or not). Every source present must name the same thing
(targets by their canonical form, methods in any case, hosts without case or port): a front proxy
that writes one header and passes the client's copy of another on would otherwise let the client
choose. Two sources that disagree, two lines of one header, or a target that cannot be canonicalized
are refused with 400. `X-Forwarded-Proto` and `X-Original-URL`'s scheme are not read: no route depends
on the scheme.

The front proxy sends the request on as the client spelled it, so a target spelled other than its
canonical form (`/public/../admin`) never gets a public or optional route's leniency: it is judged by
its canonical path's route, as if that route were `required`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from authproxy import gate, pages
from authproxy.context import RUNTIME, peer_trusted, request_id
from authproxy.core.authorization import Rules, denial
from authproxy.core.paths import AmbiguousTarget, Target, canonical_target, split_absolute
from authproxy.core.routing import Auth, decide
from authproxy.core.user import User
from authproxy.errors import AmbiguousRequest, StepUpRequired
from authproxy.gate import auth_mode
from authproxy.runtime import Runtime
from authproxy.session.model import Session

# RFC 9110's token: what a method may be.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class Original:
    """The request a front proxy asks about: its host, method and canonical target, and whether every
    spelling of that target was already canonical (`as_judged`)."""

    host: str
    method: str
    target: Target
    as_judged: bool


async def auth(request: web.Request) -> web.Response:
    """`GET {prefix}/auth`: the original request is named by headers from a trusted proxy, if at all."""
    return await _check(request, appended=None)


async def auth_path(request: web.Request) -> web.Response:
    """`{prefix}/auth/<path>`, any method: the check of `<path>` (Envoy's `ext_authz` `path_prefix`)."""
    return await _check(request, appended=_appended_target(request, request[RUNTIME]))


async def _check(request: web.Request, appended: str | None) -> web.Response:
    runtime = request[RUNTIME]
    original = _original(request, appended)
    route = runtime.route_table.default
    mode: Auth = "required"
    if original is not None:
        route = runtime.route_table.match(original.host, original.method, original.target.path)
        mode = auth_mode(runtime, route, original.method, original.target.path)
        # The front proxy, not authproxy, sends the request upstream, and sends it as the client spelled
        # it: a spelling that is not already canonical might reach another resource there, so it gets
        # no more than a signed-in request would.
        if not original.as_judged:
            mode = "required"
    if mode == "public":
        return _allowed(runtime)
    session = await gate.load_session(request, runtime)
    presented = None
    if session is None and gate.accepts_bearer(runtime, route):
        # An API client behind the front proxy: its Bearer token and device id, as on a proxied request.
        presented = gate.bearer_credentials(request)
        session = presented.session(runtime) if presented is not None else None
    user = None
    if session is not None:
        device_id = presented.device_id if presented is not None else ""
        ttl = route.session_check_ttl
        user = gate.cached_user(request, runtime, session, rules=route.rules, ttl=ttl, device_id=device_id)
        if user is None:
            user = await gate.check_session(
                request, runtime, session, rules=route.rules, ttl=ttl, device_id=device_id
            )
    if user is None and presented is not None:
        return gate.invalid_bearer(request)  # a token that does not check out: 401, whatever the mode
    if user is None or session is None:
        if mode == "optional":
            return _allowed(runtime)  # anonymous: no identity headers
        return pages.json_error(401, "unauthorized", "Sign in required.", request_id(request))
    step_up = route.step_up_max_age is not None
    if step_up and decide(route, user, runtime.rules, runtime.clock()).outcome == "step-up":
        raise StepUpRequired()
    # On `/auth/<path>` the query is the original request's, not a narrowing.
    narrowing = _narrowing(request, runtime) if appended is None else None
    if narrowing is not None and denial(user, narrowing) is not None:
        return pages.json_error(
            403, "access_denied", "This account is not allowed here.", request_id(request)
        )
    return _allowed(runtime, user, session, request)


def _allowed(
    runtime: Runtime,
    user: User | None = None,
    session: Session | None = None,
    request: web.Request | None = None,
) -> web.Response:
    """The one answer that lets a request pass: `[forward_auth] success_status`, with the identity
    headers when someone is signed in (none on a public route, or an optional one without a session).
    Every header of an allowed answer is set here and nowhere else."""
    headers = dict(pages.MARKER)
    if user is not None and session is not None:
        token = session.access_token if runtime.config.headers.pass_access_token else None
        runtime.forward_auth_headers.write(headers, user, token)
        if runtime.assertions is not None and request is not None:
            # For the front proxy to pass on (nginx `auth_request_set`, Caddy `copy_headers`, ...).
            assertion = runtime.assertions.for_forward_auth(user, request, peer_trusted(request))
            headers[runtime.assertions.header] = assertion
    return web.Response(status=runtime.config.forward_auth.success_status, headers=headers)


def _narrowing(request: web.Request, runtime: Runtime) -> Rules | None:
    """Extra per-location rules from the query (`allowed_emails`, `allowed_email_domains`)."""
    emails = _csv(request.query.get("allowed_emails"))
    domains = _csv(request.query.get("allowed_email_domains"))
    if not emails and not domains:
        return None
    return Rules(runtime.rules.client_id, allowed_email_domains=domains, allowed_emails=emails)


def _csv(value: str | None) -> frozenset[str]:
    return frozenset(item.strip().lower().lstrip("@") for item in (value or "").split(",") if item.strip())


def _appended_target(request: web.Request, runtime: Runtime) -> str:
    """What follows `{prefix}/auth` in the check's own target, query included: the original request's
    target. The prefix must be spelled as it is configured (`/oauth2/%61uth/x` reaches this route too,
    but is no plain spelling of it); an absolute-form target must name this request's `Host`."""
    raw = request.raw_path
    if not raw.startswith("/"):
        split = split_absolute(raw)
        if split is None or split[0].lower() != request.headers.get("Host", "").lower():
            raise AmbiguousRequest("a request target that is neither a path nor an absolute URL of this host")
        raw = split[1]
    base = f"{runtime.prefix}/auth"
    if not raw.startswith(base + "/"):
        raise AmbiguousRequest(f"a forward-auth target that does not start with {base}/ as written")
    return raw[len(base) :]


def _original(request: web.Request, appended: str | None) -> Original | None:
    """The original request, from every source that counts (see the module); None when nothing names
    its target. AmbiguousRequest (400) when two sources disagree, a header has two lines, or a target
    cannot be canonicalized."""
    # (source, value), in precedence order.
    targets: list[tuple[str, str]] = []
    methods: list[tuple[str, str]] = []
    hosts: list[tuple[str, str]] = []
    if appended is not None:
        targets.append(("the check's path", appended))
        methods.append(("the check's method", request.method))
        hosts.append(("the check's Host", request.headers.get("Host", "")))
    if peer_trusted(request):
        forwarded_uri = _one(request, "X-Forwarded-Uri")
        original_url = _one(request, "X-Original-URL")
        if forwarded_uri is not None:
            targets.append(("X-Forwarded-Uri", _origin_form(forwarded_uri, "X-Forwarded-Uri")[1]))
        forwarded_host = _one(request, "X-Forwarded-Host")
        if forwarded_host is not None:
            hosts.append(("X-Forwarded-Host", forwarded_host))
        if original_url is not None:
            authority, origin_form = _origin_form(original_url, "X-Original-URL")
            targets.append(("X-Original-URL", origin_form))
            if authority is not None:
                hosts.append(("X-Original-URL", authority))
        for name in ("X-Forwarded-Method", "X-Original-Method"):
            method = _one(request, name)
            if method is not None:
                methods.append((name, method))
    if not targets:
        return None
    judged = [(source, raw, _canonical(raw, source)) for source, raw in targets]
    target = judged[0][2]
    for source, _, other in judged[1:]:
        if (other.path, other.query) != (target.path, target.query):
            raise AmbiguousRequest(f"{judged[0][0]} and {source} name different targets")
    method = _agreed(methods, str.upper, "methods").upper() if methods else request.method
    if not _METHOD.fullmatch(method):
        raise AmbiguousRequest(f"{methods[0][0]} is not a method")
    host = _agreed(hosts, _host_name, "hosts") if hosts else request.headers.get("Host", "")
    as_judged = all(raw.partition("?")[0] == canonical.path for _, raw, canonical in judged)
    return Original(host, method, target, as_judged)


def _one(request: web.Request, name: str) -> str | None:
    """The header's one line, None without it; two lines are refused (which one would the proxy mean?)."""
    lines = request.headers.getall(name, ())
    if len(lines) > 1:
        raise AmbiguousRequest(f"more than one {name} line")
    return lines[0].strip() if lines else None


def _origin_form(value: str, source: str) -> tuple[str | None, str]:
    """(authority or None, origin-form target) of a path or an absolute http(s) URL."""
    if value.startswith("/"):
        return None, value
    split = split_absolute(value)
    if split is None:
        raise AmbiguousRequest(f"{source} is neither a path nor an absolute http(s) URL")
    return split


def _canonical(raw: str, source: str) -> Target:
    try:
        return canonical_target(raw)
    except AmbiguousTarget as exc:
        raise AmbiguousRequest(f"{source} refused: {exc.reason}") from None


def _agreed(values: list[tuple[str, str]], key: Callable[[str], str], what: str) -> str:
    """The first value, when every other one means the same (compared by `key`); AmbiguousRequest if not."""
    first_source, first = values[0]
    for source, value in values[1:]:
        if key(value) != key(first):
            raise AmbiguousRequest(f"{first_source} and {source} name different {what}")
    return first


def _host_name(host: str) -> str:
    """A Host value as routes compare it: lower case, without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


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
