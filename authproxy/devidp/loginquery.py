"""Validation of the `/login` query (docs/centralauth.md, step 1), shared by the form and its submission.

Errors come in two kinds. When the client or the callback cannot be trusted (unknown `client_id`,
missing, malformed or non-whitelisted `redirect_uri`, unknown `app_id`), redirecting would be an open
redirect, so the user gets an HTML error page (400). Every other problem is sent back to the callback
as `error`, `error_description` and `state`, OAuth-style.

Optional parameters are decoded defensively: undecodable `translations` or `theme_settings` are
ignored, never an error. `client_assertion` (desktop attestation) is accepted and not verified, and
unknown parameters (`scope`, `approval_prompt`, ...) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .errors import ErrorCode
from .origins import callback_key, is_whitelisted, origin_of
from .settings import AppRegistration, DevIdpSettings

CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_COLOR = re.compile(r"#[0-9A-Fa-f]{3,8}")
_THEME_COLORS = ("primaryColor", "backgroundColor", "contentColor", "neutralColor")
_MAX_UI_TEXT = 2000


@dataclass(frozen=True)
class LoginQuery:
    """A validated `/login` request."""

    redirect_uri: str
    state: str
    challenge: str
    app_id: str | None = None
    device_id: str = ""
    email: str = ""
    message: str = ""
    affirm: bool = False
    embed: bool = False
    translations: dict[str, str] = field(default_factory=dict)
    colors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoginProblem:
    """Why a `/login` request is refused; `redirect_uri` None means "show an error page"."""

    code: ErrorCode
    message: str
    redirect_uri: str | None = None
    state: str = ""


def decode_b64_json(value: str) -> dict[str, object]:
    """A base64-encoded JSON object, or {} for anything else (bad padding, bad JSON, not an object)."""
    try:
        compact = value.strip()
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=b"-_")
        decoded = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _texts(data: Mapping[str, object]) -> dict[str, str]:
    return {key: value[:_MAX_UI_TEXT] for key, value in data.items() if isinstance(value, str)}


def _colors(data: Mapping[str, object]) -> dict[str, str]:
    # Only plain hex colours are used: the values end up in a style attribute.
    return {
        key: value
        for key in _THEME_COLORS
        if isinstance(value := data.get(key), str) and _COLOR.fullmatch(value)
    }


def callback_allowed(redirect_uri: str, settings: DevIdpSettings, app: AppRegistration | None = None) -> bool:
    """Whether a callback URL may receive codes: whitelisted origin, localhost rule, or an app link."""
    origin = origin_of(redirect_uri)
    if origin is None or callback_key(redirect_uri) is None:
        return False
    if app is not None and callback_key(redirect_uri) == callback_key(app.app_link):
        return True
    return is_whitelisted(origin, settings.whitelist, allow_localhost=settings.allow_localhost)


def _referrer_allowed(referer: str | None, settings: DevIdpSettings, own_origins: Collection[str]) -> bool:
    # No Referer (typed URL, `Referrer-Policy: no-referrer`) is allowed: the real behaviour is unknown
    # and refusing would break every RP that hides its referrer.
    if not settings.check_referrer or not referer:
        return True
    origin = origin_of(referer)
    if origin is None:
        return False
    if origin in own_origins:
        return True
    return is_whitelisted(origin, settings.whitelist, allow_localhost=settings.allow_localhost)


def _trust_problem(query: Mapping[str, str], settings: DevIdpSettings) -> LoginProblem | None:
    """Problems that make the callback itself untrustworthy: shown on a page, never redirected."""
    client_id = query.get("client_id", "")
    if not client_id or client_id != settings.client_id:
        return LoginProblem("organizationIdMissing", "The organization (client_id) is missing or unknown.")
    app_id = query.get("app_id") or None
    app = settings.registration(app_id) if app_id else None
    if app_id and app is None:
        return LoginProblem("entityInvalid", "The app_id does not match any app registration.")
    redirect_uri = query.get("redirect_uri", "")
    if not redirect_uri:
        return LoginProblem("callbackUrlMissing", "The callback URL (redirect_uri) is missing.")
    if not callback_allowed(redirect_uri, settings, app):
        return LoginProblem("callbackUrlInvalid", "The callback URL is invalid or not whitelisted.")
    return None


def _flow_problem(
    query: Mapping[str, str], settings: DevIdpSettings, referer: str | None, own_origins: Collection[str]
) -> tuple[ErrorCode, str] | None:
    """Problems reported back to the (trusted) callback."""
    response_type = query.get("response_type")
    if not response_type:
        return "missingFields", "response_type is missing."
    if response_type != "code":
        return "entityInvalid", "response_type must be 'code'."
    if not query.get("state"):
        return "stateMissing", "The state parameter is missing."
    challenge = query.get("code_challenge")
    if not challenge:
        return "codeChallengeMissing", "The PKCE code_challenge is missing."
    if query.get("code_challenge_method") != "S256" or not CHALLENGE.fullmatch(challenge):
        return "codeChallengeInvalid", "The code challenge must be 43 base64url characters with method S256."
    if not _referrer_allowed(referer, settings, own_origins):
        return "domainInvalid", "The referring page is not on a whitelisted domain."
    return None


def validate(
    query: Mapping[str, str],
    settings: DevIdpSettings,
    *,
    referer: str | None,
    own_origins: Collection[str],
) -> LoginQuery | LoginProblem:
    problem = _trust_problem(query, settings)
    if problem is not None:
        return problem
    redirect_uri, state = query["redirect_uri"], query.get("state", "")
    flow_problem = _flow_problem(query, settings, referer, own_origins)
    if flow_problem is not None:
        return LoginProblem(*flow_problem, redirect_uri=redirect_uri, state=state)
    return LoginQuery(
        redirect_uri=redirect_uri,
        state=state,
        challenge=query["code_challenge"],
        app_id=query.get("app_id") or None,
        device_id=query.get("device_id", ""),
        email=query.get("email", "")[:_MAX_UI_TEXT],
        # The library sends `error_description`; the docs (and the library before 2025-09) `error_message`.
        message=(query.get("error_description") or query.get("error_message") or "")[:_MAX_UI_TEXT],
        affirm=query.get("affirm") == "1",
        embed=query.get("embed") == "1",
        translations=_texts(decode_b64_json(query.get("translations", ""))),
        colors=_colors(decode_b64_json(query.get("theme_settings", ""))),
    )
