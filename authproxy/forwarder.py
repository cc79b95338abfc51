"""The streaming forwarder: one request in, the same request to an upstream, the answer streamed back.

Knows nothing of sessions: the caller hands it the upstream and the exact headers to send. Requests go
upstream through the lean pooled client in `authproxy.h1` (websockets use aiohttp's client, see
`websocket`). Bodies stream in both directions with bounded memory; gzip passes through untouched;
redirects are never followed and no cookie is ever kept between requests (a shared jar would hand one
user's upstream cookies to the next).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

from authproxy import h1
from authproxy.core.headers import HOP_BY_HOP, connection_tokens
from authproxy.errors import UpstreamBusy, UpstreamTimeout, UpstreamUnavailable

log = structlog.get_logger("authproxy.forwarder")

_NO_BODY_STATUSES = frozenset({204, 304})
# Never forwarded back to the browser: framing is ours to decide, and aiohttp sets it.
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length"}
_FORBIDDEN = re.compile(r"[\x00\r\n]")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One `[[upstreams]]` table: where its requests go, and the limits of talking to it."""

    path: str
    url: str
    preserve_host: bool = True  # the caller sets Host from the browser's (see routes.proxy)
    timeout: float = 60.0  # the response head after the body is sent, and between two body reads
    connect_timeout: float = 10.0
    send_timeout: float = 60.0  # a client that takes none of the answer this long is cut
    ca_file: str = ""
    verify: bool = True
    server_name: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    # Where connections go (TLS settings included) and what precedes each request target, parsed once.
    origin: h1.Origin = field(init=False, repr=False, compare=False)
    prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origin, prefix = h1.Origin.split(
            self.url,
            ca_file=self.ca_file,
            verify=self.verify,
            server_name=self.server_name,
            client_cert_file=self.client_cert_file,
            client_key_file=self.client_key_file,
        )
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "prefix", prefix)


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


