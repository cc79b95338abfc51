"""Origins and callback URLs: parsing, normalisation, whitelist matching and query appending.

Pure functions, no I/O. CentralAuth checks three things against the organization's whitelist (the
login `redirect_uri`, the login `Referer`, the userinfo `domain`); all of them go through `origin_of`
and `is_whitelisted` here so the three checks can never disagree about what an origin is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import SplitResult, urlencode, urlsplit

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
# allowLocalhost admits these hosts on any port and scheme. CentralAuth documents only `localhost`;
# 127.0.0.1 and ::1 are admitted too because a loopback test rig cannot tell them apart.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _split(url: str) -> SplitResult | None:
    """An absolute http(s) URL without credentials or control characters, or None."""
    if not url or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit validates the port lazily, only when it is read
    except ValueError:
        return None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or "\\" in url:
        return None
    return parts


def _host(parts: SplitResult, *, allow_wildcard: bool = False) -> str | None:
    host = parts.hostname or ""
    if ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return None
    if allow_wildcard and host.startswith("*."):
        rest = host[2:]
        return host if _HOSTNAME.fullmatch(rest) else None
    return host if _HOSTNAME.fullmatch(host) else None


def _origin(parts: SplitResult, host: str) -> str:
    scheme = parts.scheme.lower()
    port = parts.port
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an absolute http(s) URL (default port dropped), or None."""
    parts = _split(url)
    if parts is None:
        return None
    host = _host(parts)
    return None if host is None else _origin(parts, host)


def callback_key(url: str) -> str | None:
    """Origin + path of a callback URL: the part of `redirect_uri` that verify compares.

    The official libraries send `/login` a callback carrying `return_to` but send verify the bare
    callback, so the query (and any fragment) must not take part in the comparison.
    """
    parts = _split(url)
    if parts is None or parts.fragment:
        return None
    host = _host(parts)
    if host is None:
        return None
    return _origin(parts, host) + (parts.path or "/")


def normalize_whitelist_entry(entry: str) -> str:
    """A whitelist item as a lower-case origin; `https://*.example.com` stays a wildcard entry."""
    parts = _split(entry.strip())
    if parts is None or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"whitelist item {entry!r} is not an origin such as https://app.example.com")
    host = _host(parts, allow_wildcard=True)
    if host is None:
        raise ValueError(f"whitelist item {entry!r} has an invalid host")
    return _origin(parts, host)


def is_wildcard(entry: str) -> bool:
    return "://*." in entry


def is_loopback(origin: str) -> bool:
    parts = _split(origin)
    return parts is not None and _host(parts) in LOOPBACK_HOSTS


def _matches(origin: str, entry: str) -> bool:
    if not is_wildcard(entry):
        return origin == entry
    scheme, _, rest = entry.partition("://*")
    # `https://*.example.com` admits any deeper subdomain on the same scheme and port, not the apex.
    suffix = rest
    if not origin.startswith(scheme + "://"):
        return False
    host_port = origin[len(scheme) + 3 :]
    return host_port.endswith(suffix) and len(host_port) > len(suffix)


def is_whitelisted(origin: str, whitelist: Iterable[str], *, allow_localhost: bool) -> bool:
    """Whether an origin may act as redirect target, referrer or userinfo domain.

    An empty whitelist admits every origin, as CentralAuth documents.
    """
    entries = list(whitelist)
    if not entries:
        return True
    if allow_localhost and is_loopback(origin):
        return True
    return any(_matches(origin, entry) for entry in entries)


def append_query(url: str, params: Iterable[tuple[str, str]]) -> str:
    """`url` with `params` appended, keeping its own query byte for byte (e.g. `return_to`)."""
    base, _, _fragment = url.partition("#")
    extra = urlencode(list(params))
    if not extra:
        return base
    if "?" not in base:
        return f"{base}?{extra}"
    return f"{base}{extra}" if base.endswith(("?", "&")) else f"{base}&{extra}"
