"""One keep-alive HTTP/1.1 connection to an upstream, and the response arriving on it.

An asyncio protocol fed to httptools (llhttp in strict mode: malformed status lines, duplicate or
conflicting lengths, NULs in headers are all errors). It carries one exchange at a time: `begin()` arms
a fresh parser, the response head resolves `head()`, body bytes queue up for `read()`. Reading from the
socket pauses while more than `HIGH_WATER` bytes wait for the client, so a slow client holds back the
upstream instead of filling memory.

Anything the upstream sends that is not the answer to the request in flight (a second response, data
on an idle connection, a body for HEAD) makes the connection unusable, so it is never handed to the
next request. The read timeout is an idle timeout, like aiohttp's `sock_read`: it measures the time
since the upstream last sent something, and stands still while reading is paused for a slow client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools

from authproxy.h1.errors import Disconnected, ProtocolError

HIGH_WATER = 512 * 1024  # buffered body bytes at which reading from the upstream pauses
LOW_WATER = 128 * 1024  # and resumes
JOIN_LIMIT = 64 * 1024  # buffered pieces up to this much total are joined into one write
_NO_BODY = frozenset({204, 304})
# aiohttp's client limits, kept: an upstream answer beyond them was a 502 before and still is.
MAX_FIELD = 8190
MAX_HEADERS = 128


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None


class _Unsolicited(Exception):
    """Raised from a parser callback to stop parsing a second response to one request."""


def _text(raw: bytes) -> str:
    # What aiohttp's parser makes of header bytes, so values pass through as they always did.
    return raw.decode("utf-8", "surrogateescape")


class Connection(asyncio.Protocol):
    """The protocol of one upstream connection; the pool owns it, `Response` reads through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._read_timeout = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._interim = False
        self._head: Head | None = None
        self._chunks: deque[bytes] = deque()
        self._complete = False
        self._reusable = False
        self._until_close = False
        self._answered = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- the exchange, as the pool and the response use it -------------------------------------------

    def begin(self, head_request: bool, read_timeout: float) -> None:
        """Arm the connection for the response to the request about to be written."""
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._read_timeout = read_timeout
        self._reason, self._headers, self._interim, self._head = b"", [], False, None
        self._complete = self._reusable = self._until_close = self._answered = False
        self._error = None
        self._last_read = self._loop.time()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise Disconnected("the upstream connection is closed", answered=self._answered)
        self.transport.write(data)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise Disconnected("the upstream closed the connection", answered=self._answered)
        if self._writing_paused:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

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
            if self._complete:
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
        return bool(self._chunks) or self._complete or self._error is not None

    @property
    def finished(self) -> bool:
        """The response was read to its end and the connection may carry another request."""
        return self._complete and self._reusable and not self._chunks and self.usable

    @property
    def usable(self) -> bool:
        """Open, as far as we know: not closed by either side (an upstream's FIN may still be in flight)."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def idle(self) -> None:
        """The exchange is over; until the next `begin()`, any byte from the upstream closes us."""
        self._parser = None
        self._cancel_timer()

    def close(self) -> None:
        self.closed = True
        self._parser = None
        self._reusable = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- waiting, with the idle read timeout --------------------------------------------------------

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last_read + self._read_timeout, self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # nobody waits; the next wait starts the clock again from the last read
        due = self._last_read + self._read_timeout
        if self._reading_paused or self._loop.time() < due:
            self._timer = self._loop.call_at(max(due, self._loop.time() + 0.001), self._on_timer)
            return
        self._fail(TimeoutError("the upstream sent nothing within the read timeout"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._reusable = False
        self._wake()

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._complete:
            # Nobody asked: a connection that talks out of turn never carries a request again.
            self.close()
            return
        self._last_read = self._loop.time()
        self._answered = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Unsolicited):
                self._fail(ProtocolError(f"malformed upstream response: {exc.__context__!r}"))
            self.close()  # after an unsolicited answer, the one in flight is complete and kept
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ProtocolError(f"malformed upstream response: {exc!r}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._parser = None
        if self._until_close and self._error is None and not self._complete:
            self._complete = True  # the body was delimited by the end of the connection
            self._wake()
        elif not self._complete:
            self._fail(Disconnected("the upstream closed the connection", answered=self._answered))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head is not None:
            raise _Unsolicited()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > MAX_FIELD:
            raise ProtocolError("status line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD or len(self._headers) >= MAX_HEADERS:
            raise ProtocolError("header too long, or too many headers")
        self._headers.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            # Interim answers (100 Continue, 103 Early Hints) are between the upstream and us.
            self._interim = True
            return
        length: int | None = None
        chunked = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)  # llhttp has checked it is one well-formed number
            elif lowered == "transfer-encoding":
                chunked = value.lower().rstrip().endswith("chunked")
        self._head = Head(status, _text(self._reason), self._headers, length)
        self._reusable = parser.should_keep_alive()
        bodiless = self._head_request or status in _NO_BODY
        self._until_close = not bodiless and length is None and not chunked
        # llhttp cannot be told a response answers HEAD; the exchange ends with the head instead.
        self._complete = self._head_request
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head_request:
            self._reusable = False  # a body in answer to HEAD: the framing can no longer be trusted
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._reason, self._headers = b"", []
            return
        self._complete = True
        self._wake()
