"""The request side of the wire: where an upstream is, the request head, and the body as it streams.

An `Origin` is everything that decides which connections a request may share: the address (host and
port, or a Unix socket path) and, for https, the TLS settings. Two upstreams that differ in any of them
never share a pooled connection, so a request never rides on a connection verified (or identified to
the upstream with a client certificate) under another upstream's settings.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from yarl import URL

from authproxy.h1.errors import UpstreamError

if TYPE_CHECKING:
    from authproxy.h1.connection import Connection

# Methods aiohttp sent without `Content-Length: 0` when they carried no body.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_UNIX = "unix://"


class BodySource(Protocol):
    """Where a request body comes from: aiohttp's `StreamReader` (the client's body) is one."""

    async def readany(self) -> bytes:
        """The next piece of the body, as soon as some is there; b"" at its end."""
        ...


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream's connections go, how they are secured, and the `Host` header they carry."""

    host: str
    port: int
    tls: bool
    host_header: str
    unix_path: str = ""  # connect to this Unix socket instead of host:port
    ca_file: str = ""  # PEM bundle that replaces the system trust store
    verify: bool = True
    server_name: str = ""  # sent as SNI and checked against the certificate, instead of `host`
    client_cert_file: str = ""
    client_key_file: str = ""
    # Origins key the pool's idle connections; a request looks one up, so the hash is computed once.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self._key()))

    def __hash__(self) -> int:
        return self._hash

    def _key(self) -> tuple[object, ...]:
        return (
            self.host,
            self.port,
            self.tls,
            self.host_header,
            self.unix_path,
            self.ca_file,
            self.verify,
            self.server_name,
            self.client_cert_file,
            self.client_key_file,
        )

    @property
    def tls_settings(self) -> tuple[str, bool, str, str]:
        """What an `ssl.SSLContext` for this origin is built from (the server name is per connection)."""
        return (self.ca_file, self.verify, self.client_cert_file, self.client_key_file)

    @property
    def where(self) -> str:
        """The address, for error messages."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"

    @classmethod
    def split(
        cls,
        url: str,
        *,
        ca_file: str = "",
        verify: bool = True,
        server_name: str = "",
        client_cert_file: str = "",
        client_key_file: str = "",
    ) -> tuple[Origin, str]:
        """The origin of an upstream URL, and the path prefix that goes before every request target.

        `url` is `http://host[:port][/prefix]`, `https://...`, or `unix:///path/to/app.sock` (a Unix
        socket; requests carry `Host: localhost` unless the caller sets one, and no prefix). The TLS
        settings apply to https only; passing any of them for another scheme is an error.
        """
        tls_given = bool(ca_file or not verify or server_name or client_cert_file or client_key_file)
        if bool(client_cert_file) != bool(client_key_file):
            raise ValueError("a client certificate needs both client_cert_file and client_key_file")
        if url.startswith(_UNIX):
            path = url[len(_UNIX) :]
            if not path.startswith("/") or "?" in path or "#" in path or path.endswith("/"):
                raise ValueError(f"a Unix socket upstream is written unix:///absolute/path.sock, got {url!r}")
            if tls_given:
                raise ValueError("TLS settings apply to https:// upstreams only")
            return cls("localhost", 0, False, "localhost", unix_path=path), ""
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or parsed.host is None or parsed.port is None:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        tls = parsed.scheme == "https"
        if tls_given and not tls:
            raise ValueError("TLS settings apply to https:// upstreams only")
        authority_end = url.find("/", url.find("//") + 2)
        prefix = url[authority_end:] if authority_end >= 0 else ""
        origin = cls(
            parsed.host,
            parsed.port,
            tls,
            parsed.host_port_subcomponent or "",
            ca_file=ca_file,
            verify=verify,
            server_name=server_name,
            client_cert_file=client_cert_file,
            client_key_file=client_key_file,
        )
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


async def write_body(connection: Connection, body: BodySource, chunked: bool) -> None:
    """Stream the client's body upstream, at the pace the upstream reads it.

    The connection counts each piece handed on as progress: an upload may take as long as it takes
    while its bytes move. When the body is all written, the wait for the response head begins.
    """
    try:
        while data := await body.readany():
            if chunked:
                connection.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                connection.write(data)
            await connection.drain()
        if chunked:
            connection.write(b"0\r\n\r\n")
        connection.sent()
    except BaseException as exc:
        # Half a request must never be followed by another one on the same connection. A failure of
        # the connection itself is already the exchange's error; anything else (the client's side of
        # the body broke off) becomes it, so the caller is not left waiting for an answer that
        # cannot come.
        connection.abort(
            UpstreamError("closed", f"the request body could not be sent: {exc!r}", answered=False)
        )
        raise
