"""The CentralAuth back channel: code exchange (verify), session check (userinfo) and logout.

The calls are those of docs/centralauth.md, made the safe way: urlencoded verify with Basic auth, raw
`text/plain` token bodies, the end user's IP and user agent on every userinfo call, and strict
classification of answers, because the official library deletes the cookie on any userinfo error,
timeouts included, so outages log users out. Here a JSON 4xx is a definite "no"; timeouts, connection
errors, 429, 5xx and anything unparseable are outages, never a logout.

The calls go through a pool of the lean HTTP/1.1 client (`authproxy.h1`) of their own, apart from the
upstreams' and the websockets', kept alive between calls: a session check is the proxy's most frequent
call after the forwarded request itself, and aiohttp's client cost more CPU than the rest of a cold
request. Each call has one deadline, `timeout`, for connecting, sending and reading the whole answer.
A userinfo or logout call that meets a kept-alive connection the server has just closed is sent once
more on a new one (asking twice does no harm); a verify call never is (a code is good only once).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from authproxy.core.user import User
from authproxy.errors import CentralAuthUnavailable, LoginRejected, SessionRejected
from authproxy.h1 import Origin, Pool, PoolExhausted, Response, UpstreamError, UpstreamTimeout
from authproxy.tracing import ACTIVE

MAX_BODY = 1 << 20  # a real answer is a few hundred bytes; anything huge is a broken upstream


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON


class CentralAuthClient:
    """One organization's back channel, on the worker's back-channel connection pool."""

    def __init__(
        self,
        pool: Pool,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        public_url: str,
        timeout: float,
    ) -> None:
        self.pool = pool  # the back channel's connection pool, shared by every organization's client
        self._base = base_url.rstrip("/")
        self._origin, self._prefix = Origin.split(self._base)
        credentials = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
        self._auth = f"Basic {credentials}"
        parts = urlsplit(public_url)
        self.domain = f"{parts.scheme}://{parts.netloc}"
        self._userinfo_target = f"{self._prefix}/api/v1/userinfo?{urlencode({'domain': self.domain})}"
        self._timeout = timeout

    async def verify(self, code: str, redirect_uri: str, verifier: str) -> Tokens:
        form = {"code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = await self._post("/api/v1/verify", data=urlencode(form).encode(), headers=headers)
        if answer.status == 200 and isinstance(answer.body, dict):
            token, expires_in = answer.body.get("access_token"), answer.body.get("expires_in")
            if isinstance(token, str) and token:
                seconds = float(expires_in) if isinstance(expires_in, int | float) else None
                return Tokens(access_token=token, expires_in=seconds)
        raise self._failure(answer, LoginRejected)

    async def userinfo(self, token: str, client_ip: str, user_agent: str, device_id: str = "") -> User:
        headers = {"Content-Type": "text/plain", "auth-ip": client_ip, "User-Agent": user_agent}
        if device_id:
            # A native app's device id, which CentralAuth's hijack protection compares with the one
            # its login was made with.
            headers["device-id"] = device_id
        body = token.encode()
        answer = await self._post(
            "/api/v1/userinfo", data=body, headers=headers, target=self._userinfo_target, resend=True
        )
        if answer.status == 200:
            user = User.from_json(answer.body)
            if user is not None:
                return user
            raise CentralAuthUnavailable("userinfo answered 200 without a user")
        raise self._failure(answer, SessionRejected)

    async def logout(self, token: str) -> None:
        headers = {"Content-Type": "text/plain"}
        answer = await self._post("/api/v1/logout", data=token.encode(), headers=headers, resend=True)
        if not 200 <= answer.status < 300:
            raise self._failure(answer, SessionRejected)

    async def reachable(self, seconds: float) -> str:
        """For readiness: "ok" when CentralAuth's discovery document answers with any status but a 5xx
        or 429, else what went wrong, in a few words."""
        target = f"{self._prefix}/.well-known/openid-configuration"
        try:
            async with asyncio.timeout(seconds):
                response = await self.pool.request(
                    self._origin,
                    "GET",
                    target,
                    [("Accept", "application/json")],
                    None,
                    connect_timeout=seconds,
                    response_timeout=seconds,
                    read_timeout=seconds,
                )
                try:
                    await _read_capped(response)
                finally:
                    response.release()
        except (TimeoutError, UpstreamError, UpstreamTimeout, PoolExhausted, OSError) as exc:
            return f"unreachable ({type(exc).__name__})"
        return "ok" if response.status < 500 and response.status != 429 else f"http {response.status}"

    async def _post(
        self,
        path: str,
        *,
        data: bytes,
        headers: dict[str, str],
        target: str = "",
        resend: bool = False,
    ) -> Answer:
        headers = {"Authorization": self._auth, "Accept": "application/json", **headers}
        tracing = ACTIVE.get()  # set only while a traced request (or its session check) runs
        if tracing is None:
            return await self._send(path, target or self._prefix + path, data, headers, resend)
        # No trace context goes to CentralAuth: the span is the proxy's record of the call, nothing more.
        with tracing.centralauth_call(path.rsplit("/", 1)[-1], self._base + path) as step:
            answer = await self._send(path, target or self._prefix + path, data, headers, resend)
            step.set("http.response.status_code", answer.status)
            return answer

    async def _send(
        self, path: str, target: str, data: bytes, headers: dict[str, str], resend: bool
    ) -> Answer:
        try:
            async with asyncio.timeout(self._timeout):
                response = await self.pool.request(
                    self._origin,
                    "POST",
                    target,
                    headers.items(),
                    data,
                    connect_timeout=self._timeout,
                    response_timeout=self._timeout,
                    read_timeout=self._timeout,
                    resend=resend,
                )
                try:
                    raw = await _read_capped(response)
                finally:
                    response.release()
        except (TimeoutError, UpstreamError, UpstreamTimeout, PoolExhausted, OSError) as exc:
            raise CentralAuthUnavailable(f"{path}: {type(exc).__name__}") from exc
        if raw is None:
            raise CentralAuthUnavailable(f"{path} answered with an oversized body")
        return Answer(response.status, _json(raw))

    @staticmethod
    def _failure(
        answer: Answer, definite: type[SessionRejected] | type[LoginRejected]
    ) -> CentralAuthUnavailable | SessionRejected | LoginRejected:
        """A JSON 4xx other than 429 is CentralAuth saying no; anything else is an outage."""
        body = answer.body
        if 400 <= answer.status < 500 and answer.status != 429 and isinstance(body, dict):
            code = body.get("errorCode")
            if code != "tooManyRequests":
                return definite(code if isinstance(code, str) and code else "unknown")
        return CentralAuthUnavailable(f"CentralAuth answered {answer.status}")


async def _read_capped(response: Response) -> bytes | None:
    """The whole body, or None once it exceeds MAX_BODY (read piece by piece: an answer may arrive in
    several TCP segments or chunks)."""
    if response.content_length is not None and response.content_length > MAX_BODY:
        return None
    body = b""
    while chunk := await response.read():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
