"""The access log: one line per request, written by aiohttp's access-logger hook.

The hook runs after the response is sent, so writing here adds no latency; the line is built with one
`json.dumps` (or one f-string for console format) rather than a processor chain. The same hook feeds
the request metrics, whether or not lines are written. The query string is left out of the path: it
carries login states, codes and whatever else applications put there.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from authproxy.headers import client_ip
from authproxy.routes.common import REQUEST_ID
from authproxy.runtime import RUNTIME


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        app = getattr(request, "app", None)
        runtime = app.get(RUNTIME) if app is not None else None
        if runtime is None:
            return
        match_info: Any = getattr(request, "match_info", None)
        route = getattr(getattr(match_info, "route", None), "name", None)
        runtime.metrics.observe_request(route, response.status, time_taken)
        logging = runtime.config.logging
        if not logging.access_log:
            return
        fields = {
            "event": "access",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "duration_ms": round(time_taken * 1000, 3),
            "client": client_ip(
                request.remote, request.headers.get("X-Forwarded-For"), runtime.trusted_proxies
            ),
            "request_id": request.get(REQUEST_ID, ""),
        }
        stream = sys.stderr  # looked up per line: a process may swap it (daemonizing, tests)
        if logging.format == "json":
            stream.write(json.dumps(fields, separators=(",", ":")) + "\n")
        else:
            stream.write(
                f"{fields['timestamp']} access {fields['method']} {fields['path']} {fields['status']} "
                f"{fields['duration_ms']}ms rid={fields['request_id']}\n"
            )

    @property
    def enabled(self) -> bool:
        return True
