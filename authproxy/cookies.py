"""The session cookie's name and attributes, derived once from `[session]`.

With `cookie_secure` and no `cookie_domain` the cookie gets the `__Host-` prefix: browsers then refuse
it unless it is Secure, host-only and Path=/, so a sibling subdomain cannot plant or overwrite it (W12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

SameSite = Literal["lax", "strict", "none"]


@dataclass(frozen=True, slots=True)
class SessionCookie:
    name: str
    secure: bool
    samesite: SameSite
    domain: str | None

    @classmethod
    def from_settings(cls, name: str, *, secure: bool, samesite: SameSite, domain: str) -> SessionCookie:
        prefixed = f"__Host-{name}" if secure and not domain else name
        return cls(prefixed, secure, samesite, domain or None)

    def set(self, response: web.StreamResponse, value: str, max_age: int) -> None:
        response.set_cookie(
            self.name,
            value,
            max_age=max(0, max_age),
            path="/",
            domain=self.domain,
            secure=self.secure,
            httponly=True,
            samesite=self.samesite.capitalize(),
        )

    def clear(self, response: web.StreamResponse) -> None:
        response.del_cookie(
            self.name,
            path="/",
            domain=self.domain,
            secure=self.secure,
            httponly=True,
            samesite=self.samesite.capitalize(),
        )


class CookieValues:
    """One cookie's value as `request.cookies` gives it, remembered per distinct Cookie header.

    A browser sends the same Cookie header on every request, and aiohttp parses all of it into Morsels
    to find one value. The parse is a function of the header alone, so remembering its answer is exact;
    the memory is bounded, oldest entries going first.
    """

    def __init__(self, name: str, size: int = 1024) -> None:
        self.name = name
        self._size = size
        self._memo: dict[str, str | None] = {}

    def __call__(self, request: web.Request) -> str | None:
        header = request.headers.get("Cookie")
        if not header:
            return None
        try:
            return self._memo[header]
        except KeyError:
            pass
        value = request.cookies.get(self.name)
        if len(self._memo) >= self._size:
            del self._memo[next(iter(self._memo))]
        self._memo[header] = value
        return value
