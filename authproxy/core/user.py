"""The CentralAuth User object as the proxy needs it, parsed defensively from userinfo JSON."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    verified: bool
    blocked: bool
    organization_id: str | None
    affirmation_date: str | None

    @classmethod
    def from_json(cls, data: Any) -> User | None:
        """A User from a userinfo body, or None when the body is not one (treated as an outage)."""
        if not isinstance(data, dict):
            return None
        user_id, email = data.get("id"), data.get("email")
        if not isinstance(user_id, str) or not user_id or not isinstance(email, str) or not email:
            return None
        organization = data.get("organizationId")
        affirmed = data.get("affirmationDate")
        return cls(
            id=user_id,
            email=email,
            # Odd flag values are read in the safe direction: only a real true verifies, anything
            # truthy blocks.
            verified=data.get("verified") is True,
            blocked=bool(data.get("blocked")),
            # One string per organization, not one per cached user.
            organization_id=sys.intern(organization) if isinstance(organization, str) else None,
            affirmation_date=affirmed if isinstance(affirmed, str) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The user as plain JSON data, for a cache shared with other processes (`from_dict` reads it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> User | None:
        """A User from `to_dict`'s output, or None for anything else (a shared cache is read warily)."""
        if not isinstance(data, dict) or set(data) != _FIELDS:
            return None
        strings = all(isinstance(data[name], str) for name in ("id", "email"))
        flags = all(isinstance(data[name], bool) for name in ("verified", "blocked"))
        optional = all(data[name] is None or isinstance(data[name], str) for name in _OPTIONAL)
        return cls(**data) if strings and flags and optional else None


_FIELDS = {field.name for field in fields(User)}
_OPTIONAL = ("organization_id", "affirmation_date")
