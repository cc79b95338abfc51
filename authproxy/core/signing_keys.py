"""The assertion signing keys: PEM EC P-256 private keys, read from one file.

The first key signs; every key is published in the JWKS, so a key can be rotated in ahead of use
(added second), promoted (moved first) and retired (removed once no assertion signed with it lives).
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_PEM = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)


def read_signing_keys(data: bytes) -> list[ec.EllipticCurvePrivateKey]:
    """Every private key in `data`, in order; ValueError when there is none or one is not EC P-256."""
    blocks = _PEM.findall(data)
    if not blocks:
        raise ValueError("holds no PEM private key (make one with `authproxy gen-signing-key`)")
    keys = []
    for number, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_private_key(block, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"key {number} cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"key {number} is not an EC P-256 key (ES256 needs one)")
        keys.append(key)
    return keys


def new_signing_key() -> bytes:
    """A fresh EC P-256 private key as PEM (PKCS #8)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
