"""`POST /api/v1/verify`: exchanging an authorization code for tokens (docs/centralauth.md, step 4).

Accepts exactly what the official clients send: multipart (NPM) and urlencoded (docs, league, Rust)
bodies, optionally JSON; Basic or body client credentials, or none for codes issued to a native app;
`grant_type` is ignored. Once the client has authenticated, naming a code uses it up, whether the
exchange then succeeds or not.
Checks, in order: body fields → client → code known / unexpired → native-app binding → `redirect_uri`
(origin + path; its query is ignored) → PKCE → session still usable. Failures about the code itself
answer `entityInvalid`, as CentralAuth has no dedicated code error.

PKCE: when the code carries a challenge, the verifier must be 36-128 unreserved characters whose
BASE64URL(SHA-256) equals it. 36 is the official library's UUID verifier, below RFC 7636's 43.
Codes without a challenge (direct authentication, autologin deliveries) ignore the verifier, even the
literal `undefined` the library sends when it lost its cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from aiohttp import web

from . import clientauth, tokens
from .bodies import form_fields
from .clock import iso
from .context import Context, context
from .errors import ApiError, no_permission
from .model import AuthCode, Session
from .origins import callback_key, origin_of
from .responses import json_response

_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{36,128}")


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_pkce(code: AuthCode, verifier: str | None) -> None:
    if code.challenge is None:
        return
    if verifier is None or not _VERIFIER.fullmatch(verifier):
        raise ApiError("codeChallengeInvalid", "A code_verifier of 36-128 characters is required")
    if not hmac.compare_digest(challenge_of(verifier), code.challenge):
        raise ApiError("codeChallengeInvalid", "The code_verifier does not match the code challenge")


def _check_native_context(code: AuthCode, request: web.Request, fields: dict[str, str]) -> None:
    # Native apps repeat app_id/device_id on the exchange (the Rust demo in the query); when they do,
    # they must match what the code was issued for. The React Native library omits them.
    for name, bound in (("app_id", code.app_id or ""), ("device_id", code.device_id)):
        sent = request.query.get(name, fields.get(name))
        if sent is not None and sent != bound:
            raise ApiError("entityInvalid", f"{name} does not match the login")


def _usable_session(ctx: Context, code: AuthCode, now: float) -> Session:
    session = ctx.store.sessions.get(code.session_id)
    if session is None:
        raise ApiError("sessionMissing", "The session of this code no longer exists")
    if not session.active:
        raise ApiError("sessionInactive", "The session of this code has ended")
    settings = ctx.settings
    if session.is_expired(now, settings.max_session_time, settings.max_inactivity_time):
        raise ApiError("sessionExpired", "The session of this code has expired")
    return session


def _redeem(ctx: Context, request: web.Request, fields: dict[str, str], authenticated: bool) -> Session:
    now = ctx.clock.now()
    code = ctx.store.take_code(fields["code"])
    if code is None:
        raise ApiError("entityInvalid", "The authorization code is invalid or was already used")
    if now >= code.expires:
        raise ApiError("entityInvalid", "The authorization code has expired")
    if not authenticated and (code.app_id is None or ctx.settings.registration(code.app_id) is None):
        raise no_permission("Client credentials are required")
    _check_native_context(code, request, fields)
    if callback_key(fields["redirect_uri"]) != code.redirect_key:
        raise ApiError("callbackUrlInvalid", "redirect_uri does not match the login request")
    _check_pkce(code, fields.get("code_verifier"))
    session = _usable_session(ctx, code, now)
    # Exchanging the code enables the session for the callback's origin: from now on userinfo
    # accepts that origin as `domain`.
    session.origins.add(origin_of(code.redirect_key) or code.redirect_key)
    session.last_activity = now
    return session


async def verify(request: web.Request) -> web.Response:
    ctx = context(request)
    fields = await form_fields(request)
    authenticated = clientauth.authenticate(request, fields, ctx.settings)
    if not fields.get("code") or not fields.get("redirect_uri"):
        raise ApiError("missingFields", "code and redirect_uri are required")
    session = _redeem(ctx, request, fields, authenticated)
    now = ctx.clock.now()
    expires_at = session.expires_at(ctx.settings.max_session_time)
    access_token, id_token = tokens.mint_pair(ctx.settings.client_secret, session, now, expires_at)
    return json_response(
        {
            "access_token": access_token,
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": None if expires_at is None else max(0, round(expires_at - now)),
            "expires_at": None if expires_at is None else iso(expires_at),
        },
        headers={"Cache-Control": "no-store"},
    )
