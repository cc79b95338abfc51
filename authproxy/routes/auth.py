"""The login flow: `/start`, `/callback` and `/sign_in` under the proxy prefix.

The callback works in the order authlib uses — error, then state, then exchange — and every failure
leaves no half-made session: the session cookie is only set on the final redirect, after CentralAuth
has vouched for the user and the `[authorization]` rules have admitted them.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode, urlsplit

import structlog
from aiohttp import web

from authproxy import audit, pages
from authproxy.context import RUNTIME, end_user_ip, request_id, user_agent
from authproxy.core.authorization import Rules, denial
from authproxy.core.paths import AmbiguousTarget
from authproxy.core.redirect import safe_return_url
from authproxy.core.transaction import TTL, LoginTransaction
from authproxy.errors import (
    AccessDenied,
    AffirmationMismatch,
    AuthproxyError,
    LoginError,
    LoginExpired,
    LoginRejected,
    SessionRejected,
)
from authproxy.gate import load_session, start_url
from authproxy.logs import fingerprint
from authproxy.routes.common import render_error
from authproxy.runtime import Runtime
from authproxy.session.model import Session

log = structlog.get_logger("authproxy.login")

MAX_RETURN_URL = 2048
# Sent with the redirect to CentralAuth so its checkReferrer sees our origin, and nothing more (see
# docs/centralauth.md).
REFERRER_POLICY = {"Referrer-Policy": "strict-origin-when-cross-origin"}


async def start(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    # X-Auth-Request-Redirect lets a fronting proxy pass the original URL without having to encode it.
    target = (
        request.query.get("rd")
        or request.query.get("return_to")
        or request.headers.get("X-Auth-Request-Redirect")
    )
    now = runtime.clock()
    return_to = safe_return_url(target, runtime.redirects)
    if len(return_to) > MAX_RETURN_URL:
        # The transaction cookie must fit in 4 KB; an over-long deep link is not worth a failed login.
        log.info("login.return_url_too_long", length=len(return_to))
        return_to = "/"
    # `affirm=1` (a step-up): CentralAuth asks the signed-in user to sign in again, e-mail pre-filled,
    # and the callback accepts only the same user. Without a session there is nothing to affirm.
    affirming = await load_session(request, runtime) if request.query.get("affirm") == "1" else None
    transaction = LoginTransaction.new(return_to, now, affirming.user_id if affirming is not None else "")
    parameters = {
        "client_id": runtime.config.centralauth.client_id,
        "redirect_uri": runtime.callback_url,
        "response_type": "code",
        "state": transaction.state,
        "code_challenge": transaction.challenge,
        "code_challenge_method": "S256",
    }
    if affirming is not None:
        parameters |= {"affirm": "1", "email": affirming.email}
    query = urlencode(parameters)
    response = web.Response(
        status=302, headers={"Location": f"{runtime.login_url}?{query}", **REFERRER_POLICY, **pages.MARKER}
    )
    for name in runtime.transactions.surplus(request.cookies, now):
        response.del_cookie(name, path=runtime.prefix)
    response.set_cookie(
        runtime.transactions.name(transaction.state),
        runtime.transactions.seal(transaction),
        max_age=int(TTL),
        path=runtime.prefix,
        secure=runtime.cookie.secure,
        httponly=True,
        # Lax whatever the session cookie uses: the callback is a top-level navigation from CentralAuth.
        samesite="Lax",
    )
    return response


async def callback(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    state = request.query.get("state")
    try:
        response = await _complete_login(request, runtime, state)
    except AuthproxyError as exc:
        # The page's "try again" starts a new login to where this one was going; peeking at the
        # transaction changes nothing (only `_complete_login` consumes its state).
        pending = runtime.transactions.open(state, request.cookies, runtime.clock())
        return_to = pending.return_to if pending is not None else None
        response = render_error(request, exc, return_to=return_to, signed_in=False)
        detail = getattr(exc, "error_code", getattr(exc, "rule", None))
        audit.event("login.failure", request_id(request), reason=exc.code, detail=detail)
        runtime.metrics.logins.labels(exc.code).inc()
    # Single use, success or not: the transaction cookie is gone after the first callback. Only a state
    # of the shape the proxy makes names a cookie: any other could be a name no Set-Cookie can carry.
    name = runtime.transactions.name_for(state)
    if name is not None and name in request.cookies:
        response.del_cookie(name, path=runtime.prefix)
    return response


async def _complete_login(request: web.Request, runtime: Runtime, state: str | None) -> web.Response:
    query = request.query
    if "error" in query:
        # CentralAuth's error_description is attacker-controllable text, never shown: only the code is
        # kept, for logs.
        raise LoginRejected(query.get("error", "")[:64])
    now = runtime.clock()
    transaction = runtime.transactions.open(state, request.cookies, now)
    if transaction is None or not runtime.used_states.consume(transaction.state, now):
        raise LoginExpired()
    code = query.get("code")
    if not code:
        raise LoginError("callback without code", public="CentralAuth sent no authorization code. Try again.")

    provider = runtime.provider
    tokens = await provider.verify(code, runtime.callback_url, transaction.verifier)
    try:
        user = await runtime.userinfo(tokens.access_token, end_user_ip(request), user_agent(request), "")
    except SessionRejected as exc:
        raise LoginRejected(exc.error_code) from None
    if transaction.affirm_user and user.id != transaction.affirm_user:
        # The official library compares e-mails only; the id is what identifies the account. The session
        # that asked for the affirmation stays as it was: the cookie is not touched.
        audit.event("login.affirmation_mismatch", request_id(request), user=user.id)
        raise AffirmationMismatch()
    rule = denial(user, _login_rules(runtime, transaction.return_to))
    if rule is not None:
        raise AccessDenied(rule)

    max_age = float(runtime.config.session.max_age)
    lifetime = min(tokens.expires_in, max_age) if tokens.expires_in is not None else max_age
    session = Session(tokens.access_token, user.id, user.email, now, now + lifetime)
    value = await runtime.store.save(session)
    if transaction.affirm_user:
        await _retire_affirmed(request, runtime, tokens.access_token)
    response = web.Response(status=302, headers={"Location": transaction.return_to, **pages.MARKER})
    runtime.cookie.set(response, value, max_age=math.floor(lifetime))
    audit.event("login.success", request_id(request), user=user.id, session=fingerprint(tokens.access_token))
    runtime.metrics.logins.labels("success").inc()
    return response


def _login_rules(runtime: Runtime, return_to: str) -> Rules:
    """Who may sign in: the rules of the route the login returns to (its own allow-lists may admit
    someone the global ones do not, for that route only: every other request is judged by its own
    route again), else the global `[authorization]` rules."""
    parts = urlsplit(return_to)
    try:
        path = runtime.targets(parts.path or "/").path
    except AmbiguousTarget:
        return runtime.rules
    route = runtime.route_table.match(parts.netloc or runtime.public_host, "GET", path)
    return route.rules or runtime.rules


async def _retire_affirmed(request: web.Request, runtime: Runtime, new_token: str) -> None:
    """After an affirmation the new session replaces the one that asked for it: that one's token is
    refused from now on (on every replica), so a copy of the old cookie cannot outlive the step-up."""
    old = await load_session(request, runtime)
    if old is None or old.access_token == new_token:
        return
    await runtime.checker.revoke(old.access_token, old.expires_at - runtime.clock())
    await runtime.store.delete(runtime.session_cookie(request) or "")


async def sign_in(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    target = safe_return_url(request.query.get("rd") or request.query.get("return_to"), runtime.redirects)
    return pages.sign_in_page(start_url(runtime, target), request_id(request), runtime.branding)
