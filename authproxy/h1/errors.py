"""What can go wrong talking to an upstream, typed so the forwarder can answer 502, 503 or 504 and log why.

Every error carries a short machine word and a `detail` for the operator that names the cause (the
certificate verification message, the socket error, what was malformed):

- `UpstreamError` (a `ConnectionError`): the exchange failed; `kind` says how.
  "refused"    no connection could be made (refused, unreachable, no such socket file)
  "dns"        the upstream's name did not resolve
  "tls"        the TLS handshake or a TLS record failed (verification, a client certificate refused)
  "reset"      the upstream reset the connection
  "closed"     the upstream closed the connection before any byte of a response (or we had to, because
               the request body could not be read from the client)
  "truncated"  the upstream closed the connection in the middle of a response: a head cut short, or a
               body that ended before its Content-Length or its last chunk
  "protocol"   the bytes are not a valid HTTP/1.1 response to the request sent
- `UpstreamTimeout` (a `TimeoutError`): a time limit passed; `stage` says which.
  "connect"    TCP connect and TLS handshake
  "write"      the request body made no progress
  "response"   the response head did not come after the request was sent
  "read"       the response body made no progress
- `PoolExhausted`: no connection could be had from the pool within its acquire timeout.

The connection an error happened on is never reused.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["refused", "reset", "dns", "tls", "protocol", "truncated", "closed"]
Stage = Literal["connect", "response", "read", "write"]


class UpstreamError(ConnectionError):
    """The exchange with the upstream failed.

    `answered` says whether any byte of a response had arrived: a pooled connection that ends before
    that may simply have been closed by the upstream while idle, and an idempotent request is resent.
    """

    def __init__(self, kind: Kind, detail: str, *, answered: bool = True) -> None:
        super().__init__(detail)
        self.kind: Kind = kind
        self.detail = detail
        self.answered = answered

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class UpstreamTimeout(TimeoutError):
    """The upstream did not make progress within the time limit of one stage of the exchange."""

    def __init__(self, stage: Stage, detail: str) -> None:
        super().__init__(detail)
        self.stage: Stage = stage
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.stage} timeout: {self.detail}"


class PoolExhausted(Exception):
    """Every connection the pool may open is busy, and none came free within the acquire timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
