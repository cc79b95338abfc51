"""A lean pooled HTTP/1.1 client for the forwarder: asyncio protocols and httptools' C parser.

aiohttp stays the server, the websocket bridge and the CentralAuth client; this package only carries
proxied HTTP requests upstream, where aiohttp's general-purpose client spent more CPU per request than
the rest of the proxy together (measured in bench/README.md). It does what a forwarder needs and no
more: keep-alive pooling, streamed bodies both ways (Content-Length, chunked, or until close), strict
response parsing, an idle read timeout, and a resend of idempotent requests on a stale connection.
"""

from authproxy.h1.errors import Disconnected, ProtocolError, UpstreamError
from authproxy.h1.pool import Pool, Response
from authproxy.h1.wire import Origin

__all__ = ["Disconnected", "Origin", "Pool", "ProtocolError", "Response", "UpstreamError"]
