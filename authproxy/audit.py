"""The audit event stream: security-relevant events, one JSON object each, with a versioned schema.

Events: `login.success`, `login.failure` (reason), `session.revoked` (by CentralAuth), `logout`
(outcome), `access.denied` (rule), and from `authproxy sessions` (request id empty, `by="cli"`):
`admin.sessions_listed`, `admin.session_revoked`, `admin.centralauth_logout_failed`. Every event
carries `audit` (the schema version), `event` and the request id; users appear by CentralAuth id,
sessions by a short non-reversible fingerprint.
"""

from __future__ import annotations

from typing import Any

import structlog

SCHEMA_VERSION = 1
_log = structlog.get_logger("authproxy.audit")


def event(name: str, request_id: str, **fields: Any) -> None:
    _log.info(name, audit=SCHEMA_VERSION, request_id=request_id, **fields)
