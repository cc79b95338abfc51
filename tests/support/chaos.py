"""Misbehaving network peers for fault-injection and protocol-abuse tests, all real sockets on loopback.

- `RawServer`: a hand-written HTTP/1.1 server whose behaviour per request is a swappable coroutine, so a
  test can make an upstream answer garbage, hang or reset mid-body, then heal it. It reads requests with
  strict framing (one Content-Length or chunked, never both) and records each one, and any stream it
  could not frame, which is how the smuggling tests see exactly what the proxy sent upstream.
- `ChaosRelay`: a TCP relay in front of a real server (the fake CentralAuth, Redis) that can pass bytes
  through, split answers into small TCP segments, black-hole traffic or cut connections mid-answer.
- `RawTarget`: the proxy under test in front of a `RawServer`, driven with raw bytes.
- `LoopbackServer`: what these servers (and support.servlets' recording relay) share: a free loopback
  port, and a `stop()` that cancels the connections still open.
- `log_problems`: the markers of an exception nobody handled, looked for in captured output.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    import pytest

    from support.harness import Proxy

# What aiohttp, asyncio and Python print when an exception escaped every handler.
PROBLEM_MARKERS = (
    "Traceback",
    "Error handling request",
    "Unhandled exception",
    "Task exception was never retrieved",
    "Exception in callback",
    "was never awaited",
)


def log_problems(text: str) -> list[str]:
    """Lines of captured output that show an unhandled exception; empty when the run was clean."""
    return [line for line in text.splitlines() if any(marker in line for marker in PROBLEM_MARKERS)]


class LogCheck:
    """Everything a test printed or logged, checked for unhandled exceptions.

    Both halves matter: structlog and the access log print, while aiohttp and asyncio report through
    `logging`, which pytest captures separately.
    """

    def __init__(self, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
        self._capfd = capfd
        self._caplog = caplog

    def assert_clean(self) -> None:
        out, err = self._capfd.readouterr()
        problems = log_problems(out + err + self._caplog.text)
        self._caplog.clear()  # each check covers what happened since the previous one
        assert not problems, "unhandled exception in the logs:\n" + "\n".join(problems[:20])


@dataclass
class RawRequest:
    head: bytes
    body: bytes

    @property
    def line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]

    def header(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        values = []
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                values.append(value.strip().decode("latin-1"))
        return values


class Malformed(Exception):
    """The byte stream is not a request a strict HTTP/1.1 server would accept."""


async def read_request(reader: asyncio.StreamReader) -> RawRequest:
    """One request with strict framing; IncompleteReadError at a clean end of stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    request = RawRequest(head[:-4], b"")
    lengths = request.header("content-length")
    chunked = [v for v in request.header("transfer-encoding") if v]
    if chunked and lengths:
        raise Malformed("Content-Length and Transfer-Encoding together")
    if len(set(lengths)) > 1:
        raise Malformed("conflicting Content-Length")
    if chunked:
        if [v.lower() for v in chunked] != ["chunked"]:
            raise Malformed(f"unexpected Transfer-Encoding {chunked}")
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = _number(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are expected from the proxy
                break
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise Malformed("chunk without CRLF")
        request.body = bytes(body)
    elif lengths:
        request.body = await reader.readexactly(_number(lengths[0].encode(), 10))
    return request


def _number(text: bytes, base: int) -> int:
    digits = b"0123456789abcdefABCDEF"[: 10 if base == 10 else 22]
    if not text or text.strip(digits):
        raise Malformed(f"not a base-{base} number: {text[:20]!r}")
    return int(text, base)


Behaviour = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]


