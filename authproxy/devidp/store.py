"""In-memory collections of the fake: users by e-mail, sessions, codes, login attempts, autologin deliveries.

A single asyncio loop owns the store, so no locking is needed. Expired codes are pruned whenever a new
one is issued. Sessions are kept after they end so that later userinfo calls can say *why* a session
no longer works (`sessionInactive` rather than `sessionMissing`); login attempts are kept so tests can
list their links.
"""

from __future__ import annotations

import secrets
import uuid
from collections import deque
from dataclasses import dataclass

from .model import AuthCode, AutologinDelivery, LoginAttempt, Session, SessionEnd, User

# Direct authentication: the first retry is allowed after this many seconds, doubling on each repeat.
DIRECT_AUTH_BACKOFF = 10.0
DIRECT_AUTH_BACKOFF_MAX = 300.0
# CentralAuth's e-mail links expire after 15 minutes.
LOGIN_LINK_TTL = 15 * 60.0
# Only the latest autologin deliveries are kept; tests look at the last few.
DELIVERIES_KEPT = 1000


def _user_key(email: str) -> str:
    return email.strip().lower()


@dataclass
class _Backoff:
    attempts: int
    allowed_after: float


class Store:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.sessions: dict[str, Session] = {}
        self.codes: dict[str, AuthCode] = {}
        self.attempts: dict[str, LoginAttempt] = {}
        self.deliveries: deque[AutologinDelivery] = deque(maxlen=DELIVERIES_KEPT)
        self._backoff: dict[str, _Backoff] = {}

    # Users

    def find_user(self, email: str) -> User | None:
        return self.users.get(_user_key(email))

    def create_user(self, email: str, organization_id: str, now: float, *, verified: bool) -> User:
        user = User(
            id=str(uuid.uuid4()),
            email=email.strip(),
            organization_id=organization_id,
            created=now,
            updated=now,
            verified=verified,
        )
        self.users[_user_key(email)] = user
        return user

    # Sessions

    def start_session(self, user: User, now: float, *, ip: str, user_agent: str, device_id: str) -> Session:
        session = Session(
            id=str(uuid.uuid4()),
            user=user,
            created=now,
            last_activity=now,
            ip=ip,
            user_agent=user_agent,
            device_id=device_id,
            affirmation_date=now,
        )
        self.sessions[session.id] = session
        return session

    def sessions_of(self, user: User) -> list[Session]:
        return [session for session in self.sessions.values() if session.user is user]

    def end_sessions_of(self, user: User, reason: SessionEnd) -> int:
        ended = 0
        for session in self.sessions_of(user):
            if session.active:
                session.ended = reason
                ended += 1
        return ended

    # Codes

    def issue_code(
        self,
        session: Session,
        now: float,
        ttl: float,
        *,
        redirect_key: str,
        challenge: str | None = None,
        app_id: str | None = None,
        device_id: str = "",
    ) -> AuthCode:
        self._prune_codes(now)
        code = AuthCode(
            value=secrets.token_urlsafe(32),
            session_id=session.id,
            redirect_key=redirect_key,
            expires=now + ttl,
            challenge=challenge,
            app_id=app_id,
            device_id=device_id,
        )
        self.codes[code.value] = code
        return code

    def take_code(self, value: str) -> AuthCode | None:
        """Removes and returns a code, so that a second exchange of the same code fails."""
        return self.codes.pop(value, None)

    def _prune_codes(self, now: float) -> None:
        for value in [value for value, code in self.codes.items() if code.expires <= now]:
            del self.codes[value]

    # Direct authentication

    def retry_allowed_at(self, email: str) -> float | None:
        backoff = self._backoff.get(_user_key(email))
        return None if backoff is None else backoff.allowed_after

    def open_attempt(self, email: str, redirect_uri: str, state: str, now: float) -> LoginAttempt:
        key = _user_key(email)
        previous = self._backoff.get(key)
        attempts = 1 if previous is None else previous.attempts + 1
        wait = min(DIRECT_AUTH_BACKOFF * 2 ** (attempts - 1), DIRECT_AUTH_BACKOFF_MAX)
        self._backoff[key] = _Backoff(attempts, now + wait)
        attempt = LoginAttempt(
            id=str(uuid.uuid4()),
            secret=secrets.token_urlsafe(32),
            email=email.strip(),
            redirect_uri=redirect_uri,
            state=state,
            created=now,
            expires=now + LOGIN_LINK_TTL,
        )
        self.attempts[attempt.id] = attempt
        return attempt

    # Autologin

    def record_delivery(self, delivery: AutologinDelivery) -> None:
        self.deliveries.append(delivery)
