"""What can go wrong talking to an upstream, below the forwarder's 502/504 answers.

A read timeout is the builtin `TimeoutError`; socket errors from connecting stay `OSError`. Both of the
classes here are `ConnectionError`s, so code that treats a dropped peer as a dropped peer keeps working.
"""

from __future__ import annotations


class UpstreamError(ConnectionError):
    """The exchange with the upstream failed; the connection is not reused."""


class Disconnected(UpstreamError):
    """The upstream closed the connection before its response was complete.

    `answered` says whether any byte of a response had arrived: a pooled connection closed before
    that may simply have timed out at the upstream while idle, and an idempotent request is resent.
    """

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class ProtocolError(UpstreamError):
    """The upstream's bytes are not a valid HTTP/1.1 response to the request sent."""
