"""Liveness and readiness endpoints."""

from __future__ import annotations

from aiohttp import web


async def ping(request: web.Request) -> web.Response:
    """Liveness: the process answers; no I/O."""
    return web.Response(text="OK")