async def forward(
    pool: h1.Pool,
    request: web.Request,
    upstream: Upstream,
    headers: CIMultiDict[str],
    path_qs: str,
    on_headers: Callable[[float], None] | None = None,
    on_prepare: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Send the request upstream with `headers` and stream the answer back to the client.

    `on_headers` receives the seconds the upstream took to send its response headers; `on_prepare`
    sees the answer with the upstream's headers, just before the head is sent, and may add to it.
    """
    started = time.perf_counter()
    body = request.content if request.body_exists else None
    try:
        upstream_response = await pool.request(
            upstream.origin,
            request.method,
            # The canonical path byte for byte: re-quoting could decode an escape and change what the
            # upstream routes from what the rules judged.
            upstream.prefix + path_qs,
            headers.items(),
            body,
            connect_timeout=upstream.connect_timeout,
            response_timeout=upstream.timeout,
            read_timeout=upstream.timeout,
        )
    except h1.PoolExhausted as exc:
        raise UpstreamBusy(f"no upstream connection free for {upstream.url}") from exc
    except h1.UpstreamTimeout as exc:
        raise UpstreamTimeout(f"{upstream.url}: no progress within the {exc.stage} timeout") from exc
    except h1.UpstreamError as exc:
        raise UpstreamUnavailable(f"{upstream.url}: {exc.kind}: {exc.detail}") from exc
    except OSError as exc:
        raise UpstreamUnavailable(f"{upstream.url}: {type(exc).__name__}: {exc}") from exc
    if on_headers is not None:
        on_headers(time.perf_counter() - started)
    try:
        return await _relay(request, upstream_response, upstream.send_timeout, on_prepare)
    finally:
        upstream_response.release()


class _Forwarded(web.StreamResponse):
    """An upstream's answer on its way to the client.

    The application's `on_response_prepare` hooks give the proxy's own answers their headers
    (`authproxy.answers`); a forwarded answer keeps the upstream's, so it skips them, and only loses
    the `Server` value aiohttp would add where the upstream sent none (it names the Python and aiohttp
    versions). Skipping the hooks, which run for every answer, is also the largest saving of the
    forwarding path. The caller's `on_prepare` runs at the point the hooks would have.
    """

    on_prepare: Callable[[web.StreamResponse], None] | None = None

    async def _start(self, request: web.BaseRequest) -> AbstractStreamWriter:
        # aiohttp's own `_start`, with the hooks replaced by the two steps above.
        self._req = request
        writer = self._payload_writer = request._payload_writer
        # First, so that what it adds (a cookie to clear) is written with the rest of the head.
        if self.on_prepare is not None:
            self.on_prepare(self)
        await self._prepare_headers()
        # aiohttp adds its default with `setdefault(SERVER, SERVER_SOFTWARE)`. An upstream's own header
        # is a string decoded from its answer, never that very object, so identity tells the two apart
        # even when an aiohttp upstream sends the same text.
        if self._headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            del self._headers[hdrs.SERVER]
        await self._write_headers()
        return writer


class _CoalescedResponse(_Forwarded):
    """A response whose headers leave with the first piece of body, in one write instead of two.

    Only for answers whose body is already in hand: for anything else (an event stream, a slow
    upstream) the client must see the headers as soon as the upstream sent them.
    """

    _send_headers_immediately = False


class _ExactHeadResponse(_Forwarded):
    """A response whose header bytes are the upstream's exactly, bytes that are not UTF-8 included.

    The upstream client decodes header bytes as UTF-8 with `surrogateescape`; aiohttp's writer would
    drop the escaped bytes (`filename="caf\xe9.txt"` would become `filename="caf.txt"`). Used only for
    such answers: the head is serialized here, then handed to aiohttp's writer in place of its own.
    """

    async def _write_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        if request is None or not isinstance(writer, StreamWriter) or not hasattr(writer, "_headers_buf"):
            raise RuntimeError("this aiohttp version cannot send exact header bytes")
        version = request.version
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        await writer.write_headers(status_line, self._headers)  # runs aiohttp's own checks and hooks
        writer._headers_buf = exact_head(status_line, self._headers.items())
        if self._send_headers_immediately:
            writer.send_headers()


def exact_head(status_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response head with every header byte as received; CR, LF and NUL are never written."""
    lines = [status_line, *(f"{name}: {value}" for name, value in headers)]
    if any(_FORBIDDEN.search(line) for line in lines):
        raise ValueError("a control character in a response header")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _escaped(value: str) -> bool:
    """True when `value` holds bytes that were not UTF-8 (decoded to lone surrogates)."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def _relay(
    request: web.Request,
    upstream: h1.Response,
    send_timeout: float,
    on_prepare: Callable[[web.StreamResponse], None] | None,
) -> web.StreamResponse:
    exact = upstream.non_ascii and any(_escaped(name) or _escaped(value) for name, value in upstream.headers)
    kind = _ExactHeadResponse if exact else _CoalescedResponse if upstream.body_ready else _Forwarded
    response = kind(status=upstream.status, reason=upstream.reason)
    response.on_prepare = on_prepare
    if exact and upstream.body_ready:
        response._send_headers_immediately = False
    listed: set[str] = set()
    for name, value in upstream.headers:
        if name.lower() == "connection":
            listed |= connection_tokens(value)  # every line's names: each is hop-by-hop
    out = response.headers
    for name, value in upstream.headers:
        lowered = name.lower()
        if lowered not in _RESPONSE_SKIP and lowered not in listed:
            out.add(name, value)
    no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUSES or upstream.status < 200
    if upstream.content_length is not None and not no_body:
        response.content_length = upstream.content_length
    elif no_body and upstream.content_length is not None:
        # HEAD keeps the length the GET would have; aiohttp sends no body for it.
        response.headers["Content-Length"] = str(upstream.content_length)
    # The send timeout counts only while the answer waits for the client: a client that stops reading
    # cannot hold the upstream connection (and its pool slot) longer than that. A stalled write is cut
    # by aborting the client's transport, which makes the pending write raise. Waiting for the upstream
    # is bounded by the read timeout inside the client instead, so the guard is off while reading.
    # A body already in hand is read without waiting, so one guard covers all of it.
    loop = asyncio.get_running_loop()
    guard = loop.call_later(send_timeout, _stalled, request)
    streamed = not upstream.body_ready
    try:
        await response.prepare(request)
        if not no_body:
            while True:
                if streamed:
                    guard.cancel()
                chunk = await upstream.read()
                if not chunk:
                    break
                if streamed:
                    guard = loop.call_later(send_timeout, _stalled, request)
                await response.write(chunk)
            if streamed:
                guard = loop.call_later(send_timeout, _stalled, request)
        await response.write_eof()
    except TimeoutError:
        # The upstream went silent mid-body; the headers are gone already, so all that is left is to
        # cut the connection so the client sees it.
        log.warning("upstream.read_timeout", path=request.path)
        _abort(request)
    except (ConnectionError, asyncio.CancelledError) as exc:
        # The client went away (or stalled past the send timeout), or the upstream did mid-body (a
        # reset, a body shorter than its framing): the upstream connection is closed on release, and
        # the client's is cut so that it sees a short body, never one passed off as complete.
        if isinstance(exc, asyncio.CancelledError):
            raise
        _abort(request)
    finally:
        guard.cancel()
    return response


def _stalled(request: web.Request) -> None:
    log.warning("client.send_timeout", path=request.path)
    _abort(request)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
