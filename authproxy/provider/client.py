"""The CentralAuth back channel: code exchange (verify), session check (userinfo) and logout.

The calls are those of docs/centralauth.md, made the safe way: urlencoded verify with Basic auth, raw
`text/plain` token bodies, the end user's IP and user agent on every userinfo call, and strict
classification of answers, because the official library deletes the cookie on any userinfo error,
timeouts included, so outages log users out. Here a JSON 4xx is a definite "no"; timeouts, connection
errors, 429, 5xx and anything unparseable are outages, never a logout.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from authproxy.core.user import User
from authproxy.errors import CentralAuthUnavailable, LoginRejected, SessionRejected
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
    """One organization's back channel, sharing the worker's HTTP session."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        public_url: str,
        timeout: float,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        credentials = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
        self._auth = f"Basic {credentials}"
        parts = urlsplit(public_url)
        self.domain = f"{parts.scheme}://{parts.netloc}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def verify(self, code: str, redirect_uri: str, verifier: str) -> Tokens:
        form = {"code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
        answer = await self._post("/api/v1/verify", data=form, headers={})
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
        answer = await self._post(
            "/api/v1/userinfo", data=token.encode(), headers=headers, params={"domain": self.domain}
        )
        if answer.status == 200:
            user = User.from_json(answer.body)
            if user is not None:
                return user
            raise CentralAuthUnavailable("userinfo answered 200 without a user")
        raise self._failure(answer, SessionRejected)

    async def logout(self, token: str) -> None:
        headers = {"Content-Type": "text/plain"}
        answer = await self._post("/api/v1/logout", data=token.encode(), headers=headers)
        if not 200 <= answer.status < 300:
            raise self._failure(answer, SessionRejected)

    async def _post(
        self,
        path: str,
        *,
        data: Any,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
    ) -> Answer:
        headers = {"Authorization": self._auth, "Accept": "application/json", **headers}
        tracing = ACTIVE.get()  # set only while a traced request (or its session check) runs
        if tracing is None:
            return await self._send(path, data, headers, params)
        # No trace context goes to CentralAuth: the span is the proxy's record of the call, nothing more.
        with tracing.centralauth_call(path.rsplit("/", 1)[-1], self._base + path) as step:
            answer = await self._send(path, data, headers, params)
            step.set("http.response.status_code", answer.status)
            return answer

    async def _send(
        self, path: str, data: Any, headers: dict[str, str], params: dict[str, str] | None
    ) -> Answer:
        try:
            async with self._http.post(
                self._base + path,
                data=data,
                headers=headers,
                params=params,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await _read_capped(response)
                if raw is None:
                    raise CentralAuthUnavailable(f"{path} answered with an oversized body")
                return Answer(response.status, _json(raw))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CentralAuthUnavailable(f"{path}: {type(exc).__name__}") from exc

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


async def _read_capped(response: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or None once it exceeds MAX_BODY.

    `read(n)` returns whatever has arrived so far, not n bytes: an answer split over several TCP segments
    or chunks must be read in a loop, or a valid answer would be cut short and taken for an outage.
    """
    if response.content_length is not None and response.content_length > MAX_BODY:
        return None
    body = bytearray()
    while chunk := await response.content.read(MAX_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
