"""CentralAuth's error object and the middleware that guarantees every failure is one.

Every API failure answers `{"errorCode": ..., "message": ...}` with a code from CentralAuth's
OpenAPI `errorCode` enum, because relying parties branch on `errorCode`. Statuses: 400 for validation,
code and session errors, 403 `noPermission` for bad client credentials, 404 `organizationIdMissing`
for an unknown client id, 405 for a wrong method, 413 `genericError` for a body over the size limit,
429 `tooManyRequests`, 500 `genericError`. Anything unexpected is logged and
answered 500 `genericError`; no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

from aiohttp import web
from aiohttp.typedefs import Handler

from .responses import json_response

log = logging.getLogger("authproxy.devidp")

ErrorCode = Literal[
    "genericError",
    "noPermission",
    "tooManyRequests",
    "missingFields",
    "sessionMissing",
    "sessionNotVerified",
    "sessionExpired",
    "sessionInactive",
    "sessionInvalid",
    "domainInvalid",
    "loginAttemptMissing",
    "loginAttemptExpired",
    "loginAttemptInvalid",
    "passkeyDataMissing",
    "passkeyDataExpired",
    "passkeyDataInvalid",
    "passkeyWrongOrganization",
    "callbackUrlMissing",
    "callbackUrlInvalid",
    "connectionMissing",
    "organizationIdMissing",
    "tokenMissing",
    "tokenInvalid",
    "stateMissing",
    "stateInvalid",
    "codeChallengeMissing",
    "codeChallengeInvalid",
    "captchaInvalid",
    "entityMissing",
    "entityInvalid",
]
ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))

# The error code that goes with an HTTP status when nothing more specific is known (aiohttp's own
# routing, method and body-size errors; injected faults).
_STATUS_CODES: dict[int, ErrorCode] = {
    401: "noPermission",
    403: "noPermission",
    404: "entityMissing",
    429: "tooManyRequests",
}


def status_error_code(status: int) -> ErrorCode:
    return _STATUS_CODES.get(status, "genericError")


class ApiError(Exception):
    """A failure the handler knows how to name; the middleware turns it into the error object."""

    def __init__(self, code: ErrorCode, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.status = status


def no_permission(message: str = "Invalid client credentials") -> ApiError:
    return ApiError("noPermission", message, 403)


def unknown_organization() -> ApiError:
    return ApiError("organizationIdMissing", "Unknown organization", 404)


def error_response(
    code: ErrorCode, message: str, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"errorCode": code, "message": message}, status=status, headers=headers)


def _from_http_error(exc: web.HTTPException) -> web.Response:
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(status_error_code(exc.status), exc.reason, exc.status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: named errors, aiohttp HTTP errors and crashes all become error objects."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.code, exc.message, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_error(exc)
    except Exception:
        # Logged with the traceback but never with the request body, which may carry a token.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response("genericError", "Internal server error", 500)
