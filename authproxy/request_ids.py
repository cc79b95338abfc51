"""Request ids: 96 random bits each, for matching a user's report to the proxy's and the upstream's logs."""

from __future__ import annotations

import os


class RequestIds:
    """Fresh request ids of 96 random bits, drawn from the OS in batches rather than one call per id.

    Each worker builds its own (workers are spawned, not forked, so none inherits another's batch).
    """

    def __init__(self, batch: int = 256) -> None:
        self._size = 12 * batch
        self._pool = b""
        self._next = self._size

    def __call__(self) -> str:
        start = self._next
        if start >= self._size:
            self._pool = os.urandom(self._size)
            start = 0
        self._next = start + 12
        return self._pool[start : start + 12].hex()
