"""A server a test started as a child process in a private directory: nginx, haproxy, Caddy.

Each keeps its configuration and logs in that directory; stopping it ends the process (SIGTERM, then
SIGKILL after `STOP_TIMEOUT`) and removes the directory.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

STOP_TIMEOUT = 5.0


@dataclass
class ServerProcess:
    url: str
    directory: Path
    process: asyncio.subprocess.Process
    # The file `log()` reads unless told another.
    log_name: ClassVar[str] = "error.log"

    def log(self, name: str | None = None) -> str:
        path = self.directory / (name or self.log_name)
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.process.returncode is None:
            # SIGTERM: nginx's fast shutdown, haproxy's hard stop, Caddy's graceful one; all a test needs.
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def apply_edits(text: str, edits: dict[str, str], source: Path, owner: str) -> str:
    """A deploy example's text with each `old -> new` of `edits` applied; every `old` must occur in it
    exactly once, so an example that changes under a test fails loudly instead of running unedited.
    `owner` names the function that lists the edits, to update with the example."""
    for old, new in edits.items():
        found = text.count(old)
        if found != 1:
            raise AssertionError(
                f"{source}: the test replaces {old!r}, which must occur exactly once but occurs {found} "
                f"times; update {owner} together with the example"
            )
        text = text.replace(old, new)
    return text
