"""Pure header logic: who the client is (through trusted proxies) and which headers never cross the proxy.

The client IP derived here is what CentralAuth's hijack protection compares with the IP it saw at login,
so a mistake either locks real users out or lets a thief replay a stolen cookie from anywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from multidict import CIMultiDict

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 §7.6.1 connection-specific headers, plus the legacy ones proxies still see in the wild.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def parse_ip(value: str) -> IPAddress | None:
    """An address from a socket peer or a forwarded-for hop; tolerates ports and brackets, else None."""
    value = value.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.partition(":")[0]  # IPv4 with a port, as some load balancers write it
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress | None, trusted: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The end user's IP: the socket peer, unless the peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is walked from the right (the entries nearest to us, written
    by proxies we trust) and the first hop that is not itself trusted is the client. Entries left of it
    were written by the client and are never believed. A hop that is not an address ends the walk at the
    trusted proxy that wrote it.
    """
    current = parse_ip(peer or "")
    if current is None:
        # No IP peer (a unix socket, a closed transport): a placeholder that can never match a real login.
        return "0.0.0.0"  # noqa: S104
    if not forwarded_for or not is_trusted(current, trusted):
        return str(current)
    for hop in reversed(forwarded_for.split(",")):
        address = parse_ip(hop)
        if address is None:
            break
        current = address
        if not is_trusted(current, trusted):
            break
    return str(current)


class ClientIPs:
    """`client_ip` and peer trust for one trusted-proxy list, remembered per (peer, X-Forwarded-For).

    A worker sees the same peers and forwarding chains over and over, and parsing them with `ipaddress`
    was a large share of a cached request's cost. Answers depend on nothing else, so remembering them is
    exact; the memory is bounded, oldest entries going first.
    """

    def __init__(self, trusted: Sequence[IPNetwork], size: int = 4096) -> None:
        self.trusted = tuple(trusted)
        self._size = size
        self._clients: dict[tuple[str | None, str | None], str] = {}
        self._peers: dict[str | None, bool] = {}

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        key = (peer, forwarded_for)
        found = self._clients.get(key)
        if found is None:
            found = client_ip(peer, forwarded_for, self.trusted)
            _remember(self._clients, key, found, self._size)
        return found

    def peer_trusted(self, peer: str | None) -> bool:
        found = self._peers.get(peer)
        if found is None:
            found = is_trusted(parse_ip(peer or ""), self.trusted)
            _remember(self._peers, peer, found, self._size)
        return found


def _remember(memo: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    if len(memo) >= size:
        del memo[next(iter(memo))]  # insertion order: the oldest entry
    memo[key] = value


def forwarded_value(value: str | None, peer_trusted: bool) -> str | None:
    """X-Forwarded-Proto/-Host as set by the nearest trusted proxy (its rightmost entry), else None."""
    if not peer_trusted or not value:
        return None
    last = value.rsplit(",", 1)[-1].strip()
    return last or None


# Headers the proxy alone may set; a client-sent copy, in any spelling, never reaches the upstream.
IDENTITY = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        # Forward-auth context: meaningful only from a trusted proxy to /oauth2/auth, never upstream.
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-real-ip",
        "x-request-id",
        "forwarded",
        "auth-ip",
        "device-id",
        # Client-IP headers some CDNs set; an app reading them must not get a client-chosen value.
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        # Route and method overrides some frameworks honour; they would sidestep `[routes]` rules.
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        # httpoxy (CVE-2016-5385): CGI upstreams turn `Proxy` into the HTTP_PROXY variable.
        "proxy",
    }
)
IDENTITY_PREFIXES = ("x-auth-request-",)


