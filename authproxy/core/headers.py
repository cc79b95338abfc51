"""Pure header logic: who the client is (through trusted proxies) and which headers never cross the proxy.

The client IP derived here is what CentralAuth's hijack protection compares with the IP it saw at login,
so a mistake either locks real users out or lets a thief replay a stolen cookie from anywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from authproxy.core.user import User

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The connection-specific headers of RFC 9110, section 7.6.1, plus the legacy ones proxies still see
# in the wild.
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


def combined(lines: Sequence[str]) -> str | None:
    """All lines of a list header as one value, in order (RFC 9110, section 5.3), or None when there is none.

    Reading only the first line would believe a client's forged `X-Forwarded-For` line whenever a
    front proxy adds its own line instead of appending to the client's (HAProxy's `option forwardfor`).
    """
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)


def forwarded_value(value: str | None, peer_trusted: bool) -> str | None:
    """X-Forwarded-Proto/-Host as set by the nearest trusted proxy, else None.

    `value` is every line combined (`combined`); the rightmost entry is the one the trusted peer wrote
    or appended, and entries left of it are never believed.
    """
    if not peer_trusted or not value:
        return None
    last = value.rsplit(",", 1)[-1].strip()
    return last or None


# Headers the proxy alone may set, and headers other systems use for the same purposes (identity, client
# IP, scheme, original URL). A client-sent copy, in any spelling, never reaches the upstream: an app
# that trusts one of them behind some other proxy would trust a client's choice behind this one.
IDENTITY = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
        "x-real-ip",
        "x-request-id",
        "forwarded",
        "auth-ip",
        "device-id",
        # Identity headers of other authenticating proxies and platforms, which apps are often told to trust.
        "remote-user",
        "remote-email",
        "remote-groups",
        "remote-name",
        "x-remote-user",
        "x-remote-email",
        "x-remote-group",
        "x-remote-groups",
        "x-user",
        "x-email",
        "cf-access-authenticated-user-email",
        "cf-access-jwt-assertion",
        "x-ms-token-aad-id-token",
        "x-ms-token-aad-access-token",
        # Client-IP and scheme headers some CDNs and load balancers set.
        "client-ip",
        "true-client-ip",
        "x-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "cf-connecting-ip",
        "cf-connecting-ipv6",
        "cf-visitor",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-proxyuser-ip",
        "x-host",
        "x-original-host",
        "front-end-https",
        "x-url-scheme",
        # Route and method overrides some frameworks honour; they would sidestep the rules on the path.
        "x-original-url",
        "x-original-uri",
        "x-original-method",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-envoy-original-path",
        # httpoxy (CVE-2016-5385): CGI upstreams turn `Proxy` into the HTTP_PROXY variable.
        "proxy",
    }
)
IDENTITY_PREFIXES = (
    "x-auth-request-",
    # Every X-Forwarded-* (For, Proto, Host, Port, Prefix, Scheme, Ssl, Server, Uri, Method, ...): the
    # proxy sets the ones it forwards itself.
    "x-forwarded-",
    "x-webauth-",
    "x-authentik-",
    "x-pomerium-",
    "oidc-",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-ms-client-principal",
    "x-authproxy-",
)
# Framing is the proxy's to decide. These names pass only in their exact spelling and only where the
# forwarder handles them (Content-Length); a `Content_Length` or `Transfer.Encoding` beside the real one
# is dropped, since a CGI-style upstream folds it into the same variable.
FRAMING = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "expect",
        "te",
        "upgrade",
        "connection",
        "keep-alive",
        "host",
        "trailer",
    }
)


def canonical_name(name: str) -> str:
    """Header name as a lenient upstream may read it: CGI-style stacks map `_` and `.` to `-`."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


