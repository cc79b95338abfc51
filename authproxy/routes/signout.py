"""`/sign_out`: end the session here and, when configured, at CentralAuth for every app sharing it.

A sign-out that a third-party page could trigger (an image tag, W4) must not happen: a GET only signs
out with same-origin evidence (`Sec-Fetch-Site`, or a same-origin `Origin`/`Referer`); otherwise it
gets a confirmation page whose POST form carries a CSRF token. A POST needs the token or the evidence.
A failing CentralAuth logout never keeps the local session alive (W5): it is logged and the user told.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from authproxy import audit, csrf, pages
from authproxy.errors import CentralAuthUnavailable, SessionRejected
from authproxy.redirect import safe_return_url
from authproxy.routes.common import request_id
from authproxy.routes.proxy import load_session
from authproxy.runtime import RUNTIME, Runtime

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
    runtime = request.app[RUNTIME]
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
    runtime = request.app[RUNTIME]
    candidate = request.query.get("rd") or request.headers.get("X-Auth-Request-Redirect")
    if candidate is None and form is not None and hasattr(form, "get"):
        value = form.get("rd")
        candidate = value if isinstance(value, str) else None
    return safe_return_url(candidate, runtime.redirects)


async def _confirmation(
    request: web.Request, runtime: Runtime, target: str, cookie_value: str
) -> web.Response:
    token = csrf.issue(runtime.sealer, cookie_value, runtime.clock())
    session = await load_session(request, runtime)
    who = f" as <strong>{escape(session.email)}</strong>" if session else ""
    body = (
        f"<p>You are signed in{who}. Do you want to sign out?</p>"
        f'<form method="post" action="{escape(runtime.prefix)}/sign_out">'
        f'<input type="hidden" name="csrf" value="{escape(token)}">'
        f'<input type="hidden" name="rd" value="{escape(target)}">'
        '<button type="submit">Sign out</button> '
        f'<a href="{escape(target)}">Stay signed in</a></form>'
    )
    return pages.html_page("Sign out", body, request_id=request_id(request), branding=runtime.branding)


async def _sign_out(request: web.Request, runtime: Runtime, target: str, cookie_value: str) -> web.Response:
    rid = request_id(request)
    session = await load_session(request, runtime)
    outcome = "signed_out"
    if session is not None:
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
        response = pages.html_page(
            "Signed out here only",
            f'<p>{escape(message)}</p><p><a class="button" href="{escape(target)}">Continue</a></p>',
            status=200,
            request_id=rid,
            branding=runtime.branding,
        )
    else:
        response = web.Response(status=302, headers={"Location": target, **pages.MARKER})
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
