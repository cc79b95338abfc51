"""What a signed-in session holds, and its compact serialized form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

# Short keys keep the sealed cookie well under the 4 KB browser limit whatever the token size.
_FIELDS = {"t": "access_token", "u": "user_id", "e": "email", "c": "created_at", "x": "expires_at"}


@dataclass(frozen=True, slots=True)
class Session:
    """A CentralAuth session as the proxy knows it: the token to check, who it was issued to, and when."""

    access_token: str
    user_id: str
    email: str
    created_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def to_bytes(self) -> bytes:
        values = asdict(self)
        return json.dumps(
            {short: values[name] for short, name in _FIELDS.items()}, separators=(",", ":")
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Session | None:
        """Parse what `to_bytes` wrote; None for anything else (sealed data is trusted, not blindly)."""
        try:
            raw: Any = json.loads(data)
            session = cls(**{name: raw[short] for short, name in _FIELDS.items()})
        except (ValueError, TypeError, KeyError):
            return None
        text_ok = all(isinstance(v, str) for v in (session.access_token, session.user_id, session.email))
        numbers_ok = all(isinstance(v, int | float) for v in (session.created_at, session.expires_at))
        return session if text_ok and numbers_ok else None
