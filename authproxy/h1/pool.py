"""The connection pool and one request/response exchange through it.

Idle connections are kept per origin, newest first, and dropped after `keepalive` seconds (below the
usual server-side keep-alive of 60-75 s, so the pool rarely meets a connection the upstream has just
closed). A connection is taken from the pool only if it is still open and nothing arrived on it while
idle (a byte or an end of connection then closes it at once, see `connection`).

At most `limit` connections are open at once, to all origins together. A request beyond that waits,
first come first served, for at most `acquire_timeout` seconds (then `PoolExhausted`). A slot that
frees up goes straight to the first waiter: the connection itself when it goes to the same upstream,
otherwise the right to open one (the idle connection makes way). Nobody who arrives later can take it
in between, and a waiter cancelled in the very moment it was served passes what it got on to the next.
With nobody waiting, a request for an upstream without an idle connection, when the pool is full of
idle connections to others, closes the oldest of those and opens its own.

A pooled connection can still have been closed by the upstream a moment ago. When a request on a
reused connection gets no byte of an answer before the connection ends, and it is idempotent and
has no body to replay, it is sent once more on a fresh connection (RFC 9112, section 9.3.1).

TLS: one `ssl.SSLContext` per distinct set of settings (`Origin.tls_settings`), built on first use and
kept: the system's trust store, or `ca_file` instead of it; no verification at all with
`verify=False`; a client certificate for mutual TLS. The server name checked and sent as SNI is
`Origin.server_name`, else the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections import deque
from collections.abc import Iterable

from authproxy.h1.connection import Connection, Head
from authproxy.h1.errors import PoolExhausted, UpstreamError, UpstreamTimeout
from authproxy.h1.wire import BodySource, Origin, request_head, write_body

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Response:
    """An upstream response whose body is read with `read()`; `release()` ends the exchange.

    `headers` are the response's fields in order, names and values decoded from bytes as UTF-8 with
    `surrogateescape` (so encoding them the same way gives back every byte, UTF-8 or not). Interim
    responses never show here, and neither do trailer fields.
    """

    __slots__ = (
        "_connection",
        "_pool",
        "_released",
        "_writer",
        "content_length",
        "headers",
        "non_ascii",
        "reason",
        "status",
    )

    def __init__(
        self, pool: Pool, connection: Connection, head: Head, writer: asyncio.Task[None] | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._writer = writer
        self._released = False
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.content_length = head.content_length
        self.non_ascii = head.non_ascii  # some header byte is not ASCII (perhaps not UTF-8 either)

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end, which is the end its framing gives.

        Raises `UpstreamError` when the body ends otherwise (cut short, reset, malformed) and
        `UpstreamTimeout` (stage "read") when the upstream sends nothing for the read timeout.
        """
        if self._released:
            raise RuntimeError("the response was released")
        return await self._connection.read()

    @property
    def body_ready(self) -> bool:
        """Reading the body now would not wait for the upstream (a small answer arrived whole)."""
        return self._connection.body_ready

    def release(self) -> None:
        """End the exchange: the connection goes back to the pool only if the body was read to its
        framed end and nothing else arrived; otherwise it is closed. Calling it again does nothing."""
        if not self._released:
            self._released = True
            self._pool.release(self._connection, self._writer)


