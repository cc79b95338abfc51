"""The connection pool and one request/response exchange through it.

Idle connections are kept per origin, newest first, and dropped after `keepalive` seconds (below the
usual server-side keep-alive of 60-75 s, so the pool rarely meets a connection the upstream has just
closed). At most `limit` connections are open at once; a request beyond that waits for one to free up.

A pooled connection can still have been closed by the upstream a moment ago. When a request on a
reused connection gets no byte of an answer before the connection ends, and it is idempotent and
has no body to replay, it is sent once more on a fresh connection (RFC 9112 §9.3.1).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable

from aiohttp import StreamReader

from authproxy.h1.connection import Connection, Head
from authproxy.h1.errors import Disconnected
from authproxy.h1.wire import Origin, request_head, write_body

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Response:
    """An upstream response whose body is read with `read()`; `release()` ends the exchange."""

    def __init__(
        self, pool: Pool, connection: Connection, head: Head, writer: asyncio.Task[None] | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._writer = writer
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.content_length = head.content_length

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        return await self._connection.read()

    @property
    def body_ready(self) -> bool:
        """Reading the body now would not wait for the upstream (a small answer arrived whole)."""
        return self._connection.body_ready

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly, else closed."""
        self._pool.release(self._connection, self._writer)


class Pool:
    def __init__(self, *, limit: int = 512, keepalive: float = 15.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._idle: dict[Origin, list[Connection]] = {}
        self._origins: dict[Connection, Origin] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: StreamReader | None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """Send one request and wait for the head of its response."""
        head, chunked = request_head(method, target, origin, headers, body=body is not None)
        retry = method in IDEMPOTENT and body is None
        while True:
            connection = await self._acquire(origin, connect_timeout)
            connection.begin(method == "HEAD", read_timeout)
            writer = None
            try:
                connection.write(head)
                if body is not None:
                    writer = asyncio.ensure_future(write_body(connection, body, chunked))
                    writer.add_done_callback(_retrieve)
                response_head = await connection.head()
            except Disconnected as exc:
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
        for stack in self._idle.values():
            for connection in stack:
                connection.close()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()

    async def _acquire(self, origin: Origin, connect_timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        while True:
            stack = self._idle.get(origin)
            now = loop.time()
            while stack:
                connection = stack.pop()
                if not connection.usable or now - connection.idle_since > self._keepalive:
                    self._forget(connection)
                    continue
                connection.reused = True
                return connection
            if len(self._origins) < self._limit:
                break
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter
        connection = Connection(loop)
        self._origins[connection] = origin
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: connection,
                    origin.host,
                    origin.port,
                    ssl=self._tls_context() if origin.tls else None,
                )
        except BaseException:
            self._forget(connection)
            raise
        return connection

    def release(self, connection: Connection, writer: asyncio.Task[None] | None = None) -> None:
        """End an exchange: the connection goes back to the pool if it ended cleanly, else is closed."""
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered, or failed, before reading the whole body
            connection.close()
        origin = self._origins.get(connection)
        if origin is None or not connection.finished or self._closed:
            self._forget(connection)
            return
        connection.idle()
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(origin, []).append(connection)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)
        self._wake_one()

    def _forget(self, connection: Connection) -> None:
        connection.close()
        if self._origins.pop(connection, None) is not None:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Close connections idle for longer than `keepalive`; runs while any are idle."""
        self._sweep = None
        now = asyncio.get_running_loop().time()
        for origin, stack in list(self._idle.items()):
            kept = [c for c in stack if c.usable and now - c.idle_since <= self._keepalive]
            for connection in stack:
                if connection not in kept:
                    self._forget(connection)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive / 2, self._expire)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


def _retrieve(task: asyncio.Task[None]) -> None:
    # The body writer's failure shows up as the exchange's failure; its own exception is only read.
    if not task.cancelled():
        task.exception()
