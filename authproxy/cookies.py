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
