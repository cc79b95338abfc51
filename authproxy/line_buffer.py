"""Log lines collected during one event-loop step and written to stderr together at its end.

Under load dozens of requests finish in one step, and one write per line had become the access log's
largest cost. Each worker's runtime owns one buffer (`Runtime.access_lines`), flushed at shutdown.
"""

from __future__ import annotations

import asyncio
import sys
import time


class _Timestamps:
    """UTC timestamps to the second, formatted once per second rather than once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._text


class Lines:
    """Lines collected during one event-loop step and written together at its end."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self.timestamp = _Timestamps()

    def add(self, line: str) -> None:
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        # Compared by loop, not by a flag: a loop that stopped before flushing must not stall the log.
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = None
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            sys.stderr.write(text)  # looked up per write: a process may swap it (daemonizing, tests)
