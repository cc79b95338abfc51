"""The streaming forwarder: one request in, the same request to an upstream, the answer streamed back.

Knows nothing of sessions: the caller hands it the upstream and the exact headers to send. Bodies stream
in both directions with bounded memory; gzip passes through untouched (`auto_decompress=False`); the
client session never follows redirects and never keeps cookies (a shared jar would hand one user's
upstream cookies to the next).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from authproxy.errors import UpstreamTimeout, UpstreamUnavailable
from authproxy.headers import HOP_BY_HOP, connection_tokens

log = structlog.get_logger("authproxy.proxy")

CHUNK = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
# Never forwarded back to the browser: framing is ours to decide, and aiohttp sets it.
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}


@dataclass(frozen=True, slots=True)
class Upstream:
    path: str
    url: str
    preserve_host: bool
    timeout: float

    @property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        # Connect and idle-read bounds only: a total timeout would cut long downloads and event streams.
        return aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout)


class Router:
    """Picks the upstream by longest path prefix, matching whole segments (`/api` is not `/apix`)."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self._ordered = sorted(upstreams, key=lambda upstream: len(upstream.path), reverse=True)

    def pick(self, path: str) -> Upstream | None:
        for upstream in self._ordered:
            prefix = upstream.path
            if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return upstream
        return None


def make_client_session(limit: int = 512) -> aiohttp.ClientSession:
    # Idle upstream connections are dropped after 15 s, below the usual server-side keep-alive
    # (nginx and aiohttp 75 s); a shorter upstream timeout is covered by the retry in `forward`.
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=15, use_dns_cache=True)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def forward(
    http: aiohttp.ClientSession,
    request: web.Request,
    upstream: Upstream,
    headers: CIMultiDict[str],
    path_qs: str,
    on_headers: Callable[[float], None] | None = None,
) -> web.StreamResponse:
    """Send the request upstream with `headers` and stream the answer back to the client.

    `on_headers` receives the seconds the upstream took to send its response headers.
    """
    started = time.perf_counter()
    if upstream.preserve_host and request.host:
        headers["Host"] = request.host
    body = request.content if request.body_exists else None
    # A pooled connection the upstream closed while idle fails on first use; aiohttp itself resends
    # idempotent requests once on a fresh connection (RFC 9112 §9.3.1), which a test pins down.
    try:
        upstream_response = await http.request(
            request.method,
            # encoded=True: send the normalized path byte for byte; re-quoting could decode an escape
            # and change what the upstream routes from what the rules judged.
            URL(upstream.url + path_qs, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=upstream.client_timeout,
        )
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable() from exc
    if on_headers is not None:
        on_headers(time.perf_counter() - started)
    async with upstream_response:
        return await _relay(request, upstream_response)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    listed = connection_tokens(upstream.headers.get("Connection", ""))
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        lowered = name.lower()
        if lowered not in _RESPONSE_SKIP and lowered not in listed:
            response.headers.add(name, value)
    no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUSES or upstream.status < 200
    if upstream.content_length is not None and not no_body:
        response.content_length = upstream.content_length
    elif no_body and upstream.content_length is not None:
        # HEAD keeps the length the GET would have; aiohttp sends no body for it.
        response.headers["Content-Length"] = str(upstream.content_length)
    try:
        await response.prepare(request)
        if not no_body:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        await response.write_eof()
    except TimeoutError:
        # Headers are gone already; all that is left is to cut the connection so the client sees it.
        log.warning("upstream.read_timeout", path=request.path)
        _abort(request)
    except (ConnectionResetError, aiohttp.ClientConnectionError, asyncio.CancelledError) as exc:
        # The client went away (or the upstream did, mid-body): release the upstream, log no error.
        if isinstance(exc, asyncio.CancelledError):
            raise
        _abort(request)
    return response


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
