"""Running a benchmark server: its event loop (uvloop when installed, as `authproxy serve` does), and
an aiohttp app served until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional: the `fast` extra
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def serve(app: web.Application, name: str, host: str, port: int, **site: Any) -> None:
    """Serve `app` on host:port (`site`: more TCPSite arguments) until SIGTERM. `<name>.ready` is
    printed once it listens: the harness (bench/servers.py) waits for that line."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, **site).start()
    print(f"{name}.ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
