"""Logging set-up: structlog rendering JSON lines (or console lines for people) to stderr.

Log lines carry short, non-reversible references at most — never tokens, codes, verifiers, secrets or
cookie values.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import TextIO, cast

import structlog
from aiohttp.http_exceptions import HttpProcessingError

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured: a reload
    configures logging again, and the stream at that moment (a test's capture, say) may be gone later."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _Stderr()


def configure(fmt: str = "json", level: str = "info") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # structlog only ever calls write() and flush() on it.
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _STDERR)),
        # Only events (not access lines) go through structlog, so the lookup per call costs little and
        # a reconfiguration (hot reload, tests) reaches every module's logger.
        cache_logger_on_first_use=False,
    )
    server_logger = logging.getLogger("aiohttp.server")
    if _CLIENT_ERRORS not in server_logger.filters:
        server_logger.addFilter(_CLIENT_ERRORS)


class _ClientProtocolErrors(logging.Filter):
    """One structured line, instead of an ERROR with a traceback, for a request the HTTP parser refused.

    aiohttp logs every malformed request ("Error handling request") with the parser's traceback. That is
    the client's doing, not a fault of the proxy, and any client could flood the log with multi-line,
    non-JSON records. Only the reason's first words are kept: the rest of the parser's message quotes
    the offending bytes, which may be a cookie.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or exc.code >= 500:
            return True
        reason = str(exc.message).strip().split("\n", 1)[0].split(":", 1)[0][:80]
        client = record.args[0] if isinstance(record.args, tuple) and record.args else None
        structlog.get_logger("authproxy.server").info(
            "http.bad_request", status=exc.code, kind=type(exc).__name__, reason=reason, client=str(client)
        )
        return False


_CLIENT_ERRORS = _ClientProtocolErrors()


def fingerprint(secret: str) -> str:
    """A short reference to a secret value for correlating log lines; not reversible."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:12]
