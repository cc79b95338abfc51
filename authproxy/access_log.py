"""The access log: one line per request, written by aiohttp's access-logger hook.

The hook runs after the response is sent, so writing here adds no latency, but it runs for every
request, so the line is assembled by hand: one format string, the timestamp text reused within its
second, the client address from the per-worker memo, and `json.dumps` only for values that need
escaping. Lines leave in one write per event-loop step rather than one per line: under load dozens of
requests finish in a step, and the write itself had become the access log's largest cost. The same
hook feeds the request metrics, whether or not lines are written. The query string is left out of the
path: it carries login states, codes and whatever else applications put there.
"""

from __future__ import annotations

import json
import re
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from authproxy.context import CLIENT_IP, REQUEST_ID, RUNTIME

# Printable ASCII without quote or backslash: JSON-encodes as itself between quotes.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")
_JSON_LINE = (
    '{"event":"access","timestamp":"%s","method":%s,"path":%s,"status":%d,"bytes":%d,'
    '"duration_ms":%r,"client":%s,"request_id":%s}\n'
)


def _quoted(value: str) -> str:
    """The JSON string for `value`, exactly as `json.dumps` writes it."""
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        # The request context gave every routed request its runtime. One the parser refused never
        # reached it (nor the router), and is left out: `answers` logs those.
        try:
            runtime = request[RUNTIME]
        except KeyError:
            return
        route = cast(web.Request, request).match_info.route.name
        runtime.metrics.observe_request(route, response.status, time_taken)
        logging = runtime.config.logging
        if not logging.access_log:
            return
        client = request[CLIENT_IP]
        duration_ms = round(time_taken * 1000, 3)
        request_id = request[REQUEST_ID]
        lines = runtime.access_lines
        if logging.format == "json":
            lines.add(
                _JSON_LINE
                % (
                    lines.timestamp(),
                    _quoted(request.method),
                    _quoted(request.path),
                    response.status,
                    response.body_length,
                    duration_ms,
                    _quoted(client),
                    _quoted(request_id),
                )
            )
        else:
            lines.add(
                # The path as a JSON string: a decoded CR/LF must not start a forged line.
                f"{lines.timestamp()} access {request.method} {_quoted(request.path)} {response.status} "
                f"{duration_ms}ms rid={request_id}\n"
            )

    @property
    def enabled(self) -> bool:
        return True
