"""A lean pooled HTTP/1.1 client for the forwarder and the CentralAuth back channel: asyncio protocols
and httptools' C parser.

aiohttp stays the server and the websocket bridge; this package carries proxied HTTP requests upstream
and the calls to CentralAuth (each in a pool of its own), where aiohttp's general-purpose client spent
more CPU per request than the rest of the proxy together (measured in bench/README.md). It does what a
forwarder needs and no more: keep-alive pooling that reuses a connection only when it is provably clean,
streamed bodies both ways (Content-Length, chunked, or until close), strict response parsing, per-request
timeouts for connecting, for the response head and for each read, per-upstream TLS settings and Unix
sockets, and one resend of an idempotent request on a stale connection.

Chunked trailers are parsed and dropped, never promoted to headers. Errors are typed (`errors`).

    pool = Pool(limit=512, keepalive=15.0, acquire_timeout=5.0)
    origin, prefix = Origin.split("https://app.internal:8443/base", ca_file="/etc/app-ca.pem")
    response = await pool.request(origin, "GET", prefix + "/x", headers, None,
                                  connect_timeout=10, response_timeout=60, read_timeout=60)
    try:
        while chunk := await response.read(): ...
    finally:
        response.release()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authproxy.h1.errors import PoolExhausted, UpstreamError, UpstreamTimeout
    from authproxy.h1.pool import Pool, Response
    from authproxy.h1.wire import BodySource, Origin

# The package's API, loaded on first use: importing one submodule does not import the others.
_HOMES = {
    "BodySource": "authproxy.h1.wire",
    "Origin": "authproxy.h1.wire",
    "Pool": "authproxy.h1.pool",
    "Response": "authproxy.h1.pool",
    "PoolExhausted": "authproxy.h1.errors",
    "UpstreamError": "authproxy.h1.errors",
    "UpstreamTimeout": "authproxy.h1.errors",
}
__all__ = ["BodySource", "Origin", "Pool", "PoolExhausted", "Response", "UpstreamError", "UpstreamTimeout"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
