"""Websocket frames written by hand, for the frames no well-behaved library sends: a compressed frame on
a connection that negotiated no compression, a header announcing 20 MB whose payload is then trickled.

`RawClient` opens a websocket to a URL over a plain socket; `RawUpstream` is an upstream that accepts a
handshake and then runs a script against the socket. Neither keeps a payload in memory beyond the chunk
it is writing, so the process's memory growth measures the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def rss_bytes() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame_header(
    opcode: int, length: int, *, fin: bool = True, rsv1: bool = False, mask: bytes | None
) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, masked | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    return head + (mask or b"")


def masked(payload: bytes, mask: bytes, offset: int = 0) -> bytes:
    """`payload` masked as the bytes at `offset` of a frame's payload."""
    key = (mask * (len(payload) // 4 + 2))[offset % 4 : offset % 4 + len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


def deflate_bomb(inflated: int) -> bytes:
    """A raw deflate stream (permessage-deflate's form) of `inflated` zero bytes: about 1/1000 the size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated >> 20)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    return data[:-4] if data.endswith(b"\x00\x00\xff\xff") else data


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return (
            struct.unpack("!H", self.payload[:2])[0]
            if self.opcode == CLOSE and len(self.payload) >= 2
            else None
        )


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """One frame from an unmasked (server) or masked (client) sender; payloads here are small."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if second & 0x80 else None
    payload = await reader.readexactly(length)
    return Frame(first & 0x0F, masked(payload, mask) if mask else payload)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


class RawClient:
    """A websocket client over a plain socket: sends exactly the bytes a test writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]):
        self.reader = reader
        self.writer = writer
        self.headers = headers  # the 101's headers, lower-cased
        self.mask = os.urandom(4)

    @classmethod
    async def connect(cls, url: str, extra: dict[str, str] | None = None) -> RawClient:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {parts.path or '/'} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, headers = await read_head(reader)
        assert status == 101, status
        assert headers["sec-websocket-accept"] == accept_key(key)
        return cls(reader, writer, headers)

    async def send(self, opcode: int, payload: bytes, *, rsv1: bool = False) -> None:
        self.writer.write(frame_header(opcode, len(payload), rsv1=rsv1, mask=self.mask))
        self.writer.write(masked(payload, self.mask))
        await self.writer.drain()

    async def trickle(self, opcode: int, length: int, chunk: int = 1 << 20) -> int:
        """Announce a `length`-byte frame, then write its payload a chunk at a time until the peer stops
        taking it; returns how many payload bytes were written."""
        self.writer.write(frame_header(opcode, length, mask=self.mask))
        block = masked(b"t" * chunk, self.mask)  # chunk is a multiple of 4: the mask lines up every time
        sent = 0
        try:
            while sent < length:
                self.writer.write(block[: min(chunk, length - sent)])
                await asyncio.wait_for(self.writer.drain(), 2)
                sent += min(chunk, length - sent)
        except (ConnectionError, TimeoutError):
            pass
        return sent

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An upstream that answers a websocket handshake with 101 (no extension), then runs `script`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.server: asyncio.Server | None = None
        self.handshakes: list[dict[str, str]] = []
        self.finished = asyncio.Event()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.handshakes.append(headers)
            accept = accept_key(headers["sec-websocket-key"])
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            await writer.drain()
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.finished.set()
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
