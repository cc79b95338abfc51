"""The login transaction: state, PKCE verifier and return URL, sealed into a cookie named after its state.

One cookie per pending login means several tabs can sign in at once without clobbering each other's
verifier, as they do with the official library's one `code_verifier` cookie for all logins. The
cookie's path is the proxy prefix, so it never rides along on application requests; it lives ten
minutes and is used once.

Only names of the exact shape this module writes (the prefix and a 43-character state) are ever treated
as pending logins. Anyone who can plant cookies for the host can plant others under the prefix, with
names no `Set-Cookie` can carry (`(`, spaces, non-ASCII); those are neither counted, opened nor expired,
so they can never turn a login into an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from authproxy.core.seal import Sealer

TTL = 600.0
MAX_PENDING = 5
STATE_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes, base64url without padding


@dataclass(frozen=True, slots=True)
class LoginTransaction:
    state: str
    verifier: str
    return_to: str
    created_at: float
    # For an affirmation (step-up) login: the user id the affirmed account must have. It is recorded
    # here, never read from the callback's `affirm=1`, which anyone can add to a URL.
    affirm_user: str = ""

    @classmethod
    def new(cls, return_to: str, now: float, affirm_user: str = "") -> LoginTransaction:
        # 256-bit state and a 43-character verifier: the RFC 7636 minimum that the official library misses.
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), return_to, now, affirm_user)

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class TransactionCookies:
    """Names, seals and opens the per-login cookies of one proxy instance."""

    def __init__(self, sealer: Sealer, cookie_name: str, *, secure: bool) -> None:
        self._sealer = sealer
        # __Secure- makes browsers refuse the cookie from plain http or from a script on http pages.
        self.prefix = f"{'__Secure-' if secure else ''}{cookie_name}_login_"

    def name(self, state: str) -> str:
        return self.prefix + state

    def name_for(self, state: str | None) -> str | None:
        """The cookie name for a state from a request, or None when `state` is not one this proxy makes."""
        return self.prefix + state if state is not None and STATE_RE.fullmatch(state) else None

    def state_of(self, name: str) -> str | None:
        """The state a pending-login cookie is named after, or None for any other cookie name."""
        if not name.startswith(self.prefix):
            return None
        state = name[len(self.prefix) :]
        return state if STATE_RE.fullmatch(state) else None

    def seal(self, transaction: LoginTransaction) -> str:
        payload = json.dumps(asdict(transaction), separators=(",", ":")).encode()
        return self._sealer.seal(payload, self.name(transaction.state))

    def open(self, state: str | None, cookies: Mapping[str, str], now: float) -> LoginTransaction | None:
        """The pending transaction for `state`, or None if absent, foreign, tampered or expired."""
        name = self.name_for(state)
        if name is None:
            return None
        value = cookies.get(name)
        plaintext = self._sealer.unseal(value, name) if value else None
        transaction = _parse(plaintext) if plaintext else None
        if transaction is None or transaction.state != state:
            return None
        if not 0 <= now - transaction.created_at <= TTL:
            return None
        return transaction

    def surplus(self, cookies: Mapping[str, str], now: float) -> list[str]:
        """Names of pending-login cookies to delete so that a new one stays within MAX_PENDING.

        Unreadable and expired ones go first. Every name returned has the shape `name()` makes, so a
        `Set-Cookie` can always carry it.
        """
        pending = []
        for name in cookies:
            state = self.state_of(name)
            if state is not None:
                transaction = self.open(state, cookies, now)
                pending.append((transaction.created_at if transaction else float("-inf"), name))
        pending.sort()
        keep = MAX_PENDING - 1
        return [name for _, name in pending[: max(0, len(pending) - keep)]]


def _parse(plaintext: bytes) -> LoginTransaction | None:
    """The transaction `seal` wrote, or None for any other shape (another version's, mid-deploy)."""
    try:
        transaction = LoginTransaction(**json.loads(plaintext))
    except (ValueError, TypeError):
        return None
    text_ok = all(
        isinstance(v, str)
        for v in (transaction.state, transaction.verifier, transaction.return_to, transaction.affirm_user)
    )
    time_ok = isinstance(transaction.created_at, int | float) and not isinstance(transaction.created_at, bool)
    return transaction if text_ok and time_ok else None
