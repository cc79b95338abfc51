"""A raw upstream on loopback whose bytes each test scripts exactly, for the `authproxy.h1` client tests.

`RawUpstream` accepts connections on 127.0.0.1 (or a Unix socket), reads each request (head and body,
Content-Length or chunked) and hands it to the test's `answer(conn, request)` coroutine, which writes
whatever bytes it likes with `conn.write`, pauses, resets (`conn.reset()`: an RST, by SO_LINGER 0) or
closes (`conn.close()`: a FIN). A request for `/next` (a query may follow) is always answered with
`NEXT`, so a test can send one after the exchange under test and see both what it gets and on which
connection it arrived.

Every connection is numbered in the order it was accepted; `upstream.seen` lists, for each request,
its connection's number and its target.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Next: yes\r\n\r\nnext"


@dataclass
class Request:
    method: str
    target: str
    head: bytes
    body: bytes
    number: int  # of the connection it came on


@dataclass
class Conn:
    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # the answer's script has run

    async def write(self, data: bytes, *, pause: float = 0.0) -> None:
        """Write `data` (as its own write: drained, then `pause` seconds, so it leaves in its own segment)."""
        self.writer.write(data)
        await self.writer.drain()
        if pause:
            await asyncio.sleep(pause)

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()


Answer = Callable[[Conn, Request], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return head, bytes(body)
    length = int(fields.get(b"content-length", b"0"))
    return head, await reader.readexactly(length)


class RawUpstream:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.conns: list[Conn] = []
        self.seen: list[tuple[int, str]] = []
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Future[None]] = set()
        self.url = ""

    async def start(self, unix_path: str = "") -> RawUpstream:
        if unix_path:
            self._server = await asyncio.start_unix_server(self._serve, unix_path)
            self.url = f"unix://{unix_path}"
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._answering):
            task.cancel()  # a script still pausing has nobody left to talk to
        for conn in self.conns:
            conn.writer.transport.abort()  # every connection's reader sees its end, and its task ends
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> RawUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(len(self.conns), reader, writer)
        self.conns.append(conn)
        try:
            while conn.open:
                got = await read_request(reader)
                if got is None:
                    break
                head, body = got
                method, target = head.split(b" ", 2)[:2]
                request = Request(method.decode(), target.decode(), head, body, conn.number)
                self.seen.append((conn.number, request.target))
                self.requests.append(request)
                if request.target.startswith("/next"):
                    await conn.write(NEXT)
                    continue
                # A task of its own, so `stop()` can cancel a script without cancelling this one
                # (whose cancellation asyncio's stream server reports as an error).
                answering = asyncio.ensure_future(self.answer(conn, request))
                self._answering.add(answering)
                try:
                    await asyncio.wait({answering})
                finally:
                    self._answering.discard(answering)
                    conn.finished.set()
                if answering.cancelled():
                    break
                if (error := answering.exception()) is not None:
                    raise error
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            if conn.open:
                writer.close()


def script(*steps: bytes | float | str) -> Answer:
    """An answer from steps: bytes are written (each its own write), a float pauses that many seconds,
    "reset" resets the connection and "close" closes it (both end the script)."""

    async def answer(conn: Conn, request: Request) -> None:
        for step in steps:
            if isinstance(step, bytes):
                await conn.write(step)
            elif isinstance(step, float | int):
                await asyncio.sleep(step)
            elif step == "reset":
                conn.reset()
                return
            elif step == "close":
                conn.close()
                return
            else:
                raise ValueError(step)

    return answer