def is_identity_header(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """True for a header only the proxy may set, in any spelling; `extra` holds canonical names."""
    canonical = canonical_name(name)
    return canonical in IDENTITY or canonical in extra or canonical.startswith(IDENTITY_PREFIXES)


def connection_tokens(value: str) -> set[str]:
    """Header names listed in a `Connection` header (RFC 9110, section 7.6.1), lower-cased."""
    return {canonical_name(token) for token in value.split(",") if token.strip()}


def strip_cookies(cookie_header: str, own: str, own_prefix: str) -> str | None:
    """The Cookie header without the proxy's own cookies, or None when none of them was in it (the
    header then passes unaltered). Names are compared by their exact bytes; every other pair is kept
    exactly as sent, only the separators between kept pairs being rewritten."""
    kept = []
    stripped = False
    for pair in cookie_header.split(";"):
        name = pair.split("=", 1)[0].strip(" \t")
        if name == own or name.startswith(own_prefix):
            stripped = True
        elif pair.strip(" \t"):
            kept.append(pair.strip(" \t"))
    return "; ".join(kept) if stripped else None


# W3C trace context. A client's copy passes only from a trusted proxy while the proxy does not trace
# itself; a tracing proxy sends its own (authproxy.tracing). Anyone else's would put the upstream's spans
# into a trace of the client's choosing.
TRACE_CONTEXT = frozenset({"traceparent", "tracestate"})

# What becomes of a request header, by its name alone (Connection-listed names aside).
_DROP, _COOKIE, _KEEP, _TRACE = 0, 1, 2, 3


class UpstreamHeaders:
    """Strips a request's headers for the upstream: no hop-by-hop or framing headers (nor any named in
    `Connection`), no `Host` or `Expect`, no identity header in any spelling (nor one of `extra`), and
    no cookie of the proxy's own. It remembers per header name what it decided: browsers send the
    same few names on every request, and classifying a name
    (canonical spelling, identity table, prefixes) is pure. The memory is bounded; a name seen once
    too many is classified afresh each time, never wrongly.
    """

    def __init__(
        self, own_cookie: str, own_cookie_prefix: str, extra: Iterable[str] = (), size: int = 1024
    ) -> None:
        self._own = own_cookie
        self._own_prefix = own_cookie_prefix
        self._extra = frozenset(canonical_name(name) for name in extra)
        self._size = size
        # name -> (fate, canonical name, whether it is the Connection header itself)
        self._names: dict[str, tuple[int, str, bool]] = {}

    def _classify(self, name: str) -> tuple[int, str, bool]:
        found = self._names.get(name)
        if found is None:
            lowered = canonical_name(name)
            if (
                lowered in HOP_BY_HOP
                or lowered == "host"
                or lowered == "expect"
                or (lowered in FRAMING and name.lower() != lowered)
                or is_identity_header(name, self._extra)
            ):
                fate = _DROP
            elif lowered in TRACE_CONTEXT:
                fate = _TRACE
            else:
                fate = _COOKIE if lowered == "cookie" else _KEEP
            found = (fate, lowered, name.lower() == "connection")
            _remember(self._names, name, found, self._size)
        return found

    def __call__(self, incoming: Iterable[tuple[str, str]], trace_context: bool = False) -> CIMultiDict[str]:
        """The headers to forward; `trace_context`: the client's `traceparent` and `tracestate` pass
        (its peer is a trusted proxy and the proxy sets none of its own)."""
        pairs = [(name, value, self._classify(name)) for name, value in incoming]
        listed: set[str] = set()
        for _, value, (_, _, is_connection) in pairs:
            if is_connection:
                listed |= connection_tokens(value)
        out: CIMultiDict[str] = CIMultiDict()
        cookies: list[str] = []
        for name, value, (fate, lowered, _) in pairs:
            if fate == _DROP or lowered in listed or (fate == _TRACE and not trace_context):
                continue
            if fate == _COOKIE:
                cookies.append(value)
                continue
            out.add(name, value)
        if cookies:
            # Several Cookie lines are one list (RFC 6265, section 5.4, allows only one; HTTP/2 front ends
            # split it).
            joined = cookies[0] if len(cookies) == 1 else "; ".join(cookies)
            kept = strip_cookies(joined, self._own, self._own_prefix)
            if kept is None:
                out["Cookie"] = joined
            elif kept:
                out["Cookie"] = kept
        return out


@dataclass(frozen=True, slots=True)
class IdentityNames:
    """The header names that carry a signed-in user's identity: to an upstream (proxy mode), and back to
    the front proxy in a forward-auth answer."""

    user: str
    email: str
    preferred_username: str
    access_token: str

    def write(self, headers: MutableMapping[str, str], user: User, access_token: str | None) -> None:
        """Set `user`'s identity on `headers`, and the access token when one is given (`[headers]
        pass_access_token`)."""
        headers[self.user] = user.id
        headers[self.email] = user.email
        headers[self.preferred_username] = user.email
        if access_token is not None:
            headers[self.access_token] = access_token


# By `[headers] profile`. oauth2-proxy's names are what existing apps and front proxies already read.
PROFILES = {
    "oauth2-proxy": (
        IdentityNames(
            "X-Forwarded-User",
            "X-Forwarded-Email",
            "X-Forwarded-Preferred-Username",
            "X-Forwarded-Access-Token",
        ),
        IdentityNames(
            "X-Auth-Request-User",
            "X-Auth-Request-Email",
            "X-Auth-Request-Preferred-Username",
            "X-Auth-Request-Access-Token",
        ),
    ),
}


# One name under each stripped prefix, for the spoofing self-test and the tests.
PREFIXED_SAMPLES = (
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-access-token",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-webauth-user",
    "x-authentik-username",
    "x-pomerium-claim-email",
    "oidc-claim-email",
    "x-amzn-oidc-identity",
    "x-goog-authenticated-user-email",
    "x-goog-iap-jwt-assertion",
    "x-ms-client-principal-name",
    "x-authproxy-jwt-assertion",
)


def spelling_variants(name: str) -> tuple[str, ...]:
    """`name` as lenient upstreams fold it together: other cases, `_` and `.` for `-`."""
    return (name, name.upper(), name.title(), name.replace("-", "_"), name.replace("-", "."))


def spoofed_identity_headers(extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Every identity header the proxy sets or strips, in the spellings lenient upstreams fold together."""
    names = [*sorted(IDENTITY), *PREFIXED_SAMPLES, *(canonical_name(name) for name in extra)]
    return [(variant, "spoofed") for name in names for variant in spelling_variants(name)]


def self_test(
    own_cookie: str, own_cookie_prefix: str, strip: UpstreamHeaders | None = None, extra: Iterable[str] = ()
) -> None:
    """Refuse to run if a spoofed identity header or proxy cookie would survive the stripping (by
    `strip`, the filter the proxy will use, when given)."""
    spoofed = [
        *spoofed_identity_headers(extra),
        ("Cookie", f"{own_cookie}=forged; {own_cookie_prefix}x=forged"),
    ]
    strip = strip or UpstreamHeaders(own_cookie, own_cookie_prefix, extra)
    stripped = strip(spoofed)
    survivors = [name for name, value in stripped.items() if "spoofed" in value or "forged" in value]
    if survivors:
        raise RuntimeError(f"header stripping self-test failed; would forward {survivors}")
