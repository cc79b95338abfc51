"""CSRF tokens for the sign-out confirmation form: sealed, short-lived and bound to the session cookie.

Stateless (any worker or replica can check them) and useless to another browser: the token carries a
hash of the session cookie it was issued for.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from authproxy.core.seal import Sealer

PURPOSE = "csrf:sign_out"
TTL = 3600.0


def _binding(cookie_value: str) -> str:
    return hashlib.sha256(cookie_value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def issue(sealer: Sealer, cookie_value: str, now: float) -> str:
    payload = json.dumps({"b": _binding(cookie_value), "t": now}, separators=(",", ":")).encode()
    return sealer.seal(payload, PURPOSE)


def valid(sealer: Sealer, token: str, cookie_value: str, now: float) -> bool:
    plaintext = sealer.unseal(token, PURPOSE)
    if plaintext is None:
        return False
    try:
        data = json.loads(plaintext)
        binding, issued = str(data["b"]), float(data["t"])
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(binding, _binding(cookie_value)) and 0 <= now - issued <= TTL
