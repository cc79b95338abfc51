"""`POST /api/v1/authenticate_direct`: e-mail login without the hosted page.

Takes Basic credentials and a JSON body `{email, redirect_uri, state, translations?}` and answers the
login-attempt object `{loginAttemptId, token, sentence, allowedDate}`. Instead of sending an e-mail
the fake keeps the login link, `GET /login/link/{loginAttemptId}?token=...`, and lists it through
`GET /_devidp/login-links`. Following the link completes the login in that browser with `code` and
`state` on `redirect_uri`; the code has no PKCE binding, as direct authentication sends no challenge.
`translations` only shape the e-mail, which the fake never sends, so they are accepted and ignored.

`token` is the SHA-256 of the link's secret, never the secret itself. Repeated attempts for one
address back off: each `allowedDate` lies further ahead (10 s, doubling, at most 5 min), and an attempt
before it answers 429 `tooManyRequests`. Links expire after 15 minutes and work once.
"""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web

from . import clientauth
from .bodies import json_object
from .clock import iso
from .context import context
from .errors import ApiError
from .loginquery import callback_allowed
from .model import LoginAttempt, is_email
from .responses import json_response

_WORDS = (
    ("amber", "brave", "calm", "eager", "gentle", "lucky", "quiet", "rapid", "silver", "sunny"),
    ("otter", "falcon", "maple", "harbor", "comet", "meadow", "lantern", "pebble", "river", "tiger"),
    ("dances", "whistles", "wanders", "sings", "glows", "drifts", "hums", "leaps", "rests", "waves"),
)


def login_link(base_url: str, attempt: LoginAttempt) -> str:
    return f"{base_url}/login/link/{attempt.id}?token={attempt.secret}"


def _text_field(data: dict[str, object], name: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        raise ApiError("missingFields", f"{name} is required")
    if not isinstance(value, str):
        raise ApiError("entityInvalid", f"{name} must be a string")
    return value


async def authenticate_direct(request: web.Request) -> web.Response:
    ctx = context(request)
    clientauth.require_basic(request, ctx.settings)
    data = await json_object(request)
    email, redirect_uri = _text_field(data, "email").strip(), _text_field(data, "redirect_uri")
    state = data.get("state")
    if not isinstance(state, str) or not state:
        raise ApiError("stateMissing", "state is required")
    if not is_email(email):
        raise ApiError("entityInvalid", "email is not a valid e-mail address")
    if not callback_allowed(redirect_uri, ctx.settings):
        raise ApiError("callbackUrlInvalid", "redirect_uri is invalid or not whitelisted")
    now = ctx.clock.now()
    allowed_at = ctx.store.retry_allowed_at(email)
    if allowed_at is not None and now < allowed_at:
        raise ApiError("tooManyRequests", f"Try again after {iso(allowed_at)}", 429)
    attempt = ctx.store.open_attempt(email, redirect_uri, state, now)
    next_allowed = ctx.store.retry_allowed_at(email) or now
    return json_response(
        {
            "loginAttemptId": attempt.id,
            "token": hashlib.sha256(attempt.secret.encode()).hexdigest(),
            "sentence": " ".join(secrets.choice(words) for words in _WORDS),
            "allowedDate": iso(next_allowed),
        }
    )
