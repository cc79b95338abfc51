"""The session cookie's name and attributes, derived once from `[session]`, and how a request's is read.

With `cookie_secure` and no `cookie_domain` the cookie gets the `__Host-` prefix: browsers then refuse
it unless it is Secure, host-only and Path=/, so a sibling subdomain cannot plant or overwrite it (the
official library's plain cookie is open to such cookie tossing).

Without that prefix (a `cookie_domain`, or `cookie_secure = false`) a sibling subdomain can plant a
cookie of the same name, and the browser then sends both, in an order the site does not control. So the
session cookie is read by one rule that never picks between them:

- every `Cookie` header line is read, split on `;`; a pair's name is the text before its first `=`,
  stripped of spaces and tabs, and must equal the configured name exactly (as bytes: a name with a
  non-UTF-8 byte, which aiohttp decodes with surrogateescape, is another cookie); its value is the text
  after that `=`, stripped the same way, taken as it is (no unquoting);
- one value, or the same value several times, is the session cookie;
- two or more distinct values are no session at all: the request is refused with `ConflictingCookies`
  (400), whose answer expires the cookie host-only and, when configured, on `cookie_domain`, so the next
  sign-in starts clean. Neither value is ever tried, so a planted cookie, even a valid session of the
  planter's own, can never stand in for the user's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from authproxy.errors import AuthproxyError

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

    def clear_everywhere(self, response: web.StreamResponse) -> None:
        """Expire the cookie host-only and, when one is configured, on `cookie_domain`.

        A browser keeps one cookie per name, domain and path, so a copy planted on the parent domain
        survives an expiry of the host-only one and the other way round. aiohttp keeps one Set-Cookie
        per name, hence the header lines written here (name and domain are validated by the config).
        """
        domains = [None, self.domain] if self.domain else [None]
        for domain in domains:
            attributes = [f'{self.name}=""', "expires=Thu, 01 Jan 1970 00:00:00 GMT", "Max-Age=0"]
            if domain:
                attributes.append(f"Domain={domain}")
            attributes += ["HttpOnly", "Path=/", f"SameSite={self.samesite.capitalize()}"]
            if self.secure:
                attributes.append("Secure")
            response.headers.add("Set-Cookie", "; ".join(attributes))


class ConflictingCookies(AuthproxyError):
    """The request carried the session cookie with two or more different values: none of them is used."""

    code = "conflicting_cookies"
    status = 400
    message = "This browser sent conflicting sign-in cookies for this site, so none was used. Sign in again."


class _Conflict:
    """The memo's entry for a Cookie header that carries the session cookie with distinct values."""


_CONFLICT = _Conflict()


class CookieValues:
    """One cookie's value, read from the raw `Cookie` header lines by the rule in the module docstring.

    Raises `ConflictingCookies` when the lines carry distinct values for it. A browser sends the same
    Cookie header on every request, and the answer is a function of the header lines alone, so it is
    remembered per distinct header; the memory is bounded, oldest entries going first.
    """

    def __init__(self, name: str, size: int = 1024) -> None:
        self.name = name
        self._size = size
        self._memo: dict[str, str | _Conflict | None] = {}

    def __call__(self, request: web.Request) -> str | None:
        lines = request.headers.getall("Cookie", ())
        if not lines:
            return None
        # Header values never contain LF (the parser refuses it), so the joined key is unambiguous.
        key = lines[0] if len(lines) == 1 else "\n".join(lines)
        try:
            value = self._memo[key]
        except KeyError:
            value = self._read(lines)
            if len(self._memo) >= self._size:
                del self._memo[next(iter(self._memo))]
            self._memo[key] = value
        if isinstance(value, _Conflict):
            raise ConflictingCookies()
        return value

    def _read(self, lines: Sequence[str]) -> str | _Conflict | None:
        found: str | None = None
        for line in lines:
            for pair in line.split(";"):
                name, equals, value = pair.partition("=")
                if not equals or name.strip(" \t") != self.name:
                    continue
                value = value.strip(" \t")
                if found is None:
                    found = value
                elif value != found:
                    return _CONFLICT
        return found
