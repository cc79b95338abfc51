"""Completing a login: the session, its code(s) and the way back to the relying party.

Shared by the login form, auto-approve mode and direct-authentication links. The browser's IP, user
agent and device id are recorded on the new session as the reference values for hijack checks.

Autologin (an invented model; CentralAuth's real mechanism is not documented): when the organization
has `autoLogin` on, each *other* non-wildcard whitelisted origin gets its own code (no PKCE binding,
same session) delivered to `<origin><same callback path>?code=...&state=<same state>`. The browser
gets a page that loads those deliveries in hidden iframes and then continues to the primary callback;
without other origins it is a plain 302. Deliveries are listed by `GET /_devidp/autologin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from .context import Context
from .model import AutologinDelivery, Session, User
from .origins import append_query, callback_key, is_wildcard, origin_of
from .pages import autologin_page, html_response
from .settings import DevIdpSettings


@dataclass(frozen=True)
class Browser:
    """What CentralAuth saw of the browser that finished the login."""

    ip: str
    user_agent: str
    device_id: str = ""


@dataclass(frozen=True)
class Completion:
    """Where the login goes back to and what the code is bound to."""

    redirect_uri: str
    state: str
    challenge: str | None = None
    app_id: str | None = None
    affirm: bool = False


def browser_of(request: web.Request, settings: DevIdpSettings, device_id: str = "") -> Browser:
    ip = request.remote or ""
    if settings.trust_forwarded_for:
        first = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
        ip = first or ip
    return Browser(ip=ip, user_agent=request.headers.get("User-Agent", ""), device_id=device_id)


def redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def error_redirect(redirect_uri: str, code: str, message: str, state: str) -> web.Response:
    params = [("error", code), ("error_description", message)]
    if state:
        params.append(("state", state))
    return redirect(append_query(redirect_uri, params))


def find_or_create_user(ctx: Context, email: str) -> User | None:
    """The user for an e-mail, created when the organization allows sign-up; None otherwise."""
    user = ctx.store.find_user(email)
    if user is None and ctx.settings.enable_user_creation:
        # Signing in through an e-mail code or link proves the address.
        user = ctx.store.create_user(email, ctx.settings.client_id, ctx.clock.now(), verified=True)
    return user


def complete_login(ctx: Context, user: User, browser: Browser, completion: Completion) -> web.Response:
    now = ctx.clock.now()
    session = ctx.store.start_session(
        user, now, ip=browser.ip, user_agent=browser.user_agent, device_id=browser.device_id
    )
    user.last_login = now
    ctx.recorder.count("login")
    code = ctx.store.issue_code(
        session,
        now,
        ctx.settings.code_ttl,
        redirect_key=callback_key(completion.redirect_uri) or completion.redirect_uri,
        challenge=completion.challenge,
        app_id=completion.app_id,
        device_id=browser.device_id,
    )
    params = [("code", code.value), ("state", completion.state)]
    if completion.affirm:
        params.append(("affirm", "1"))
    primary = append_query(completion.redirect_uri, params)
    deliveries = _autologin(ctx, session, completion) if ctx.settings.auto_login else []
    if not deliveries:
        return redirect(primary)
    return html_response(autologin_page(primary, [delivery.url for delivery in deliveries]))


def _autologin(ctx: Context, session: Session, completion: Completion) -> list[AutologinDelivery]:
    primary_origin = origin_of(completion.redirect_uri)
    path = urlsplit(completion.redirect_uri).path or "/"
    now = ctx.clock.now()
    deliveries = []
    for origin in ctx.settings.whitelist:
        if is_wildcard(origin) or origin == primary_origin:
            continue
        code = ctx.store.issue_code(session, now, ctx.settings.code_ttl, redirect_key=origin + path)
        url = append_query(origin + path, [("code", code.value), ("state", completion.state)])
        delivery = AutologinDelivery(session_id=session.id, origin=origin, url=url, created=now)
        ctx.store.record_delivery(delivery)
        deliveries.append(delivery)
    return deliveries
