"""One keep-alive HTTP/1.1 connection to an upstream, and the response arriving on it.

An asyncio protocol that carries one exchange at a time: `begin()` arms it for the response to the
request about to be written, the response head resolves `head()`, body bytes queue up for `read()`.
Reading from the socket pauses while more than `HIGH_WATER` bytes wait for the caller, so a slow client
holds back the upstream instead of filling memory.

Framing is decided here, byte-exactly, because a connection goes back to the pool only when it is
provably clean: the response ended where its framing says, and not one byte beyond that end has
arrived. The head ends at its first blank line, found here; llhttp (through httptools, in strict mode)
is fed exactly the head's bytes, so it parses and checks the status line and the fields but never
sees what follows. The body then is counted here (Content-Length), or passed through until the end
of the connection, or, when chunked, fed to llhttp in a way that shows whether the last chunk ended
exactly at the last byte received (below). A response to HEAD, a 204 and a 304 end with their head
whatever their fields say. Anything beyond the end (a body after a HEAD answer, 204 or 304, more bytes
than Content-Length, a second response, a stray CRLF) is never delivered and condemns the connection;
so does any byte, or the end of the connection, while it sits idle in the pool. A connection that
carried a HEAD, 204 or 304 exchange is not reused at all: a body sent late for one of those would
otherwise arrive after the next request and be taken for its answer. (Bytes beyond a Content-Length
that arrive only after the next request was written cannot be told from its answer by any HTTP/1.1
client; they can come only from a broken upstream.)

Stricter than the letter of the HTTP/1.1 specification, on purpose, since the same bytes may decide
where the next user's answer starts: a response's first byte must start its status line (no blank
lines before it); only HTTP/1.0 and HTTP/1.1 status lines are accepted and only HTTP/1.1 ones may
keep the connection; Transfer-Encoding must be exactly one `chunked` (no other codings, not repeated,
never alongside Content-Length); Content-Length appears at most once; an interim (1xx) response
carries neither; 101 is refused (no upgrade is ever asked for); obsolete line folding is refused.

Interim responses (100 Continue, 103 Early Hints...) are between the upstream and us: skipped, never
taken for the answer. Trailer fields of a chunked body are parsed and dropped: they are never added to
the response's headers (which were sent on long before), so a trailer can neither smuggle a header,
nor a `Set-Cookie`, in after the fact.

A body that ends before its framing says (the connection closed or reset in the middle of a
Content-Length or chunked body, or reset in the middle of one delimited by the connection's end) makes
`read()` raise `UpstreamError`; it never ends as if complete.

The clocks: `response_timeout` bounds the wait for the response head and starts once the request
(body included) has been handed to the socket; while a request body is still being written, only a
lack of progress counts (no piece of it moved for `read_timeout`: stage "write"); once the head is
here, `read_timeout` measures the time since the upstream last sent something (it stands still while
reading is paused for a slow caller).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, cast

import httptools

from authproxy.h1.errors import Kind, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from authproxy.h1.wire import Origin

HIGH_WATER = 512 * 1024  # buffered body bytes at which reading from the upstream pauses
LOW_WATER = 128 * 1024  # and resumes
JOIN_LIMIT = 64 * 1024  # buffered pieces up to this much total are joined into one write
# The same limits as aiohttp's client: an upstream answer beyond them is a 502.
MAX_FIELD = 8190
MAX_HEADERS = 128
MAX_HEAD = MAX_FIELD * MAX_HEADERS  # one head, all of its lines
# Chunk-size lines, extensions and trailers between two pieces of body: llhttp keeps no limit there.
MAX_CHUNK_OVERHEAD = 64 * 1024

# Where an exchange stands, as far as the bytes from the upstream go.
_IDLE = 0  # no exchange: any byte from the upstream condemns the connection
_HEAD = 1  # waiting for the response head (and skipping interim ones)
_LENGTH = 2  # a body of Content-Length bytes, `_remaining` of them still to come
_CHUNKED = 3  # a chunked body, parsed by llhttp
_UNTIL_CLOSE = 4  # a body that ends with the connection
_DONE = 5  # the response is complete by its framing

_TERMINATOR = b"\r\n\r\n"
_LF = 10
_CR = 13


class Head(NamedTuple):  # a tuple: the cheapest record to make, once per response
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None
    # Some header byte is not ASCII: the caller must then look for bytes that are not UTF-8 either.
    non_ascii: bool = False


class ProtocolError(Exception):
    """Raised inside parser callbacks; becomes an `UpstreamError` of kind "protocol"."""


class Connection(asyncio.Protocol):
    """The protocol of one upstream connection; the pool owns it, `Response` reads through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self._loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # holds one of the pool's slots
        self.reused = False
        self.idle_since = 0.0
        self._phase = _IDLE
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self._head: Head | None = None
        # The head being parsed: its reason, its fields, and where it ends.
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._non_ascii = False
        self._head_ended = False
        self._interim = False
        self._tail = b""  # the last bytes of a head cut by a read boundary: its blank line may span it
        self._head_size = 0
        self._version = ""  # "1.1" or "1.0" when the head's first read showed it
        self._next_phase = _DONE  # what the head's framing says follows it
        self._remaining = 0
        self._overhead = 0  # chunked-body bytes since the last piece of body (see MAX_CHUNK_OVERHEAD)
        self._ended = False  # llhttp saw the end of the chunked body
        self._clean = False  # the response may leave the connection reusable: keep-alive, no stray byte
        self._answered = False
        self._error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The clocks.
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._response_timeout = 0.0
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._sending = False  # a request body is being written
        self._progress = 0.0  # when a piece of it last moved
        self._write_buffered = 0  # the transport's buffer when last looked at, to see it drain
        self._sent_at = 0.0

    # -- the exchange, as the pool and the response use it -------------------------------------------

    def begin(self, head_request: bool, response_timeout: float, read_timeout: float, sending: bool) -> None:
        """Arm the connection for the response to the request about to be written.

        `sending`: a request body follows the head (`write_body` calls `sent()` when it is all out).
        """
        now = self._loop.time()
        self._parser = httptools.HttpResponseParser(self)
        self._phase = _HEAD
        self._head_request = head_request
        self._head = None
        self._reason, self._headers, self._head_ended, self._interim = b"", [], False, False
        self._non_ascii = False
        self._tail, self._head_size, self._overhead, self._ended = b"", 0, 0, False
        self._clean = self._answered = False
        self._error = None
        self._response_timeout = response_timeout
        self._read_timeout = read_timeout
        self._sending = sending
        self._last_read = self._progress = self._sent_at = now
        self._write_buffered = 0

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise self._error or UpstreamError(
                "closed", "the upstream connection is closed", answered=self._answered
            )
        self.transport.write(data)
        if self._sending:
            self._progress = self._loop.time()

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise UpstreamError("closed", "the upstream closed the connection", answered=self._answered)
        if self._writing_paused:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None
            if self._error is not None:
                raise self._error

    def sent(self) -> None:
        """The request is all written: from now on the wait for the head is the response timeout's."""
        self._sending = False
        self._sent_at = self._loop.time()
        self._restart_clock()

    def abort(self, error: BaseException) -> None:
        """End the exchange with `error` (unless it failed already) and close the connection."""
        self._fail(error)

    async def head(self) -> Head:
        while self._head is None:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._head

    async def read(self) -> bytes:
        """The body received since the last call (waiting for some); b"" once it is complete."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self._phase == _DONE:
                return b""
            await self._wait()
        if len(chunks) == 1 or self._buffered > JOIN_LIMIT:
            data = chunks.popleft()  # a large piece goes out as it came, without a copy
        else:
            data = b"".join(chunks)  # small pieces (a chunked body, say) leave in one write
            chunks.clear()
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= LOW_WATER and self.transport is not None:
            self._reading_paused = False
            self._last_read = self._loop.time()  # the upstream was held back, not silent
            self.transport.resume_reading()
        return data

    @property
    def body_ready(self) -> bool:
        """Some of the body (or its end) is here already: reading it now will not wait."""
        return bool(self._chunks) or self._phase == _DONE or self._error is not None

    @property
    def finished(self) -> bool:
        """The response was read to its framed end, cleanly: the connection may carry another request."""
        return self._phase == _DONE and self._clean and not self._chunks and self.usable

    @property
    def usable(self) -> bool:
        """Open, as far as we know: not closed by either side (an upstream's FIN may still be in flight)."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def idle(self) -> None:
        """The exchange is over; until the next `begin()`, any byte from the upstream closes us."""
        self._phase = _IDLE
        self._parser = None
        self._cancel_timer()

    def close(self) -> None:
        self._clean = False
        self._parser = None
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # -- waiting, with the clocks ---------------------------------------------------------------------

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline(), self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _deadline(self) -> float:
        if self._head is not None:
            return self._last_read + self._read_timeout
        if self._sending:
            return self._progress + self._read_timeout
        return self._sent_at + self._response_timeout

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._phase == _DONE:
            return  # nobody waits; the next wait starts the clock again from where it stands
        now = self._loop.time()
        if self._head is not None and self._reading_paused:
            self._last_read = now  # held back for a slow caller: the upstream is not silent
        elif self._head is None and self._sending and self.transport is not None:
            buffered = self.transport.get_write_buffer_size()
            if buffered != self._write_buffered:  # the socket took some of the body since last time
                self._write_buffered = buffered
                self._progress = now
        due = self._deadline()
        if now < due:
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        if self._head is not None:
            error = UpstreamTimeout(
                "read", f"the upstream sent nothing for {self._read_timeout:g} s in the middle of the body"
            )
        elif self._sending:
            error = UpstreamTimeout(
                "write", f"the request body made no progress for {self._read_timeout:g} s"
            )
        else:
            error = UpstreamTimeout(
                "response", f"no response within {self._response_timeout:g} s of sending the request"
            )
        self._fail(error)

    def _restart_clock(self) -> None:
        """The clock changed (from write to response), and its deadline may be earlier."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None:
            self._timer = self._loop.call_at(self._deadline(), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and self._phase != _DONE:  # a complete response stays complete
            self._error = error
        self.close()
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _protocol_error(self, detail: str) -> None:
        self._fail(UpstreamError("protocol", detail))

    def _done(self) -> None:
        """The response is complete by its framing; unless it ended cleanly, the connection goes."""
        self._phase = _DONE
        self._parser = None
        self._cancel_timer()
        if not self._clean:
            self.close()
        self._wake()

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _LENGTH:  # the bulk of most bodies: counted, passed on without a copy
            self._last_read = self._loop.time()
            self._receive_length(data)
        elif phase == _HEAD:
            self._last_read = self._loop.time()
            self._answered = True
            self._receive_head(data)
        elif phase == _CHUNKED:
            self._last_read = self._loop.time()
            self._receive_chunked(data, 0)
        elif phase == _UNTIL_CLOSE:
            self._last_read = self._loop.time()
            self._push(data)
        else:
            # Idle, or the response is complete: nobody asked for these bytes. A connection that
            # talks out of turn never carries a request again, and what it said is never read.
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._clean = False
        self._parser = None
        phase = self._phase
        if self._error is None and phase in (_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE):
            if exc is not None:
                kind: Kind = "tls" if isinstance(exc, ssl.SSLError) else "reset"
                self._fail(UpstreamError(kind, _describe(exc), answered=self._answered))
            elif phase == _UNTIL_CLOSE:
                self._done()  # the body was delimited by the end of the connection
            elif not self._answered:
                self._fail(
                    UpstreamError(
                        "closed", "the upstream closed the connection before answering", answered=False
                    )
                )
            else:
                self._fail(UpstreamError("truncated", _truncated(phase, self._remaining)))
        else:
            self._cancel_timer()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._sending:
            self._progress = self._loop.time()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the bytes, by phase --------------------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _receive_length(self, data: bytes) -> None:
        remaining = self._remaining
        size = len(data)
        if size < remaining:
            self._remaining = remaining - size
            self._push(data)
            return
        self._remaining = 0
        if size > remaining:
            self._clean = False  # bytes beyond Content-Length: never delivered, the connection goes
            data = data[:remaining]
        if data:
            self._push(data)
        self._done()

    def _receive_head(self, data: bytes) -> None:
        """Find where each head ends, feed llhttp exactly its bytes, and pass the rest on by framing."""
        size = len(data)
        start = 0
        while True:
            tail = self._tail
            end = -1
            if tail:  # the blank line may straddle the previous read and this one
                found = (tail + data[:3]).find(_TERMINATOR)
                if found >= 0:
                    end = found + 4 - len(tail)
            elif self._head_size == 0:  # the first bytes of a head
                if data[start] in (_CR, _LF):
                    self._protocol_error("the response does not start with a status line")
                    return
                # The version, seen here for less than asking llhttp (which checks it all the same).
                self._version = (
                    "1.1"
                    if data.startswith(b"HTTP/1.1 ", start)
                    else "1.0"
                    if data.startswith(b"HTTP/1.0 ", start)
                    else ""
                )
            if end < 0:
                end = data.find(_TERMINATOR, start)
                if end >= 0:
                    end += 4
            stop = size if end < 0 else end
            self._head_size += stop - start
            if self._head_size > MAX_HEAD:
                self._protocol_error("the response head is too large")
                return
            parser = self._parser
            assert parser is not None
            try:
                parser.feed_data(data if start == 0 and stop == size else data[start:stop])
            except httptools.HttpParserError as exc:  # HttpParserCallbackError, HttpParserUpgrade too
                self._protocol_error(_malformed("response head", exc))
                return
            if end < 0:
                self._tail = (tail + data[start:])[-3:] if size - start < 3 else data[-3:]
                return
            if not self._head_ended:
                self._protocol_error("the response head does not end at its blank line")
                return
            self._tail = b""
            self._head_size = 0
            if not self._interim:
                break
            # An interim answer: the real one follows, on a parser of its own.
            self._parser = httptools.HttpResponseParser(self)
            self._reason, self._headers, self._head_ended, self._interim = b"", [], False, False
            self._non_ascii = False
            if end == size:
                return
            start = end
        # The final head: what follows it is body, by the framing its fields gave.
        phase = self._phase = self._next_phase
        self._cancel_timer()  # the wait for the head is over; a wait for the body starts its own clock
        if phase == _LENGTH:
            if end < size:
                self._receive_length(data[end:])
            self._wake()  # the head is here
        elif phase == _DONE:
            if end < size:
                self._clean = False  # a body after HEAD, 204 or 304, or after Content-Length: 0
            self._done()
        elif phase == _CHUNKED:
            if end < size:
                self._receive_chunked(data, end)
            self._wake()
        else:
            if end < size:
                self._push(data[end:])
            self._wake()

    def _receive_chunked(self, data: bytes, start: int) -> None:
        """Feed llhttp a piece of chunked body (`data` from `start`), and see whether the body ends
        exactly at its last byte.

        A chunked body ends with a line feed. When the piece ends with one, it is fed in two parts,
        the last byte alone: if the body ended while llhttp parsed the first part, bytes followed it.
        When the piece ends with anything else, an end inside it has bytes after it. Bytes after the
        end may upset llhttp, or be taken by it for the start of another message (whose head would
        raise in `on_headers_complete`); either way they are never delivered.
        """
        size = len(data) - start
        if self._overhead > MAX_CHUNK_OVERHEAD:  # reads since the last piece of body held none
            self._protocol_error("chunk framing or trailers too large")
            return
        self._overhead += size
        parser = self._parser
        assert parser is not None
        exact = data[-1] == _LF
        try:
            if exact and size > 1:
                view = memoryview(data)
                parser.feed_data(view[start:-1])
                if not self._ended:
                    parser.feed_data(view[-1:])
                else:
                    exact = False
            else:
                parser.feed_data(memoryview(data)[start:] if start else data)
        except httptools.HttpParserError as exc:
            if not self._ended:
                self._protocol_error(_malformed("chunked body", exc))
                return
            exact = False
        if self._ended:
            if not exact:
                self._clean = False  # bytes after the last chunk: never delivered
            self._done()

    # -- httptools callbacks --------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > MAX_FIELD:
            raise ProtocolError("the status line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head is not None:
            # A trailer field of a chunked body: dropped, never a header (see the module docstring).
            self._overhead = 0
            return
        headers = self._headers
        if len(name) + len(value) > MAX_FIELD or len(headers) >= MAX_HEADERS:
            raise ProtocolError("a response header is too long, or there are too many")
        # Decoded as aiohttp's parser does (UTF-8, surrogateescape), so every byte passes through unchanged.
        headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
        if not (value.isascii() and name.isascii()):
            self._non_ascii = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        if self._head_ended:  # a second head in the bytes of one: llhttp and we disagree on its end
            raise ProtocolError("the response head does not end at its blank line")
        self._head_ended = True
        status = parser.get_status_code()
        headers = self._headers
        if status < 200:
            if status < 100:
                raise ProtocolError(f"status {status} is not an HTTP status")
            if status == 101:
                raise ProtocolError("101 Switching Protocols, though no upgrade was asked for")
            for name, _ in headers:
                if len(name) in (14, 17) and name.lower() in ("content-length", "transfer-encoding"):
                    raise ProtocolError(f"an interim {status} response with {name}")
            self._interim = True
            return
        version = self._version or parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ProtocolError(f"HTTP/{version} is not HTTP/1.x")
        length: int | None = None
        chunked = False
        keep = version == "1.1"  # an HTTP/1.0 answer is never trusted to keep the connection
        for name, value in headers:
            size = len(name)  # most fields are none of these, and are told apart without lower()
            if size == 14 and name.lower() == "content-length":
                length = int(value)  # llhttp has checked it is one well-formed number, given once
            elif size == 17 and name.lower() == "transfer-encoding":
                if chunked or value.strip(" \t").lower() != "chunked":
                    raise ProtocolError(f"Transfer-Encoding other than a single chunked: {value!r}")
                chunked = True
            elif size == 10 and keep and name.lower() == "connection":
                keep = "close" not in [token.strip(" \t").lower() for token in value.split(",")]
        self._head = Head(
            status, self._reason.decode("utf-8", "surrogateescape"), headers, length, self._non_ascii
        )
        if self._head_request or status == 204 or status == 304:
            self._next_phase = _DONE
            # Not reused: these are the answers whose framing upstreams most often get wrong (a body
            # sent anyway), and body bytes arriving after the next request has gone out on the same
            # connection could not be told from its answer. A new connection costs less than that.
            keep = False
        elif chunked:
            self._next_phase = _CHUNKED
        elif length is not None:
            self._next_phase = _LENGTH if length else _DONE
            self._remaining = length
        else:
            self._next_phase = _UNTIL_CLOSE
            keep = False
        self._clean = keep

    def on_body(self, body: bytes) -> None:
        if self._phase != _CHUNKED:  # heads are fed alone: llhttp saw their end elsewhere than we did
            raise ProtocolError("the response head does not end at its blank line")
        if self._ended:
            raise ProtocolError("a body after the end of the response")  # never delivered
        self._overhead = 0
        self._push(body)

    def on_message_complete(self) -> None:
        # The end of a chunked body. (A head-only message, an interim answer or a 204, ends where its
        # head does, found in `_receive_head`.)
        if self._phase == _CHUNKED:
            self._ended = True


def _malformed(what: str, exc: httptools.HttpParserError) -> str:
    cause = exc.__context__
    if isinstance(cause, ProtocolError):
        return str(cause)
    if isinstance(exc, httptools.HttpParserUpgrade):
        return "an upgrade answer, though no upgrade was asked for"
    return f"malformed {what}: {cause!r}" if cause is not None else f"malformed {what}: {exc}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"the connection failed: {exc.strerror}"
    return f"the connection failed: {exc!r}"


def _truncated(phase: int, remaining: int) -> str:
    if phase == _HEAD:
        return "the upstream closed the connection in the middle of the response head"
    if phase == _LENGTH:
        return f"the upstream closed the connection {remaining} bytes before the end of the body"
    return "the upstream closed the connection before the last chunk of the body"
