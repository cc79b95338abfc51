"""The request side of the wire: where an upstream is, the request head, and the body as it streams.

The head is framed the way aiohttp's client framed it, so upstreams see what they always saw: `Host`
first (unless the caller sets one), the caller's headers in order, `Content-Length: 0` for a bodyless
POST/PUT/PATCH/DELETE, and `Transfer-Encoding: chunked` for a body of unknown length. Header values
go out as the exact bytes the client sent: aiohttp's server decodes them as UTF-8 with
`surrogateescape`, and encoding them the same way gives every byte back, UTF-8 or not. A CR or LF
inside a name or value is refused rather than sent, since it would let a value start a header or a
request of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import StreamReader
from yarl import URL

from authproxy.h1.connection import Connection

# Methods aiohttp sent without `Content-Length: 0` when they carried no body.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream's connections go, and the `Host` header they carry by default."""

    host: str
    port: int
    tls: bool
    host_header: str

    @classmethod
    def split(cls, url: str) -> tuple[Origin, str]:
        """The origin of an upstream URL, and the path prefix that goes before every request target."""
        parsed = URL(url)
        if parsed.host is None or parsed.port is None:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        authority_end = url.find("/", url.find("//") + 2)
        prefix = url[authority_end:] if authority_end >= 0 else ""
        origin = cls(parsed.host, parsed.port, parsed.scheme == "https", parsed.host_port_subcomponent or "")
        return origin, prefix


def request_head(
    method: str, target: str, origin: Origin, headers: Iterable[tuple[str, str]], *, body: bool
) -> tuple[bytes, bool]:
    """The request line and headers as bytes, and whether the body goes out chunked."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    host = length = False
    for name, value in headers:
        lowered = name.lower()
        host = host or lowered == "host"
        length = length or lowered == "content-length"
        lines.append(f"{name}: {value}\r\n")
    if not host:
        lines.insert(1, f"Host: {origin.host_header}\r\n")
    chunked = body and not length
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif not body and not length and method not in _BODYLESS:
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("newline or carriage return in a request header")
    return text.encode("utf-8", "surrogateescape"), chunked


async def write_body(connection: Connection, body: StreamReader, chunked: bool) -> None:
    """Stream the client's body upstream, at the pace the upstream reads it."""
    try:
        while data := await body.readany():
            if chunked:
                connection.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                connection.write(data)
            await connection.drain()
        if chunked:
            connection.write(b"0\r\n\r\n")
    except BaseException:
        # Half a request must never be followed by another one on the same connection.
        connection.close()
        raise
