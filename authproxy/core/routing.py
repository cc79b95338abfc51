"""Per-route policy: which `[[routes]]` entry a request falls under, and what it decides for a user.

A route matches on the request's host (exact, or `*.example.com` for any subdomain), on the canonical
path (`core.paths`: never the raw spelling, so `/public/../admin` is judged as `/admin`) and on the
method. The first route that matches wins; a request that matches none falls under the default route
built from the global settings (`[[upstreams]]`, `[authorization]`, `session_check_ttl`, and the old
`[routes]` table's `skip_auth`/`api` rules).

A path is a prefix of whole segments (`/admin` matches `/admin` and `/admin/x`, never `/administrator`;
`/admin/` matches `/admin/` and below) or, written `~regex`, a regular expression searched in the
canonical path. `strip_prefix` forwards the path with a prefix route's prefix taken off.

`decide` is the whole decision for one request once the session has been checked: it is what the proxy
and forward-auth apply, and what `authproxy explain` prints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from authproxy.core.authorization import Rules, denial
from authproxy.core.paths import Target
from authproxy.core.user import User

Auth = Literal["required", "optional", "public"]
Outcome = Literal["allow", "allow-anonymous", "sign-in", "deny", "step-up", "reject"]


@dataclass(frozen=True, slots=True)
class Route:
    """One `[[routes]]` entry, parsed; `index` is its place in the file (None for the default route)."""

    index: int | None
    path: str = "/"
    host: str = ""  # lower case, no port; "" = any host; "*.example.com" = any subdomain
    methods: frozenset[str] = frozenset()  # upper case; empty = any method
    upstream: str = ""  # "" = the [[upstreams]] longest-prefix choice
    auth: Auth = "required"
    api: bool = False
    rules: Rules | None = None  # None = the global [authorization] rules
    session_check_ttl: float | None = None  # None = the global TTL
    step_up_max_age: float | None = None  # None = no step-up
    strip_prefix: bool = False
    bearer: bool | None = None  # None = `[centralauth] accept_bearer_tokens`
    pass_authorization: bool = False
    pattern: re.Pattern[str] | None = None  # set when `path` is written "~regex"

    @classmethod
    def build(cls, index: int | None, path: str = "/", **settings: object) -> Route:
        """A route from its settings; ValueError names what is wrong (a bad regex, a prefix that is
        not a path, `strip_prefix` on a regex route, a malformed host)."""
        pattern = None
        if path.startswith("~"):
            try:
                pattern = re.compile(path[1:])
            except re.error as exc:
                raise ValueError(f"path {path!r} is not a valid regular expression: {exc}") from None
            if settings.get("strip_prefix"):
                raise ValueError("strip_prefix needs a prefix path, not a regular expression")
        elif not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with / (or ~ for a regular expression)")
        host = str(settings.pop("host", "") or "").strip().lower()
        if host and not _HOST.fullmatch(host):
            raise ValueError(f"host {host!r} must be a host name such as app.example.com or *.example.com")
        methods = frozenset(str(m).upper() for m in settings.pop("methods", ()) or ())  # type: ignore[attr-defined]
        return cls(index, path, host, methods, pattern=pattern, **settings)  # type: ignore[arg-type]

    def matches(self, host: str, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        if self.host and not host_matches(self.host, host):
            return False
        if self.pattern is not None:
            return self.pattern.search(path) is not None
        return prefix_matches(self.path, path)

    def forwarded_path(self, path: str) -> str:
        """The path the upstream receives: with the prefix taken off when `strip_prefix` says so."""
        if not self.strip_prefix or self.pattern is not None:
            return path
        rest = path[len(self.path.rstrip("/")) :]
        return rest if rest.startswith("/") else "/" + rest

    def forwarded_target(self, target: Target) -> str:
        """What follows the upstream's own prefix on the request line: the canonical target, with a
        `strip_prefix` route's prefix taken off (and then without segment parameters)."""
        if not self.strip_prefix or self.pattern is not None:
            return target.wire_target
        path = self.forwarded_path(target.path)
        return f"{path}?{target.query}" if target.query else path

    def describe(self) -> str:
        parts = [f"host {self.host}" if self.host else "any host", f"path {self.path}"]
        parts.append("methods " + ",".join(sorted(self.methods)) if self.methods else "any method")
        return ", ".join(parts)


_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def host_matches(rule: str, host: str) -> bool:
    """`host` (a Host header: any case, maybe a port) against a rule's exact or `*.` host."""
    name = _host_name(host)
    if rule.startswith("*."):
        return name.endswith(rule[1:]) and len(name) > len(rule) - 1
    return name == rule


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal, with or without a port
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def prefix_matches(prefix: str, path: str) -> bool:
    """Whole segments: `/admin` matches `/admin` and `/admin/…`; `/admin/` matches `/admin/…`."""
    if prefix == "/" or path == prefix:
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


class RouteTable:
    """The routes in file order, and the default route for requests that match none."""

    def __init__(self, routes: Sequence[Route], default: Route) -> None:
        self.routes = tuple(routes)
        self.default = default
        # The hosts of host routes, as written (`app.example.com`, `*.example.com`).
        self.hosts_served = frozenset(route.host for route in self.routes if route.host)

    def match(self, host: str, method: str, path: str) -> Route:
        for route in self.routes:
            if route.matches(host, method, path):
                return route
        return self.default

    def serves_host(self, host: str) -> bool:
        return any(host_matches(rule, host) for rule in self.hosts_served)

    def redirect_domains(self) -> tuple[str, ...]:
        """The hosts of host routes as `[redirects] allowed_domains` entries: after a login or sign-out,
        a browser may be sent back to any of them (`*.example.com` becomes `.example.com`)."""
        return tuple(sorted(rule[1:] if rule.startswith("*.") else rule for rule in self.hosts_served))


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str


def decide(route: Route, user: User | None, global_rules: Rules, now: float) -> Decision:
    """What happens to a request on `route` from `user` (None: no session, or one that did not check
    out), at `now` (seconds since the epoch)."""
    if route.auth == "public":
        return Decision("allow-anonymous", "the route is public: no session is read")
    if user is None:
        if route.auth == "optional":
            return Decision("allow-anonymous", "no session, and the route's auth is optional")
        return Decision("sign-in", "no session, and the route requires one")
    rule = denial(user, route.rules or global_rules)
    if rule is not None:
        where = "the route's" if route.rules is not None else "the global [authorization]"
        return Decision("deny", f"{where} rule {rule}")
    if route.step_up_max_age is not None:
        affirmed = affirmed_at(user)
        if affirmed is None or now - affirmed > route.step_up_max_age:
            age = "never affirmed" if affirmed is None else f"affirmed {now - affirmed:.0f} s ago"
            return Decision("step-up", f"{age}; the route allows {route.step_up_max_age:g} s")
    return Decision(
        "allow", "signed in" + (", affirmation recent enough" if route.step_up_max_age is not None else "")
    )


def affirmed_at(user: User) -> float | None:
    """The session's last CentralAuth affirmation (its `affirmationDate`) as epoch seconds."""
    if not user.affirmation_date:
        return None
    try:
        return datetime.fromisoformat(user.affirmation_date.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
