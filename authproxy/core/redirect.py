"""Return-URL validation: turns a user-supplied `rd` / `return_to` / `X-Auth-Request-Redirect` value into
the string a post-login or post-logout `Location` header may carry, or refuses it.

`safe_return_url(target, policy)` accepts two shapes and rebuilds them from parsed parts, so the result is
a canonical, printable-ASCII string that browsers and HTTP libraries have no reason to reinterpret:

* a path on the proxy itself: one leading "/" not followed by "/" or "\\";
* an absolute `http(s)://host[:port]/...` URL whose origin is the proxy's own or matches
  `[redirects] allowed_domains`.

Everything else falls back. Policy choices:

* Parsing is deliberately narrower than WHATWG URL parsing, never broader: a host is ASCII
  letter/digit/hyphen labels (compared lowercased), a dotted-quad IPv4 address or a bracketed IPv6
  literal; no userinfo, no percent signs in the authority, no IDN (browsers report IDN hosts in punycode
  form), no trailing dot, no shorthand IPv4 (`0x7f.1`, `127.1`), no backslash before the query, no C0
  control or DEL anywhere, no surrounding whitespace, at most MAX_URL_LENGTH characters in and out.
* The proxy's own origin matches on scheme, host and port. An `allowed_domains` entry matches on host
  and port, and its scheme must be https unless the proxy itself is served over http (local
  development): a login must not end on a page a network attacker can rewrite.
* `".example.com"` matches example.com itself and every subdomain of it; `"host"` / `".domain"` allow the
  scheme's default port only, `"host:8443"` that port, `"host:*"` any port.
* A path whose first segment would become empty after further percent-decoding, tab/newline removal,
  backslash folding and dot-segment removal (`/%2F%2Fevil.com`, `/%5Cevil.com`, `/.//evil.com`) is
  refused as well: a browser keeps it on the proxy, but a component that decodes the value once more
  would read a protocol-relative URL. No real return target looks like that.
* Characters outside RFC 3986 (non-ASCII as UTF-8, space, `"<>{}|^[]` and backslash in the query or
  fragment) are percent-encoded; lone `%` becomes `%25`; valid escapes are kept as given.

Callers must emit the result verbatim, e.g. `web.Response(status=302, headers={"Location": url})`.
`web.HTTPFound(url)` routes it through yarl, which rewrites some escapes (`/%2e%2e/` becomes `/../`,
`?a=%2F` becomes `?a=/`, `%41` becomes `A`); the tests show the rewritten value stays on an allowed
origin, but it is no longer the string that was validated.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote

__all__ = ["MAX_URL_LENGTH", "RedirectPolicy", "safe_return_url"]

MAX_URL_LENGTH: Final = 4096

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_ANY_PORT: Final = -1
# A bound on nested percent-encoding; a value still changing after this many decodes is refused.
_MAX_DECODE_ROUNDS: Final = 4

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
# re.ASCII: without it IGNORECASE lets U+017F (long s) match "s" and U+212A (Kelvin sign) match "k".
_ABSOLUTE = re.compile(r"(https?)://([^/?#\\]*)(.*)", re.IGNORECASE | re.ASCII)
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DOMAIN = re.compile(r"[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*")
# WHATWG parses a host as IPv4 when its last label "ends in a number" (decimal or 0x-hex).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"  # decimal without leading zeros (those mean octal)
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_PORT = re.compile(r"[0-9]{1,5}")
_STRIPPED_BY_BROWSERS = str.maketrans("", "", "\t\n\r")

_PATH_SAFE: Final = "/!$&'()*+,;=:@%"
_QUERY_SAFE: Final = _PATH_SAFE + "?"


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class _Pattern:
    """One `allowed_domains` entry, parsed once."""

    host: str
    subdomains: bool
    port: int | None  # None: the target scheme's default port; _ANY_PORT: any port

    def matches(self, origin: _Origin) -> bool:
        if self.port is None:
            port_ok = origin.port == _DEFAULT_PORTS[origin.scheme]
        else:
            port_ok = self.port in (_ANY_PORT, origin.port)
        if not port_ok:
            return False
        return origin.host == self.host or (self.subdomains and origin.host.endswith("." + self.host))


@dataclass(frozen=True)
class RedirectPolicy:
    """Where return URLs may point: the proxy's own origin plus `allowed_domains`.

    Construction raises ValueError for an unusable `public_url` or pattern, so a bad policy fails at
    start-up rather than per request.
    """

    public_url: str
    allowed_domains: tuple[str, ...] = ()
    _origin: _Origin = field(init=False, repr=False, compare=False)
    _patterns: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = _parse_absolute(self.public_url)
        if parsed is None:
            raise ValueError(f"server.public_url: not an http(s) URL: {self.public_url!r}")
        object.__setattr__(self, "_origin", parsed[0])
        object.__setattr__(self, "_patterns", tuple(_parse_pattern(p) for p in self.allowed_domains))

    def _allows(self, origin: _Origin) -> bool:
        if origin == self._origin:
            return True
        if origin.scheme == "http" and self._origin.scheme != "http":
            return False
        return any(pattern.matches(origin) for pattern in self._patterns)


def safe_return_url(target: str | None, policy: RedirectPolicy, fallback: str = "/") -> str:
    """The string to emit verbatim in Location, or `fallback` when target is missing or not allowed.

    `fallback` is trusted and returned unchanged.
    """
    if not target or len(target) > MAX_URL_LENGTH or not _is_plain_text(target):
        return fallback
    result = _relative(target) if target.startswith("/") else _absolute(target, policy)
    if result is None or len(result) > MAX_URL_LENGTH:
        return fallback
    return result


def _is_plain_text(text: str) -> bool:
    """No C0 control or DEL, no surrounding whitespace (WHATWG strips it), valid Unicode."""
    if _FORBIDDEN.search(text) or text.strip() != text:
        return False
    if text.isascii():
        return True
    # Header values decoded with surrogateescape can carry lone surrogates, which have no UTF-8 form.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _relative(target: str) -> str | None:
    path, rest = _split_path(target)
    if path[1:2] in ("/", "\\") or not _path_is_safe(path):
        return None
    return _encode_path(path) + _encode_rest(rest)


def _absolute(target: str, policy: RedirectPolicy) -> str | None:
    parsed = _parse_absolute(target)
    if parsed is None:
        return None
    origin, path, rest = parsed
    if not policy._allows(origin) or not _path_is_safe(path):
        return None
    return _serialize_origin(origin) + _encode_path(path) + _encode_rest(rest)


def _parse_absolute(url: str) -> tuple[_Origin, str, str] | None:
    """Split `http(s)://host[:port]<path><rest>` into origin, path ("/" when empty) and `?query#fragment`."""
    match = _ABSOLUTE.fullmatch(url)
    if match is None:
        return None
    scheme, authority, tail = match.group(1).lower(), match.group(2), match.group(3)
    if tail[:1] == "\\":
        return None
    host_port = _parse_authority(authority)
    if host_port is None:
        return None
    host, port = host_port
    path, rest = _split_path(tail)
    return _Origin(scheme, host, port or _DEFAULT_PORTS[scheme]), path or "/", rest


def _parse_authority(authority: str) -> tuple[str, int | None] | None:
    """`host[:port]` with a canonical host; None for userinfo, escapes, IDN or any other oddity."""
    if authority.startswith("["):
        end = authority.find("]")
        host_text, port_text = authority[: end + 1], authority[end + 1 :]
        if end < 0 or (port_text and not port_text.startswith(":")):
            return None
    else:
        host_text, colon, port_text = authority.partition(":")
        port_text = colon + port_text
    host = _canonical_host(host_text)
    if host is None:
        return None
    if not port_text:
        return host, None
    port = _parse_port(port_text[1:])
    return None if port is None else (host, port)


def _parse_port(text: str) -> int | None:
    if not _PORT.fullmatch(text):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _canonical_host(text: str) -> str | None:
    if text.startswith("[") and text.endswith("]"):
        return _canonical_ipv6(text[1:-1])
    # Checked before lower(): some non-ASCII characters lowercase to ASCII ones.
    if not text.isascii():
        return None
    host = text.lower()
    if len(host) > 253 or not _DOMAIN.fullmatch(host):
        return None
    if _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]):
        # Browsers read this as IPv4 in any of several shorthand forms; only plain dotted-quad is unambiguous.
        return host if _IPV4.fullmatch(host) else None
    return host


def _canonical_ipv6(text: str) -> str | None:
    if not text.isascii() or "%" in text:
        return None
    try:
        return f"[{ipaddress.IPv6Address(text).compressed}]"
    except ValueError:
        return None


def _parse_pattern(text: str) -> _Pattern:
    pattern = text.lower()
    subdomains = pattern.startswith(".")
    host_text, port_text = pattern.removeprefix("."), None
    if not host_text.endswith("]") and ":" in host_text:
        host_text, _, port_text = host_text.rpartition(":")
    host = _canonical_host(host_text)
    if host is None or (subdomains and not _is_domain_name(host)):
        raise ValueError(
            f"redirects.allowed_domains: {text!r} is not a host, '.domain' or 'host:port' pattern"
        )
    if port_text is None:
        return _Pattern(host, subdomains, None)
    port = _ANY_PORT if port_text == "*" else _parse_port(port_text)
    if port is None:
        raise ValueError(f"redirects.allowed_domains: {text!r} has an invalid port; use a number or '*'")
    return _Pattern(host, subdomains, port)


def _is_domain_name(host: str) -> bool:
    return not host.startswith("[") and not _IPV4.fullmatch(host)


def _serialize_origin(origin: _Origin) -> str:
    if origin.port == _DEFAULT_PORTS[origin.scheme]:
        return f"{origin.scheme}://{origin.host}"
    return f"{origin.scheme}://{origin.host}:{origin.port}"


def _split_path(text: str) -> tuple[str, str]:
    """Split off the path; the remainder starts with "?" or "#" or is empty."""
    end = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=len(text))
    return text[:end], text[end:]


def _path_is_safe(path: str) -> bool:
    """No backslash (browsers read it as "/"), and no `//` prefix after decoding and normalizing again."""
    if "\\" in path:
        return False
    decoded = path
    for _ in range(_MAX_DECODE_ROUNDS):
        again = unquote(decoded)
        if again == decoded:
            break
        decoded = again
    else:
        return False
    decoded = decoded.translate(_STRIPPED_BY_BROWSERS).replace("\\", "/")
    return not _remove_dot_segments(decoded).startswith("//")


def _remove_dot_segments(path: str) -> str:
    kept: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    return "/" + "/".join(kept)


def _encode_path(path: str) -> str:
    return quote(_LONE_PERCENT.sub("%25", path), safe=_PATH_SAFE)


def _encode_rest(rest: str) -> str:
    """Encode `?query#fragment`, keeping the first "?" and "#" as delimiters."""
    query, hash_sign, fragment = rest.partition("#")
    encoded = "?" + _encode_component(query[1:]) if query else ""
    return encoded + (hash_sign + _encode_component(fragment) if hash_sign else "")


def _encode_component(text: str) -> str:
    return quote(_LONE_PERCENT.sub("%25", text), safe=_QUERY_SAFE)
