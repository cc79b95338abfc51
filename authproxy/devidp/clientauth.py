"""Back-channel client authentication: HTTP Basic with the raw `client_id:client_secret`, or body fields.

CentralAuth's Basic credentials are the raw concatenation of id and secret (no form-encoding of the
parts), so the header value is split at its first colon. A malformed header is a failed
authentication (`noPermission`, 403), never a crash. An unknown client id answers
`organizationIdMissing` with 404, the status CentralAuth's API uses for unknown entities.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .errors import no_permission, unknown_organization
from .settings import DevIdpSettings


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str


def parse_basic(header: str) -> Credentials:
    """Credentials from an `Authorization: Basic ...` value; ApiError(noPermission) if malformed."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise no_permission("Authorization must be Basic client credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:
        # binascii.Error and UnicodeDecodeError are both ValueErrors.
        raise no_permission("Malformed Basic credentials") from None
    client_id, colon, client_secret = decoded.partition(":")
    if not colon:
        raise no_permission("Malformed Basic credentials")
    return Credentials(client_id, client_secret)


def check(credentials: Credentials, settings: DevIdpSettings) -> None:
    """Raises unless the credentials are this organization's id and active secret."""
    if not credentials.client_id or credentials.client_id != settings.client_id:
        raise unknown_organization()
    if not hmac.compare_digest(credentials.client_secret.encode(), settings.client_secret.encode()):
        raise no_permission()


def require_basic(request: web.Request, settings: DevIdpSettings) -> None:
    """Userinfo, logout and direct authentication accept only Basic credentials."""
    header = request.headers.get("Authorization")
    if header is None:
        raise no_permission("Client credentials are required")
    check(parse_basic(header), settings)


def authenticate(request: web.Request, form: Mapping[str, str], settings: DevIdpSettings) -> bool:
    """Verify's client authentication: True when authenticated, False when no credentials were sent.

    The Authorization header wins over body fields. A body `client_id` without a secret is how public
    clients (the Rust oauth2 crate) identify themselves; such an exchange, like one with no
    credentials at all, is allowed later only for codes issued to a native app.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        check(parse_basic(header), settings)
        return True
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    if client_secret is not None:
        check(Credentials(client_id or "", client_secret), settings)
        return True
    if client_id is not None and client_id != settings.client_id:
        raise unknown_organization()
    return False
