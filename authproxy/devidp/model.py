"""The fake's records: users, sessions, authorization codes, direct-auth login attempts, autologin deliveries.

Plain dataclasses with the rules that belong to a single record (a session's expiry, a user's JSON);
`store.Store` keeps the collections. Times are epoch seconds on the fake's clock and become ISO strings
only on the way out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

from .clock import iso

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_MAX_EMAIL = 254


def is_email(value: str) -> bool:
    """A deliberately loose check: one `@`, no whitespace, at most 254 characters."""
    return len(value) <= _MAX_EMAIL and _EMAIL.fullmatch(value) is not None


def gravatar_url(email: str) -> str:
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return f"https://www.gravatar.com/avatar/{digest}"


def _iso_or_none(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso(timestamp)


@dataclass
class User:
    id: str
    email: str
    organization_id: str
    created: float
    updated: float
    verified: bool = True
    blocked: bool = False
    last_login: float | None = None

    def to_json(self, affirmation_date: float | None = None) -> dict[str, object]:
        """The User object of a userinfo answer; `affirmationDate` is the session's, when one is given."""
        body: dict[str, object] = {
            "id": self.id,
            "email": self.email,
            "gravatar": gravatar_url(self.email),
            "verified": self.verified,
            "blocked": self.blocked,
            "organizationId": self.organization_id,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "lastLogin": _iso_or_none(self.last_login),
        }
        if affirmation_date is not None:
            body["affirmationDate"] = iso(affirmation_date)
        return body


SessionEnd = Literal["logout", "revoked", "hijack"]


@dataclass
class Session:
    """A CentralAuth session: reference values for hijack checks and the origins it is activated for."""

    id: str
    user: User
    created: float
    last_activity: float
    ip: str
    user_agent: str
    device_id: str
    affirmation_date: float
    origins: set[str] = field(default_factory=set)
    ended: SessionEnd | None = None

    @property
    def active(self) -> bool:
        return self.ended is None

    def expires_at(self, max_session_time: int) -> float | None:
        return self.created + max_session_time if max_session_time > 0 else None

    def is_expired(self, now: float, max_session_time: int, max_inactivity_time: int) -> bool:
        expires_at = self.expires_at(max_session_time)
        if expires_at is not None and now >= expires_at:
            return True
        return max_inactivity_time > 0 and now >= self.last_activity + max_inactivity_time

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "userId": self.user.id,
            "email": self.user.email,
            "created": iso(self.created),
            "lastActivity": iso(self.last_activity),
            "affirmationDate": iso(self.affirmation_date),
            "active": self.active,
            "ended": self.ended,
            "ip": self.ip,
            "userAgent": self.user_agent,
            "deviceId": self.device_id,
            "origins": sorted(self.origins),
        }


@dataclass
class AuthCode:
    """An authorization code: single use, short-lived, bound to everything verify must re-check."""

    value: str
    session_id: str
    redirect_key: str
    expires: float
    challenge: str | None = None
    app_id: str | None = None
    device_id: str = ""


@dataclass
class LoginAttempt:
    """A direct-authentication attempt; following its link completes the login (no PKCE binding)."""

    id: str
    secret: str
    email: str
    redirect_uri: str
    state: str
    created: float
    expires: float
    used: bool = False

    def to_json(self, link: str) -> dict[str, object]:
        return {
            "loginAttemptId": self.id,
            "email": self.email,
            "redirectUri": self.redirect_uri,
            "state": self.state,
            "link": link,
            "created": iso(self.created),
            "expires": iso(self.expires),
            "used": self.used,
        }


@dataclass(frozen=True)
class AutologinDelivery:
    """One autologin callback the fake sent to another whitelisted origin."""

    session_id: str
    origin: str
    url: str
    created: float

    def to_json(self) -> dict[str, object]:
        return {
            "sessionId": self.session_id,
            "origin": self.origin,
            "url": self.url,
            "created": iso(self.created),
        }
