"""The fake's clock: wall time plus an offset that tests move forward.

Everything time-based in the fake (code lifetime, session and inactivity limits, token `iat`/`exp`,
login-link expiry, the dates in the User object) reads this clock, so a test can jump past a limit
with `POST /_devidp/clock` instead of sleeping.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Epoch seconds, shifted by an offset that only ever grows."""

    def __init__(self) -> None:
        self._offset = 0.0

    @property
    def offset(self) -> float:
        return self._offset

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        # Moving backwards would let expired codes and sessions come back to life, which no real
        # server does; refusing it keeps every expiry final.
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds

    def reset(self) -> None:
        """Back to wall time; only for a full reset, when nothing stamped with the old offset survives."""
        self._offset = 0.0


def iso(timestamp: float) -> str:
    """ISO-8601 UTC with milliseconds and `Z`, as JavaScript's `Date.toJSON` writes it."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
