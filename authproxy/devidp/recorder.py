"""What the fake saw on its back channel: call counters and a bounded log of `/api/v1/*` requests.

Tests use this to assert the exact headers and bodies a relying party sent (`GET /_devidp/requests`)
and how often it called CentralAuth (`GET /_devidp/stats`). A call counts as soon as it reaches its
endpoint, before any injected fault and whatever its outcome, so faulted and failed calls count too;
`login` counts completed logins. The log keeps the latest `capacity` requests, header names
lower-cased, bodies decoded as UTF-8 with undecodable bytes replaced.
"""

from __future__ import annotations

from collections import deque

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .clock import Clock, iso

# The back-channel endpoints a test can count and fault, by path.
BACKCHANNEL_ENDPOINTS = {
    "/api/v1/userinfo": "userinfo",
    "/api/v1/verify": "verify",
    "/api/v1/logout": "logout",
}
STAT_NAMES = ("userinfo", "verify", "logout", "login")
DEFAULT_CAPACITY = 1000


def backchannel_endpoint(request: web.Request) -> str | None:
    """`userinfo`, `verify` or `logout` for a POST to one of those endpoints, else None."""
    return BACKCHANNEL_ENDPOINTS.get(request.path) if request.method == "POST" else None


class Recorder:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self.requests: deque[dict[str, object]] = deque(maxlen=capacity)

    def count(self, name: str) -> None:
        self.stats[name] += 1

    def record(self, request: web.Request, body: bytes | None, at: float) -> None:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "query_string": request.query_string,
                "headers": headers,
                "body": None if body is None else body.decode("utf-8", errors="replace"),
                "time": iso(at),
            }
        )

    def reset_stats(self) -> None:
        self.stats = dict.fromkeys(STAT_NAMES, 0)

    def reset(self) -> None:
        self.reset_stats()
        self.requests.clear()


def recording_middleware(recorder: Recorder, clock: Clock) -> Middleware:
    """Counts back-channel calls and logs every `/api/v1/*` request with its body."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/v1/"):
            return await handler(request)
        endpoint = backchannel_endpoint(request)
        if endpoint is not None:
            recorder.count(endpoint)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            recorder.record(request, None, clock.now())
            raise
        recorder.record(request, body, clock.now())
        return await handler(request)

    return record
