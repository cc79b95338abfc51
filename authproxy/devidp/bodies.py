"""Request-body parsing shared by the API and the control routes; every failure is an `ApiError`.

Bodies are bounded by the application's `client_max_size`; an oversized body surfaces as aiohttp's
413 error, which the error middleware turns into an error object.
"""

from __future__ import annotations

import json
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qsl

from aiohttp import web

from .errors import ApiError


async def json_object(request: web.Request) -> dict[str, object]:
    """The body as a JSON object, whatever the Content-Type says."""
    try:
        data = json.loads(await request.read())
    except ValueError:
        # Covers invalid JSON and bytes that are not UTF-8 (UnicodeDecodeError is a ValueError).
        raise ApiError("entityInvalid", "The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError("entityInvalid", "The request body must be a JSON object")
    return data


def _multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    # The recording middleware has already consumed the request stream (aiohttp's multipart reader
    # cannot re-read it), so multipart bodies are parsed from the buffered bytes with the stdlib.
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or part.get_filename() is not None or not isinstance(payload, bytes):
            continue
        fields.setdefault(name, payload.decode(part.get_content_charset() or "utf-8"))
    return fields


def _urlencoded_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


async def form_fields(request: web.Request) -> dict[str, str]:
    """The text fields of a multipart or urlencoded form, or of a JSON object body.

    The first occurrence of a repeated field wins; file parts are not fields.
    """
    if request.content_type == "application/json":
        data = await json_object(request)
        return {key: value for key, value in data.items() if isinstance(value, str)}
    body = await request.read()
    try:
        if request.content_type == "multipart/form-data":
            return _multipart_fields(request.headers.get("Content-Type", ""), body)
        if request.content_type in ("application/x-www-form-urlencoded", "application/octet-stream", ""):
            return _urlencoded_fields(body)
    except (ValueError, LookupError):
        # Undecodable bytes, unknown charsets and malformed headers are all ValueError/LookupError.
        raise ApiError("entityInvalid", "The request body could not be parsed") from None
    return {}
