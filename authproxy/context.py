"""What is known about the request being answered, worked out once by the request context.

The runtime the request started on (a reload swaps in a new one for later requests, never for this
one), its id, and the end user's IP behind any trusted proxies. Routes, the gate and the access log
read them here instead of working them out again.
"""

from __future__ import annotations

import re

from aiohttp import web

from authproxy import pages
from authproxy.core.headers import combined
from authproxy.runtime import Runtime

RUNTIME = web.RequestKey("runtime", Runtime)
REQUEST_ID = web.RequestKey("request_id", str)
# The session check, the upstream's X-Forwarded-For and the access log all use this one value.
CLIENT_IP = web.RequestKey("client_ip", str)
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def begin(request: web.Request, runtime: Runtime) -> str:
    """Attach `runtime` to `request`, and give it an id (a trusted proxy's, or a fresh one) and its
    end user's IP; returns the id."""
    request[RUNTIME] = runtime
    incoming = request.headers.get("X-Request-Id", "")
    trusted = incoming and _REQUEST_ID_RE.fullmatch(incoming) and peer_trusted(request)
    rid = incoming if trusted else runtime.request_ids()
    request[REQUEST_ID] = rid
    forwarded_for = combined(request.headers.getall("X-Forwarded-For", ()))
    request[CLIENT_IP] = runtime.client_ips.client(request.remote, forwarded_for)
    return rid


def request_id(request: web.Request) -> str:
    # Indexing, not `.get`: Mapping.get is two Python calls, on a line every request runs several times.
    try:
        return request[REQUEST_ID]
    except KeyError:  # a request `begin` never saw (aiohttp's own answer to a malformed one)
        return ""


def peer_trusted(request: web.Request) -> bool:
    return request[RUNTIME].client_ips.peer_trusted(request.remote)


def end_user_ip(request: web.Request) -> str:
    return request[CLIENT_IP]


def user_agent(request: web.Request) -> str:
    return request.headers.get("User-Agent", "")


def api_client(request: web.Request) -> bool:
    return pages.wants_json(
        request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""), api_route=False
    )
