"""`/sign_out`: end the session here and, when configured, at CentralAuth for every app sharing it.

A sign-out that a third-party page could trigger (an image tag) must not happen: a GET only signs
out with same-origin evidence (`Sec-Fetch-Site`, or a same-origin `Origin`/`Referer`); otherwise it
gets a confirmation page whose POST form carries a CSRF token. A POST needs the token or the evidence.
A failing CentralAuth logout never keeps the local session alive: it is logged and the user told.
The session's open websockets and event streams are closed at once (1008), on every replica with Redis.

Where a sign-out ends: a valid `rd` (or `X-Auth-Request-Redirect`) gets its 302 as before, for apps that
send their users somewhere of their own. Without one, or with one that is refused, the 302 goes to
`/signed_out`, a page that says so and offers to sign in again, instead of to `/`, which would start a
new login at once and look as if the sign-out had not worked. `/signed_out?rd=URL` signs in again to
`URL`: an app that wants both sends `rd=/oauth2/signed_out?rd=/its/page`.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from authproxy import audit, pages
from authproxy.context import RUNTIME, request_id
from authproxy.core import csrf
from authproxy.core.redirect import safe_return_url
from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.gate import load_session, start_url
from authproxy.runtime import Runtime
from authproxy.watch import token_digest

log = structlog.get_logger("authproxy.logout")


def same_origin(request: web.Request, runtime: Runtime) -> bool:
    """Evidence that the request comes from the proxy's own pages (or was typed by the user)."""
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site:
        return fetch_site in ("same-origin", "none")
    own = runtime.redirects.public_url
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value:
            try:
                parts = urlsplit(value)
            except ValueError:  # not a URL at all ("http://["): no evidence, and no 500
                return False
            return f"{parts.scheme}://{parts.netloc}".lower() == own.lower()
    return False


async def sign_out(request: web.Request) -> web.StreamResponse:
    runtime = request[RUNTIME]
    form = await request.post() if request.method == "POST" else None
    target = _target(request, form)
    cookie_value = request.cookies.get(runtime.cookie.name, "")
    evidence = same_origin(request, runtime)
    if form is not None and not evidence:
        token = form.get("csrf")
        if not isinstance(token, str) or not csrf.valid(runtime.sealer, token, cookie_value, runtime.clock()):
            message = "This sign-out request did not come from this site. Nothing was changed."
            return pages.error_page(
                403, "Sign-out refused", message, request_id(request), branding=runtime.branding
            )
    elif form is None and not evidence:
        return await _confirmation(request, runtime, target, cookie_value)
    return await _sign_out(request, runtime, target, cookie_value)


def _target(request: web.Request, form: object) -> str:
    """The validated return URL, or "" when none was given or the one given is refused."""
    runtime = request[RUNTIME]
    candidate = request.query.get("rd") or request.headers.get("X-Auth-Request-Redirect")
    if candidate is None and form is not None and hasattr(form, "get"):
        value = form.get("rd")
        candidate = value if isinstance(value, str) else None
    return safe_return_url(candidate, runtime.redirects, fallback="")


def _signed_out_url(runtime: Runtime, target: str) -> str:
    """Where a sign-out goes: its return URL, or the signed-out page."""
    return target or f"{runtime.prefix}/signed_out"


async def signed_out(request: web.Request) -> web.Response:
    """`GET /signed_out?rd=URL`: "You are signed out", and a button that signs in again to `URL`."""
    runtime = request[RUNTIME]
    target = safe_return_url(request.query.get("rd"), runtime.redirects)
    return pages.signed_out_page(
        start_url(runtime, target),
        request_id(request),
        session_wide=runtime.config.centralauth.logout_session_wide,
        branding=runtime.branding,
    )


async def _confirmation(
    request: web.Request, runtime: Runtime, target: str, cookie_value: str
) -> web.Response:
    token = csrf.issue(runtime.sealer, cookie_value, runtime.clock())
    session = await load_session(request, runtime)
    if session is not None:
        question = f"You are signed in as <strong>{escape(session.email)}</strong>. Do you want to sign out?"
    else:
        # A cross-site link can lead here without any session: the page claims none.
        question = "Do you want to sign out of this application?"
    if runtime.config.centralauth.logout_session_wide:
        scope = (
            "Signing out also ends your CentralAuth session, which signs you out of every application "
            "that uses CentralAuth."
        )
    else:
        scope = "Signing out ends your session in this application only; other applications stay signed in."
    # Only a return URL that was given is carried on: without one, the sign-out ends on its own page.
    carried = f'<input type="hidden" name="rd" value="{escape(target)}">' if target else ""
    body = (
        f"<p>{question}</p>"
        f'<p class="note">{escape(scope)}</p>'
        f'<form method="post" action="{escape(runtime.prefix)}/sign_out" class="actions">'
        f'<input type="hidden" name="csrf" value="{escape(token)}">{carried}'
        '<button type="submit">Sign out</button>'
        f'<a class="button secondary" href="{escape(target or "/")}">Stay signed in</a></form>'
    )
    return pages.html_page("Sign out", body, request_id=request_id(request), branding=runtime.branding)


async def _sign_out(request: web.Request, runtime: Runtime, target: str, cookie_value: str) -> web.Response:
    rid = request_id(request)
    session = await load_session(request, runtime)
    outcome = "signed_out"
    if session is not None:
        # Its websockets and event streams close now, here; on other replicas when the revocation below
        # reaches them.
        runtime.connections.end_session(token_digest(session.access_token), "signed out")
        # Dead here and on every replica, so a copy of the cookie is refused without asking CentralAuth.
        await runtime.checker.revoke(session.access_token, session.expires_at - runtime.clock())
        await runtime.store.delete(cookie_value)
        if runtime.config.centralauth.logout_session_wide:
            outcome = await _central_logout(runtime, session.access_token, rid)
    audit.event("logout", rid, outcome=outcome, user=session.user_id if session else None)
    runtime.metrics.logouts.labels(outcome).inc()
    if outcome == "central_failed":
        message = (
            "You are signed out here, but the central CentralAuth session could not be ended. "
            "Other applications may still be signed in."
        )
        onward = (
            pages.Action(target, "Continue")
            if target
            else pages.Action(start_url(runtime, "/"), "Sign in again", to_sign_in=True)
        )
        response = pages.html_page(
            "Signed out here only",
            f"<p>{escape(message)}</p>{pages.action_links((onward,))}",
            status=200,
            request_id=rid,
            branding=runtime.branding,
        )
    else:
        location = _signed_out_url(runtime, target)
        response = web.Response(status=302, headers={"Location": location, **pages.MARKER})
    runtime.cookie.clear(response)
    return response


async def _central_logout(runtime: Runtime, token: str, rid: str) -> str:
    """End the CentralAuth session; one retry on an outage. Returns the audit outcome."""
    for attempt in (1, 2):
        try:
            await runtime.provider.logout(token)
            return "signed_out_everywhere"
        except SessionRejected as exc:
            # Already ended (or unknown) at CentralAuth: nothing left to end there.
            log.info("logout.central_rejected", error_code=exc.error_code, request_id=rid)
            return "signed_out_everywhere"
        except CentralAuthUnavailable as exc:
            log.warning("logout.central_failed", attempt=attempt, detail=exc.detail, request_id=rid)
    return "central_failed"
