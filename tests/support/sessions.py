"""A `Session` as the proxy would make one at sign-in, for tests of the stores and what they seal."""

from __future__ import annotations

from typing import Any

from authproxy.session.model import Session

NOW = 1_900_000_000.0  # the fixed wall time of these tests
LIFETIME = 3600.0


def session(**overrides: Any) -> Session:
    """Ada's session, created ten seconds before `NOW` and good for an hour after; fields overridable."""
    values: dict[str, Any] = {
        "access_token": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0..iv.ciphertext.tag",
        "user_id": "6f1c2b9e-0d1e-4c5a-9a57-1d2f3e4a5b6c",
        "email": "ada@example.com",
        "created_at": NOW - 10,
        "expires_at": NOW + LIFETIME,
    }
    values.update(overrides)
    return Session(**values)