def canonical_name(name: str) -> str:
    """Header name as a lenient upstream may read it: CGI-style stacks map `_` and `.` to `-`."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


def is_identity_header(name: str) -> bool:
    canonical = canonical_name(name)
    return canonical in IDENTITY or canonical.startswith(IDENTITY_PREFIXES)


def connection_tokens(value: str) -> set[str]:
    """Header names listed in a `Connection` header (RFC 9110 §7.6.1), lower-cased."""
    return {canonical_name(token) for token in value.split(",") if token.strip()}


def strip_cookies(cookie_header: str, own: str, own_prefix: str) -> str:
    """The Cookie header without the proxy's own cookies; other cookies pass through byte for byte."""
    kept = []
    for pair in cookie_header.split(";"):
        name = pair.split("=", 1)[0].strip()
        if name and name != own and not name.startswith(own_prefix):
            kept.append(pair.strip())
    return "; ".join(kept)


# What becomes of a request header, by its name alone (Connection-listed names aside).
_DROP, _COOKIE, _KEEP = 0, 1, 2


class UpstreamHeaders:
    """Strips a request's headers for the upstream (see `strip_for_upstream`), remembering per header
    name what it decided: browsers send the same few names on every request, and classifying a name
    (canonical spelling, identity table, prefixes) is pure. The memory is bounded; a name seen once
    too many is classified afresh each time, never wrongly.
    """

    def __init__(self, own_cookie: str, own_cookie_prefix: str, size: int = 1024) -> None:
        self._own = own_cookie
        self._own_prefix = own_cookie_prefix
        self._size = size
        # name -> (fate, canonical name, whether it is the Connection header itself)
        self._names: dict[str, tuple[int, str, bool]] = {}

    def _classify(self, name: str) -> tuple[int, str, bool]:
        found = self._names.get(name)
        if found is None:
            lowered = canonical_name(name)
            if lowered in HOP_BY_HOP or lowered == "host" or is_identity_header(name):
                fate = _DROP
            else:
                fate = _COOKIE if lowered == "cookie" else _KEEP
            found = (fate, lowered, name.lower() == "connection")
            _remember(self._names, name, found, self._size)
        return found

    def __call__(self, incoming: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        pairs = [(name, value, self._classify(name)) for name, value in incoming]
        listed: set[str] = set()
        for _, value, (_, _, is_connection) in pairs:
            if is_connection:
                listed |= connection_tokens(value)
        out: CIMultiDict[str] = CIMultiDict()
        cookies: list[str] = []
        for name, value, (fate, lowered, _) in pairs:
            if fate == _DROP or lowered in listed:
                continue
            if fate == _COOKIE:
                cookies.append(value)
                continue
            out.add(name, value)
        if cookies:
            kept = strip_cookies("; ".join(cookies), self._own, self._own_prefix)
            if kept:
                out["Cookie"] = kept
        return out


def strip_for_upstream(
    incoming: Iterable[tuple[str, str]], own_cookie: str, own_cookie_prefix: str
) -> CIMultiDict[str]:
    """The client's headers as the upstream may see them: no hop-by-hop headers (nor any named in
    `Connection`), no `Host`, no identity header in any spelling, and no cookie of the proxy's own."""
    return UpstreamHeaders(own_cookie, own_cookie_prefix)(incoming)


def spoofed_identity_headers() -> list[tuple[str, str]]:
    """Every identity header the proxy sets, in the spellings lenient upstreams fold together."""
    names = [*sorted(IDENTITY), "x-auth-request-user", "x-auth-request-email", "x-auth-request-access-token"]
    spoofed: list[tuple[str, str]] = []
    for name in names:
        for variant in (name, name.upper(), name.title(), name.replace("-", "_"), name.replace("-", ".")):
            spoofed.append((variant, "spoofed"))
    return spoofed


def self_test(own_cookie: str, own_cookie_prefix: str, strip: UpstreamHeaders | None = None) -> None:
    """Refuse to run if a spoofed identity header or proxy cookie would survive the stripping (by
    `strip`, the filter the proxy will use, when given)."""
    spoofed = [*spoofed_identity_headers(), ("Cookie", f"{own_cookie}=forged; {own_cookie_prefix}x=forged")]
    strip = strip or UpstreamHeaders(own_cookie, own_cookie_prefix)
    stripped = strip(spoofed)
    survivors = [name for name, value in stripped.items() if "spoofed" in value or "forged" in value]
    if survivors:
        raise RuntimeError(f"header stripping self-test failed; would forward {survivors}")