def respond(status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def answer_ok(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """The well-behaved upstream: echoes the request line, keeps the connection."""
    writer.write(respond(200, f"raw upstream saw {request.line}".encode()))
    await writer.drain()
    return True


def send_raw(data: bytes, *, keep_open: bool = False) -> Behaviour:
    """Answer with exactly these bytes, then close (or, with `keep_open`, await the next request)."""

    async def behaviour(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep_open

    return behaviour


async def reset_at_once(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    writer.transport.abort()
    return False


async def reset_mid_body(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """Promise 100 kB, send 1 kB, then reset: the client has its headers and half a body."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()
    return False


async def hang(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(3600)
    return False


async def answer_twice(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """A buggy upstream that sends an unsolicited second response after the real one."""
    writer.write(respond(200, f"answer to {request.target}".encode()) + respond(200, b"UNSOLICITED"))
    await writer.drain()
    return True


class LoopbackServer:
    """A TCP server on a free loopback port whose connection handler (`_serve`) registers its task in
    `_tasks`, so that `stop()` can cancel the connections still open before closing the listener."""

    _server: asyncio.Server | None
    _tasks: set[asyncio.Task[None]]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()


@dataclass
class RawServer(LoopbackServer):
    """A scripted HTTP/1.1 server; `behaviour` may be swapped at any time."""

    behaviour: Behaviour = answer_ok
    seen: list[RawRequest] = field(default_factory=list)  # in arrival order, across connections
    malformed: list[str] = field(default_factory=list)  # framing a strict server would have refused
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def requests(self) -> list[RawRequest]:
        """Every request received so far, in arrival order, framed strictly."""
        return list(self.seen)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await read_request(reader)
                self.seen.append(request)
                if not await self.behaviour(request, writer):
                    break
        except Malformed as exc:
            self.malformed.append(str(exc))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only `stop()` cancels; ending quietly keeps asyncio from reporting a cancelled handler task.
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


@dataclass
class RawTarget:
    """The proxy under test in front of a `RawServer`: raw bytes in; the answer, and what reached the
    upstream because of them, out."""

    proxy: Proxy
    upstream: RawServer

    @property
    def port(self) -> int:
        return int(self.proxy.url.rsplit(":", 1)[1])

    async def send(self, data: bytes, wait: float = 0.3) -> tuple[bytes, list[RawRequest]]:
        """Raw bytes in; the raw answer out, and the requests the upstream received because of them."""
        before = len(self.upstream.seen)
        answer = await exchange(self.port, data, wait=wait)
        await asyncio.sleep(0.05)  # let the upstream side finish reading what was sent
        assert self.upstream.malformed == [], "the upstream received ambiguous framing"
        return answer, self.upstream.seen[before:]


class ChaosRelay(LoopbackServer):
    """A TCP relay to `target_port` whose `mode` applies to every connection, open ones included.

    Modes: "pass"; "split" (answers go out in `piece`-byte segments `gap` seconds apart, so the client
    sees one answer arrive in several reads); "blackhole" (bytes in both directions are dropped: a
    network partition); "reset" (each connection is cut as the first answer bytes arrive); "refuse"
    (new connections are reset as soon as they are accepted: the server is down).
    """

    def __init__(self, target_port: int, piece: int = 64, gap: float = 0.005) -> None:
        self.target_port = target_port
        self._mode = "pass"
        self.piece = piece
        self.gap = gap
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode = mode
        if mode == "refuse":
            # A server that went down takes its open connections with it, pooled ones included.
            for transport in list(self._transports):
                transport.abort()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.mode == "refuse":
            client_writer.transport.abort()
            self._tasks.discard(task)
            return
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            self._tasks.discard(task)
            return
        transports = {client_writer.transport, target_writer.transport}
        self._transports |= transports
        legs = [
            asyncio.ensure_future(self._pump(client_reader, target_writer, answers=False)),
            asyncio.ensure_future(self._pump(target_reader, client_writer, answers=True)),
        ]
        try:
            await asyncio.wait(legs, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # only `stop()` cancels; see RawServer._serve
        finally:
            for leg in legs:
                leg.cancel()
            await asyncio.gather(*legs, return_exceptions=True)
            for transport in transports:
                transport.abort()
            self._transports -= transports
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answers: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue
                if answers and self.mode == "reset":
                    return
                if answers and self.mode == "split":
                    for start in range(0, len(data), self.piece):
                        writer.write(data[start : start + self.piece])
                        await writer.drain()
                        await asyncio.sleep(self.gap)
                    continue
                writer.write(data)
                await writer.drain()


def status_of(response: bytes) -> int:
    """The status code of the first response in a raw byte string (0 when there is none)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    return int(match.group(1)) if match else 0


async def exchange(port: int, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything received until close or `wait` of silence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = bytearray()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)
    finally:
        writer.transport.abort()