class Pool:
    def __init__(self, *, limit: int = 512, keepalive: float = 15.0, acquire_timeout: float = 5.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._acquire_timeout = acquire_timeout
        self._count = 0  # connections open or being opened, and slots granted to waiters
        self._idle: dict[Origin, list[Connection]] = {}
        self._waiters: deque[tuple[Origin, asyncio.Future[Connection | None]]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._tls: dict[tuple[str, bool, str, str], ssl.SSLContext] = {}
        self._closed = False

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: BodySource | bytes | None,
        *,
        connect_timeout: float,
        response_timeout: float,
        read_timeout: float,
        resend: bool = False,
    ) -> Response:
        """Send one request and wait for the head of its response.

        A `bytes` body goes out whole, with the head and its Content-Length (a small body the caller
        already has: no task streams it). `resend` lets such a request be sent once more on a fresh
        connection, like an idempotent one without a body, when a reused connection ended before any
        answer: for a caller whose request does no harm done twice.

        Raises `UpstreamError`, `UpstreamTimeout` (stage "connect", "write" or "response") or
        `PoolExhausted`. The caller reads the body and must call `release()` on the response.
        """
        stream = None
        if isinstance(body, bytes):
            headers = [*headers, ("Content-Length", str(len(body)))]
            head, chunked = request_head(method, target, origin, headers, body=True)
            head += body
            retry = resend
        else:
            head, chunked = request_head(method, target, origin, headers, body=body is not None)
            retry = body is None and method in IDEMPOTENT
            stream = body
        while True:
            connection = await self._acquire(origin, connect_timeout)
            connection.begin(method == "HEAD", response_timeout, read_timeout, stream is not None)
            writer = None
            try:
                connection.write(head)
                if stream is not None:
                    writer = asyncio.ensure_future(write_body(connection, stream, chunked))
                    writer.add_done_callback(_retrieve)
                response_head = await connection.head()
            except UpstreamError as exc:
                self.release(connection, writer)
                if retry and connection.reused and not exc.answered:
                    retry = False
                    continue
                raise
            except BaseException:
                self.release(connection, writer)
                raise
            return Response(self, connection, response_head, writer)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for connection in stack:
                self._drop(connection)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def release(self, connection: Connection, writer: asyncio.Task[None] | None = None) -> None:
        """End an exchange: the connection goes back to the pool if it ended cleanly, else is closed."""
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered, or failed, before reading the whole body
            connection.close()
        if connection.finished and not self._closed:
            connection.idle()
            self._put(connection)
        else:
            self._drop(connection)

    # -- slots -------------------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, connect_timeout: float) -> Connection:
        stack = self._idle.get(origin)
        if stack:
            now = asyncio.get_running_loop().time()
            while stack:
                connection = stack.pop()
                if connection.usable and now - connection.idle_since <= self._keepalive:
                    connection.reused = True
                    return connection
                self._drop(connection)
        if not self._waiters:
            if self._count < self._limit:
                self._count += 1
                return await self._open(origin, connect_timeout)
            if self._evict():
                return await self._open(origin, connect_timeout)
        granted = await self._wait_turn(origin)
        if granted is not None:
            if granted.usable:
                granted.reused = True
                return granted
            granted.counted = False  # it died on the way over; its slot is ours to open another
            granted.close()
        return await self._open(origin, connect_timeout)

    async def _wait_turn(self, origin: Origin) -> Connection | None:
        """Queue for a slot: a connection to `origin` (None: the right to open one)."""
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        entry = (origin, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self._acquire_timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Served in the same moment we gave up (timed out, or cancelled): what we were given
                # goes to the next in line, or the slot would be lost and the next one stuck.
                granted = waiter.result()
                if granted is not None:
                    self._put(granted)
                else:
                    self._free_slot()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(
                    f"all {self._limit} upstream connections stayed busy for {self._acquire_timeout:g} s"
                ) from None
            raise

    def _put(self, connection: Connection) -> None:
        """A clean connection is free: to the first waiter, else to the idle stack of its origin."""
        origin = connection.origin
        while self._waiters:
            wanted, waiter = self._waiters.popleft()
            if waiter.done():
                continue  # cancelled; its task removes nothing more
            if wanted == origin:
                waiter.set_result(connection)
            else:
                connection.counted = False  # its slot passes to the waiter, to open their own
                connection.close()
                waiter.set_result(None)
            return
        connection.idle_since = asyncio.get_running_loop().time()
        stack = self._idle.get(origin)
        if stack is None:
            stack = self._idle[origin] = []
        stack.append(connection)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def _drop(self, connection: Connection) -> None:
        connection.close()
        if connection.counted:
            connection.counted = False
            self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._count -= 1

    def _evict(self) -> bool:
        """Close the oldest idle connection of any origin, keeping its slot for the caller."""
        for origin, stack in self._idle.items():
            if stack:
                connection = stack.pop(0)
                if not stack:
                    del self._idle[origin]
                connection.counted = False
                connection.close()
                return True
        return False

    def _expire(self) -> None:
        """Close connections idle for longer than `keepalive`; runs while any are idle."""
        self._sweep = None
        now = asyncio.get_running_loop().time()
        for origin, stack in list(self._idle.items()):
            kept = [c for c in stack if c.usable and now - c.idle_since <= self._keepalive]
            for connection in stack:
                if connection not in kept:
                    self._drop(connection)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive / 2, self._expire)

    # -- opening -----------------------------------------------------------------------------------

    async def _open(self, origin: Origin, connect_timeout: float) -> Connection:
        """Open a connection in a slot already counted; the slot is freed again if that fails."""
        loop = asyncio.get_running_loop()
        connection = Connection(loop, origin)
        try:
            async with asyncio.timeout(connect_timeout):
                if origin.unix_path:
                    await loop.create_unix_connection(lambda: connection, origin.unix_path)
                elif origin.tls:
                    await loop.create_connection(
                        lambda: connection,
                        origin.host,
                        origin.port,
                        ssl=self._tls_context(origin),
                        server_hostname=origin.server_name or origin.host,
                    )
                else:
                    await loop.create_connection(lambda: connection, origin.host, origin.port)
        except BaseException as exc:
            self._drop(connection)
            error = _connect_error(exc, origin, connect_timeout)
            if error is None:
                raise
            raise error from exc
        return connection

    def _tls_context(self, origin: Origin) -> ssl.SSLContext:
        settings = origin.tls_settings
        context = self._tls.get(settings)
        if context is None:
            try:
                context = make_tls_context(*settings)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise UpstreamError("tls", f"the TLS settings cannot be used: {exc}", answered=False) from exc
            self._tls[settings] = context
        return context


def make_tls_context(
    ca_file: str, verify: bool, client_cert_file: str, client_key_file: str
) -> ssl.SSLContext:
    """The client context for one set of upstream TLS settings (also used for websocket upstreams)."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file:
        context = ssl.create_default_context(cafile=ca_file)  # the bundle instead of the system's
    else:
        context = ssl.create_default_context()
    if client_cert_file:
        context.load_cert_chain(client_cert_file, client_key_file)
    return context


def _connect_error(exc: BaseException, origin: Origin, timeout: float) -> BaseException | None:
    """The typed error for a failure to connect; None for what is not one (a cancellation)."""
    where = origin.where
    if isinstance(exc, UpstreamError | UpstreamTimeout):
        return exc
    if isinstance(exc, TimeoutError):
        stage = "TLS handshake" if origin.tls else "connection"
        return UpstreamTimeout("connect", f"no {stage} with {where} within {timeout:g} s")
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or exc.reason or str(exc)
        return UpstreamError("tls", f"certificate verification failed for {where}: {message}", answered=False)
    if isinstance(exc, ssl.SSLError):
        return UpstreamError("tls", f"TLS handshake with {where} failed: {exc.reason or exc}", answered=False)
    if isinstance(exc, socket.gaierror):
        return UpstreamError("dns", f"{origin.host} does not resolve: {exc.strerror or exc}", answered=False)
    if isinstance(exc, ConnectionResetError):
        return UpstreamError(
            "reset", f"{where} reset the connection while it was being set up", answered=False
        )
    if isinstance(exc, OSError):
        # asyncio words its own message ("Connect call failed"); the errno tells the cause.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return UpstreamError("refused", f"cannot connect to {where}: {reason}", answered=False)
    return None


def _retrieve(task: asyncio.Task[None]) -> None:
    # The body writer's failure shows up as the exchange's failure; its own exception is only read.
    if not task.cancelled():
        task.exception()
