"""The fake's organization: CentralAuth's organization settings plus a few fake-only knobs.

Field names are the snake_case forms of CentralAuth's settings (`maxSessionTime` → `max_session_time`),
with the same meaning: 0 disables a time limit, an empty whitelist admits every origin. The defaults
are the fake's choice for new organizations, since CentralAuth's own are unknown.

`apply_changes` applies a runtime change given with CentralAuth's camelCase names, as the control API's
`PATCH /_devidp/settings` receives it; every change builds a new, re-validated settings object.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .origins import callback_key, normalize_whitelist_entry, origin_of

SECRET_LENGTH = 64


def generate_secret() -> str:
    """A fresh 64-character secret: 32 random bytes as hex, a valid A256CBC-HS512 key as UTF-8."""
    return secrets.token_hex(SECRET_LENGTH // 2)


@dataclass(frozen=True)
class AppRegistration:
    """A native app registration: `bundle_id` is what the app sends as `app_id`."""

    type: Literal["mobile", "desktop"]
    bundle_id: str
    app_link: str
    certificate_thumbprint: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ("mobile", "desktop"):
            raise ValueError("appRegistrations: type must be 'mobile' or 'desktop'")
        if not self.bundle_id:
            raise ValueError("appRegistrations: bundleId must not be empty")
        if callback_key(self.app_link) is None:
            raise ValueError("appRegistrations: appLink must be an absolute http(s) URL")


@dataclass
class DevIdpSettings:
    """One organization of the fake CentralAuth, plus the fake-only knobs at the end."""

    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=generate_secret, repr=False)
    whitelist: list[str] = field(default_factory=list)
    max_session_time: int = 0
    max_inactivity_time: int = 0
    enable_user_creation: bool = True
    allow_localhost: bool = True
    check_referrer: bool = True
    hijack_protection: bool = True
    hijack_protection_ip: bool = True
    hijack_protection_user_agent: bool = True
    hijack_protection_device_id: bool = True
    auto_login: bool = False
    app_registrations: list[AppRegistration] = field(default_factory=list)
    # Fake-only: take the browser IP recorded at login from X-Forwarded-For's first entry.
    trust_forwarded_for: bool = False
    # Fake-only: a valid GET /login completes at once as this user (headless tests and demos).
    auto_approve_email: str | None = None
    # Fake-only: lifetime of an authorization code in seconds.
    code_ttl: float = 120.0
    # Fake-only: the base URL advertised by the discovery document; None = the request's own origin.
    public_url: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        if len(self.client_secret) != SECRET_LENGTH or not self.client_secret.isascii():
            raise ValueError(f"client_secret must be exactly {SECRET_LENGTH} ASCII characters")
        self.whitelist = [normalize_whitelist_entry(item) for item in self.whitelist]
        for name in ("max_session_time", "max_inactivity_time"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of seconds >= 0")
        if self.code_ttl <= 0:
            raise ValueError("code_ttl must be positive")
        if self.public_url is not None:
            if origin_of(self.public_url) is None:
                raise ValueError("public_url must be an absolute http(s) URL")
            self.public_url = self.public_url.rstrip("/")

    def registration(self, app_id: str) -> AppRegistration | None:
        return next((app for app in self.app_registrations if app.bundle_id == app_id), None)

    def hijack_checks(self) -> tuple[bool, bool, bool]:
        """Which of (IP, user agent, device id) userinfo compares with the login's values."""
        on = self.hijack_protection
        return (
            on and self.hijack_protection_ip,
            on and self.hijack_protection_user_agent,
            on and self.hijack_protection_device_id,
        )


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _seconds(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number of seconds >= 0")
    return value


def _positive(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return float(value)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _whitelist(value: object) -> list[str]:
    # The management API spells whitelist items as objects `{"value": origin}`; bare strings are
    # accepted too because they are what a test naturally writes.
    if not isinstance(value, list):
        raise ValueError("must be a list of origins")
    items = [item.get("value") if isinstance(item, dict) else item for item in value]
    return [_text(item) for item in items]


def _registrations(value: object) -> list[AppRegistration]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("must be a list of objects")
    try:
        return [
            AppRegistration(
                type=item["type"],
                bundle_id=_text(item["bundleId"]),
                app_link=_text(item["appLink"]),
                certificate_thumbprint=_optional_text(item.get("certificateThumbprint")),
            )
            for item in value
        ]
    except KeyError as missing:
        raise ValueError(f"each item needs {missing}") from None


_CHANGES: dict[str, tuple[str, Callable[[object], object]]] = {
    "clientSecret": ("client_secret", _text),
    "whitelistItems": ("whitelist", _whitelist),
    "maxSessionTime": ("max_session_time", _seconds),
    "maxInactivityTime": ("max_inactivity_time", _seconds),
    "enableUserCreation": ("enable_user_creation", _bool),
    "allowLocalhost": ("allow_localhost", _bool),
    "checkReferrer": ("check_referrer", _bool),
    "hijackProtection": ("hijack_protection", _bool),
    "hijackProtectionIp": ("hijack_protection_ip", _bool),
    "hijackProtectionUserAgent": ("hijack_protection_user_agent", _bool),
    "hijackProtectionDeviceId": ("hijack_protection_device_id", _bool),
    "autoLogin": ("auto_login", _bool),
    "appRegistrations": ("app_registrations", _registrations),
    "trustForwardedFor": ("trust_forwarded_for", _bool),
    "autoApproveEmail": ("auto_approve_email", _optional_text),
    "codeTtl": ("code_ttl", _positive),
    "publicUrl": ("public_url", _optional_text),
}


def apply_changes(settings: DevIdpSettings, changes: Mapping[str, object]) -> DevIdpSettings:
    """A copy of `settings` with camelCase `changes` applied; ValueError names the offending key."""
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in _CHANGES:
            raise ValueError(f"{key}: unknown setting (known: {', '.join(sorted(_CHANGES))})")
        name, convert = _CHANGES[key]
        try:
            updates[name] = convert(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return dataclasses.replace(settings, **updates)


def describe(settings: DevIdpSettings) -> dict[str, object]:
    """The settings under their camelCase names; the client secret is never included."""
    shown: dict[str, object] = {"clientId": settings.client_id}
    for key, (name, _convert) in _CHANGES.items():
        if key == "clientSecret":
            continue
        value = getattr(settings, name)
        if key == "whitelistItems":
            value = [{"value": item} for item in value]
        elif key == "appRegistrations":
            value = [
                {
                    "type": app.type,
                    "bundleId": app.bundle_id,
                    "appLink": app.app_link,
                    "certificateThumbprint": app.certificate_thumbprint,
                }
                for app in value
            ]
        shown[key] = value
    return shown
