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

import asyncio
import json
import re
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from authproxy.headers import combined
from authproxy.routes.common import CLIENT_IP, REQUEST_ID
from authproxy.runtime import RUNTIME

# Printable ASCII without quote or backslash: JSON-encodes as itself between quotes.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")
_JSON_LINE = (
    '{"event":"access","timestamp":"%s","method":%s,"path":%s,"status":%d,"bytes":%d,'
    '"duration_ms":%r,"client":%s,"request_id":%s}\n'
)


def _quoted(value: str) -> str:
    """The JSON string for `value`, exactly as `json.dumps` writes it."""
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


class _Timestamps:
    """UTC timestamps to the second, formatted once per second rather than once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._text


_timestamp = _Timestamps()


class _Lines:
    """Lines collected during one event-loop step and written together at its end."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def add(self, line: str) -> None:
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        # Compared by loop, not by a flag: a loop that stopped before flushing must not stall the log.
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = None
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            sys.stderr.write(text)  # looked up per write: a process may swap it (daemonizing, tests)


_pending = _Lines()


def flush() -> None:
    """Write the lines still waiting for the end of the current step (at shutdown)."""
    _pending.flush()


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        # A request the parser refused never reached the router: it has no app (and asking raises).
        match_info: Any = getattr(request, "_match_info", None)
        app = match_info.current_app if match_info is not None else None
        runtime = app.get(RUNTIME) if app is not None else None
        if runtime is None:
            return
        route = getattr(getattr(match_info, "route", None), "name", None)
        runtime.metrics.observe_request(route, response.status, time_taken)
        logging = runtime.config.logging
        if not logging.access_log:
            return
        client = request.get(CLIENT_IP)
        if client is None:  # a request that never reached the middleware
            client = runtime.client_ips.client(
                request.remote, combined(request.headers.getall("X-Forwarded-For", ()))
            )
        duration_ms = round(time_taken * 1000, 3)
        request_id = request.get(REQUEST_ID, "")
        if logging.format == "json":
            _pending.add(
                _JSON_LINE
                % (
                    _timestamp(),
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
            _pending.add(
                # The path as a JSON string: a decoded CR/LF must not start a forged line.
                f"{_timestamp()} access {request.method} {_quoted(request.path)} {response.status} "
                f"{duration_ms}ms rid={request_id}\n"
            )

    @property
    def enabled(self) -> bool:
        return True
