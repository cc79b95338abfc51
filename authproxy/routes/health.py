"""Liveness (`/ping`) and readiness (`/ready`).

Readiness checks what a request depends on at run time, and lists each check in its body: CentralAuth
(its discovery document answers); with the Redis store, Redis (it answers PING; with Sentinel, the
master Sentinel names); in a supervised worker, the check broker its sibling workers share answers
through (it is connected). It fails only when Redis does not answer: without its session store a
replica can serve no one. A CentralAuth that does not answer is reported as "degraded" in the body
without failing the probe, so a blip at the identity provider does not pull every replica out of the
load balancer at once; so is a broker that is away (the worker then checks alone). The configuration
needs no check: a worker with an invalid one never starts, and a reload that fails keeps the running
one. The probe of CentralAuth is cached for a few seconds so that frequent readiness checks do not
become load on it.
"""

from __future__ import annotations

from aiohttp import web

from authproxy.context import RUNTIME
from authproxy.runtime import Runtime
from authproxy.session.store import redis_store

PROBE_CACHE = 5.0
PROBE_TIMEOUT = 2.0  # seconds for the whole probe of CentralAuth


async def ping(request: web.Request) -> web.Response:
    """Liveness: the process answers; no I/O."""
    return web.Response(text="OK")


async def ready(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    checks = {"centralauth": await _centralauth(runtime)}
    redis = redis_store(runtime.store)
    if redis is not None:
        checks["redis"] = "ok" if await redis.ping() else "unreachable"
    if runtime.broker is not None:
        reachable = await runtime.broker.reachable()
        checks["check-broker"] = "ok" if reachable else "unreachable (checks per worker)"
    degraded = [name for name, state in checks.items() if state != "ok"]
    lines = [f"{name}: {state}" for name, state in checks.items()]
    headline = "degraded: " + ", ".join(degraded) if degraded else "ready"
    # Without its session store a replica cannot serve anyone; without CentralAuth it still serves
    # cached and stale sessions, so only the store fails the probe.
    status = 503 if checks.get("redis", "ok") != "ok" else 200
    body = "\n".join([headline, *lines]) + "\n"
    return web.Response(text=body, status=status, headers={"Cache-Control": "no-store"})


async def _centralauth(runtime: Runtime) -> str:
    now = runtime.monotonic()
    cached = runtime.probe_cache.get("centralauth")
    if cached is not None and now - cached[0] < PROBE_CACHE:
        return cached[1]
    state = await runtime.provider.reachable(PROBE_TIMEOUT)
    runtime.probe_cache["centralauth"] = (now, state)
    return state
