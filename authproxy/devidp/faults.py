"""Injected faults: make the next calls to a back-channel endpoint fail the way a real outage would.

`POST /_devidp/faults` queues a fault `{"endpoint", "status", "delay", "count", "body", "content_type"}`;
the next `count` calls to that endpoint wait `delay` real seconds (client timeouts run on real time,
not on the fake clock) and then answer:

- status 0: the connection is dropped without any answer;
- status 429 / 500 / other 4xx-5xx: CentralAuth's error object (`tooManyRequests`, `genericError`, ...);
- status 502 / 503 / 504: an HTML page, as a gateway in front of CentralAuth would send;
- `body` given: that body verbatim (e.g. truncated JSON) with `content_type` (default JSON);
- status omitted or null: the normal answer, only delayed.

Faults for one endpoint are used in the order they were queued.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import error_response, status_error_code
from .recorder import BACKCHANNEL_ENDPOINTS, backchannel_endpoint

FAULT_ENDPOINTS = frozenset(BACKCHANNEL_ENDPOINTS.values())
_FIELDS = frozenset({"endpoint", "status", "delay", "count", "body", "content_type"})
_MAX_DELAY = 600.0
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
_GATEWAY_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


@dataclass
class Fault:
    endpoint: str
    status: int | None = None
    delay: float = 0.0
    count: int = 1
    body: str | None = None
    content_type: str = "application/json"

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Validates a control-API request; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
        endpoint = data.get("endpoint")
        if endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(sorted(FAULT_ENDPOINTS))}")
        status, delay, count = data.get("status"), data.get("delay", 0.0), data.get("count", 1)
        body, content_type = data.get("body"), data.get("content_type", "application/json")
        if status is not None and (not _is_int(status) or not (status == 0 or 200 <= status <= 599)):
            raise ValueError("status must be 0 (drop the connection) or an HTTP status 200-599")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= _MAX_DELAY:
            raise ValueError(f"delay must be a number of seconds between 0 and {_MAX_DELAY:g}")
        if not _is_int(count) or count < 1:
            raise ValueError("count must be a positive integer")
        if body is not None and not isinstance(body, str):
            raise ValueError("body must be a string")
        if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
            raise ValueError("content_type must be a media type such as text/html")
        if status is not None and 200 <= status < 300 and body is None:
            raise ValueError("a 2xx fault needs a body; omit status to delay the normal answer")
        return cls(str(endpoint), status, float(delay), count, body, content_type)

    def to_json(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "status": self.status,
            "delay": self.delay,
            "count": self.count,
            "body": self.body,
            "content_type": self.content_type,
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FaultPlan:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {name: deque() for name in BACKCHANNEL_ENDPOINTS.values()}

    def add(self, fault: Fault) -> None:
        self._queues[fault.endpoint].append(fault)

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()

    def pending(self) -> list[Fault]:
        return [fault for queue in self._queues.values() for fault in queue]

    def take(self, endpoint: str) -> Fault | None:
        """The fault for this call, if any; each call uses up one of the fault's `count`."""
        queue = self._queues[endpoint]
        if not queue:
            return None
        fault = queue[0]
        fault.count -= 1
        if fault.count == 0:
            queue.popleft()
        return fault


def _gateway_page(status: int) -> str:
    title = f"{status} {_GATEWAY_REASONS[status]}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n"
        f"<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
    )


def fault_response(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """The faulty answer, or None when the fault only delays the normal answer."""
    if fault.status is None:
        return None
    if fault.status == 0:
        if request.transport is not None:
            request.transport.abort()
        # Nothing is ever written: the transport is gone, so aiohttp drops this response quietly.
        return web.Response()
    if fault.body is not None:
        return web.Response(status=fault.status, body=fault.body.encode(), content_type=fault.content_type)
    if fault.status in _GATEWAY_REASONS:
        return web.Response(status=fault.status, text=_gateway_page(fault.status), content_type="text/html")
    headers = {"Retry-After": "1"} if fault.status == 429 else None
    return error_response(status_error_code(fault.status), "Injected fault", fault.status, headers)


def fault_middleware(plan: FaultPlan) -> Middleware:
    @web.middleware
    async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = backchannel_endpoint(request)
        fault = plan.take(endpoint) if endpoint is not None else None
        if fault is None:
            return await handler(request)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        response = fault_response(request, fault)
        return response if response is not None else await handler(request)

    return inject
