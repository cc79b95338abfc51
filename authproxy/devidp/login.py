"""Browser-facing login: `GET /login` (the form), `POST /login` (its submission), `GET /login/link/{id}`.

The form posts back to the very same `/login?...` URL, and the submission re-validates that query
exactly as the GET did, so nothing about the flow is carried in hidden fields. A submitted e-mail
logs the user in (creating the user when `enableUserCreation` is on) and redirects to the callback.
An affirmation login may name another account than the pre-filled one: telling the two apart is the
relying party's job, not CentralAuth's, so the fake does not hide that case from it.
With `auto_approve_email` set, a valid GET completes at once as that user.

`/login/link/{id}?token=...` is the fake's stand-in for the e-mail link of a direct-authentication
attempt: following it finishes the login in that browser (the "local" method) without PKCE binding.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from .bodies import form_fields
from .context import Context, base_url, context
from .errors import ApiError
from .flow import Completion, browser_of, complete_login, error_redirect, find_or_create_user
from .loginquery import LoginProblem, LoginQuery, validate
from .model import is_email
from .origins import origin_of
from .pages import error_page, html_response, login_form


def _own_origins(request: web.Request, ctx: Context) -> set[str]:
    """The fake's own origins: its login form is a legitimate referrer for the form submission."""
    own = (origin_of(str(request.url.origin())), origin_of(base_url(request, ctx)))
    return {origin for origin in own if origin is not None}


def _checked(request: web.Request, ctx: Context) -> LoginQuery | web.Response:
    result = validate(
        request.query,
        ctx.settings,
        referer=request.headers.get("Referer"),
        own_origins=_own_origins(request, ctx),
    )
    if isinstance(result, LoginQuery):
        return result
    return _refusal(result)


def _refusal(problem: LoginProblem) -> web.Response:
    if problem.redirect_uri is None:
        return html_response(error_page(problem.code, problem.message), status=400)
    return error_redirect(problem.redirect_uri, problem.code, problem.message, problem.state)


def _completion(query: LoginQuery) -> Completion:
    return Completion(
        redirect_uri=query.redirect_uri,
        state=query.state,
        challenge=query.challenge,
        app_id=query.app_id,
        affirm=query.affirm,
    )


def _form(
    request: web.Request, query: LoginQuery, *, error: str = "", email: str = "", status: int = 200
) -> web.Response:
    open_sign_up = context(request).settings.enable_user_creation
    page = login_form(query, request.path_qs, error=error, email=email or None, open_sign_up=open_sign_up)
    return html_response(page, status=status, frameable=query.embed)


async def show_form(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    query = _checked(request, ctx)
    if isinstance(query, web.Response):
        return query
    auto_email = ctx.settings.auto_approve_email
    if auto_email:
        user = find_or_create_user(ctx, auto_email)
        if user is not None:
            browser = browser_of(request, ctx.settings, query.device_id)
            return complete_login(ctx, user, browser, _completion(query))
    return _form(request, query)


async def _submitted_email(request: web.Request) -> str:
    try:
        fields = await form_fields(request)
    except ApiError:
        # A garbage body (bad multipart, undecodable bytes) reads as "no e-mail given": the user
        # gets the form again rather than an API error object.
        return ""
    return fields.get("email", "").strip()


async def submit_form(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    query = _checked(request, ctx)
    if isinstance(query, web.Response):
        return query
    email = await _submitted_email(request)
    if not email or not is_email(email):
        return _form(request, query, error="Enter a valid e-mail address.", email=email, status=400)
    user = find_or_create_user(ctx, email)
    if user is None:
        return _form(
            request, query, error="No account exists for this e-mail address.", email=email, status=403
        )
    browser = browser_of(request, ctx.settings, query.device_id)
    return complete_login(ctx, user, browser, _completion(query))


async def follow_link(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    attempt = ctx.store.attempts.get(request.match_info["attempt_id"])
    token = request.query.get("token", "")
    if attempt is None or not hmac.compare_digest(token.encode(), attempt.secret.encode()):
        return html_response(error_page("loginAttemptMissing", "This login link is unknown."), status=400)
    if attempt.used:
        return html_response(
            error_page("loginAttemptInvalid", "This login link was already used."), status=400
        )
    if ctx.clock.now() >= attempt.expires:
        return html_response(error_page("loginAttemptExpired", "This login link has expired."), status=400)
    user = find_or_create_user(ctx, attempt.email)
    if user is None:
        return html_response(
            error_page("noPermission", "No account exists for this e-mail address."), status=403
        )
    attempt.used = True
    completion = Completion(redirect_uri=attempt.redirect_uri, state=attempt.state)
    return complete_login(ctx, user, browser_of(request, ctx.settings), completion)
