"""`{proxy_prefix}/jwks.json`: the public keys an upstream verifies `X-Authproxy-Jwt-Assertion` with.

Every key of `[headers] jwt_signing_key_file` is listed, the signing one first, so a key added ahead of
its use is known to verifiers before it signs anything. Public and cacheable for five minutes, with an
ETag (a matching `If-None-Match` gets 304); 404 without `jwt_assertion`. A reload that changes the key
file changes the answer at once (the runtime, and with it the key set, is rebuilt).
"""

from __future__ import annotations

from aiohttp import web

from authproxy import pages
from authproxy.assertion import JWKS_CACHE_CONTROL, JWKS_MEDIA_TYPE
from authproxy.context import RUNTIME, request_id


async def jwks(request: web.Request) -> web.Response:
    assertions = request[RUNTIME].assertions
    if assertions is None:
        return pages.json_error(404, "not_found", "Signed assertions are not enabled.", request_id(request))
    headers = {"Cache-Control": JWKS_CACHE_CONTROL, "ETag": assertions.etag}
    if _matches(request.headers.get("If-None-Match"), assertions.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=assertions.jwks_body, content_type=JWKS_MEDIA_TYPE, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 section 13.1.2) or is `*`."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return etag in {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
