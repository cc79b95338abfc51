"""Logging set-up: structlog rendering JSON lines (or console lines for people) to stderr.

Log lines carry short, non-reversible references at most — never tokens, codes, verifiers, secrets or
cookie values.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # Only events (not access lines) go through structlog, so the lookup per call costs little and
        # a reconfiguration (hot reload, tests) reaches every module's logger.
        cache_logger_on_first_use=False,
    )


def fingerprint(secret: str) -> str:
    """A short reference to a secret value for correlating log lines; not reversible."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:12]
