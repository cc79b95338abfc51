"""Pure header logic: who the client is (through trusted proxies) and which headers never cross the proxy.

The client IP derived here is what CentralAuth's hijack protection compares with the IP it saw at login,
so a mistake either locks real users out or lets a thief replay a stolen cookie from anywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

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


def strip_for_upstream(
    incoming: Iterable[tuple[str, str]], own_cookie: str, own_cookie_prefix: str
) -> CIMultiDict[str]:
    """The client's headers as the upstream may see them: no hop-by-hop headers (nor any named in
    `Connection`), no `Host`, no identity header in any spelling, and no cookie of the proxy's own."""
    pairs = list(incoming)
    listed: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            listed |= connection_tokens(value)
    out: CIMultiDict[str] = CIMultiDict()
    cookies: list[str] = []
    for name, value in pairs:
        lowered = canonical_name(name)
        if lowered in HOP_BY_HOP or lowered in listed or lowered == "host" or is_identity_header(name):
            continue
        if lowered == "cookie":
            cookies.append(value)
            continue
        out.add(name, value)
    kept = strip_cookies("; ".join(cookies), own_cookie, own_cookie_prefix)
    if kept:
        out["Cookie"] = kept
    return out


def spoofed_identity_headers() -> list[tuple[str, str]]:
    """Every identity header the proxy sets, in the spellings lenient upstreams fold together."""
    names = [*sorted(IDENTITY), "x-auth-request-user", "x-auth-request-email", "x-auth-request-access-token"]
    spoofed: list[tuple[str, str]] = []
    for name in names:
        for variant in (name, name.upper(), name.title(), name.replace("-", "_"), name.replace("-", ".")):
            spoofed.append((variant, "spoofed"))
    return spoofed


def self_test(own_cookie: str, own_cookie_prefix: str) -> None:
    """Refuse to run if a spoofed identity header or proxy cookie would survive the stripping."""
    spoofed = [*spoofed_identity_headers(), ("Cookie", f"{own_cookie}=forged; {own_cookie_prefix}x=forged")]
    survivors = [
        name
        for name, value in strip_for_upstream(spoofed, own_cookie, own_cookie_prefix).items()
        if "spoofed" in value or "forged" in value
    ]
    if survivors:
        raise RuntimeError(f"header stripping self-test failed; would forward {survivors}")
