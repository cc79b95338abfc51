"""Waiting for a server the tests started as a child process to listen, with a timeout and its log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until_listening(
    name: str, process: asyncio.subprocess.Process, port: int, log: Callable[[], str], within: float
) -> None:
    """Return once 127.0.0.1:`port` accepts a connection; fail with `log()` if `process` exits first or
    `within` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if process.returncode is not None:
            raise AssertionError(f"{name} exited with status {process.returncode} before listening:\n{log()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(
                    f"{name} did not listen on port {port} within {within:.0f}s:\n{log()}"
                ) from None
            await asyncio.sleep(0.02)
        else:
            writer.close()
            await writer.wait_closed()
            return
