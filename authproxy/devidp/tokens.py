"""Access and id tokens: compact JWE, `dir` + `A256CBC-HS512`, keyed with the client secret's UTF-8 bytes.

This is the format the official library decrypts with jose's `jwtDecrypt(token, utf8(secret))`, and
the `access_token` of docs/centralauth.md. joserfc serialises the protected header compactly with
`alg` first, exactly `{"alg":"dir","enc":"A256CBC-HS512"}`, the bytes jose itself would emit. The
payload is written with compact separators for the same reason.
"""

from __future__ import annotations

import functools
import json

from joserfc import jwe
from joserfc.jwk import OctKey

from .model import Session

PROTECTED_HEADER = {"alg": "dir", "enc": "A256CBC-HS512"}
_ALGORITHMS = ["dir", "A256CBC-HS512"]


def _key(secret: str) -> OctKey:
    return OctKey.import_key(secret.encode())


def encrypt(secret: str, payload: dict[str, object]) -> str:
    plaintext = json.dumps(payload, separators=(",", ":")).encode()
    return jwe.encrypt_compact(PROTECTED_HEADER, plaintext, _key(secret))


def mint_pair(secret: str, session: Session, now: float, expires_at: float | None) -> tuple[str, str]:
    """(access token, id token) for a session. `exp` only exists when the session has a hard limit."""
    claims: dict[str, object] = {"sessionId": session.id, "iat": int(now)}
    if expires_at is not None:
        claims["exp"] = int(expires_at)
    user = session.user.to_json(session.affirmation_date)
    return encrypt(secret, claims), encrypt(secret, {**claims, "user": user})


@functools.lru_cache(maxsize=10_000)
def session_id_of(secret: str, token: str) -> str | None:
    """The `sessionId` of a token minted with this secret, or None for anything else.

    Garbage, truncated tokens, other algorithms and tokens of another organization (another secret)
    all end up here as None; callers answer `tokenInvalid`. Remembered for the 10,000 most recent
    (secret, token) pairs: a token's content never changes, and decrypting one costs ~40 us, which
    made the fake, not the proxy, the busiest process when benchmarks ask it about every request.
    """
    try:
        plaintext = jwe.decrypt_compact(token, _key(secret), algorithms=_ALGORITHMS).plaintext
        payload = json.loads(plaintext or b"")
    # joserfc raises a zoo of exception types on malformed input (its own errors, ValueError,
    # binascii and JSON errors); every one of them means the same thing here.
    except Exception:
        return None
    session_id = payload.get("sessionId") if isinstance(payload, dict) else None
    return session_id if isinstance(session_id, str) else None
