"""Running a benchmark server's event loop: uvloop when installed, as `authproxy serve` does."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional: the `fast` extra
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
