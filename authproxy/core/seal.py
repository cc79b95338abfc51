"""AEAD sealing of cookie values with key rotation.

A sealed value is `base64url(version | key id | nonce | AES-256-GCM(ciphertext+tag))`. Keys are derived
with HKDF-SHA256 from the configured cookie secrets: the first secret seals, every secret unseals, so an
operator rotates by prepending a new secret. The cookie's purpose (its name) is bound as associated data,
so a value sealed for one cookie is worthless under another name. Anything that does not open cleanly
— tampered, truncated, foreign key, other name, wrong version, not base64 — unseals to None, never raises.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
_HEADER = 1 + 4 + 12  # version, key id, nonce
_TAG = 16
_INFO_KEY = b"authproxy cookie seal v1"
_INFO_ID = b"authproxy cookie key id v1"


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


class Sealer:
    """Seals and unseals byte strings for one purpose (a cookie name) under a ring of secrets."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one cookie secret is required")
        keys: list[tuple[bytes, AESGCM]] = []
        for secret in secrets:
            material = secret.encode("utf-8")
            keys.append((_hkdf(material, _INFO_ID, 4), AESGCM(_hkdf(material, _INFO_KEY, 32))))
        self._sealing_id, self._sealing_key = keys[0]
        # A short key id picks the right key at once instead of trying every secret on each request.
        self._by_id = dict(reversed(keys))

    def seal(self, plaintext: bytes, purpose: str) -> str:
        nonce = os.urandom(12)
        header = bytes([VERSION]) + self._sealing_id + nonce
        sealed = self._sealing_key.encrypt(nonce, plaintext, header + purpose.encode("utf-8"))
        return base64.urlsafe_b64encode(header + sealed).rstrip(b"=").decode("ascii")

    def unseal(self, value: str, purpose: str) -> bytes | None:
        raw = _b64decode(value)
        if raw is None or len(raw) < _HEADER + _TAG or raw[0] != VERSION:
            return None
        key = self._by_id.get(raw[1:5])
        if key is None:
            return None
        header, body = raw[:_HEADER], raw[_HEADER:]
        try:
            return key.decrypt(raw[5:_HEADER], body, header + purpose.encode("utf-8"))
        except InvalidTag:
            return None


def _b64decode(value: str) -> bytes | None:
    if not value.isascii() or len(value) > 16384:
        return None
    try:
        # validate=True: a character outside the alphabet is tampering, not something to skip over.
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
