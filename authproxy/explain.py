"""`authproxy explain`: why a request would be let in, sent to sign in, refused or asked to step up.

It builds the runtime a worker would build from the config and runs the same decision code as the
proxy (`core.paths` for the canonical target, the route table, the upstream choice, `gate.auth_mode`,
`core.routing.decide`), with the user described on the command line in place of CentralAuth's
answer. Nothing is sent anywhere; no session is needed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from authproxy.app import build_runtime
from authproxy.config import Config
from authproxy.core.paths import AmbiguousTarget, split_absolute
from authproxy.core.routing import Decision, decide
from authproxy.core.user import User
from authproxy.gate import auth_mode


@dataclass(frozen=True)
class Subject:
    """The user a request is explained for; no e-mail = no session (the anonymous case)."""

    email: str = ""
    verified: bool = True
    blocked: bool = False
    affirmed_ago: float = 0.0  # seconds since the session's last CentralAuth affirmation
    client_ip: str = "203.0.113.10"


@dataclass
class Explanation:
    method: str
    url: str
    path: str | None = None
    route: int | None = None
    route_description: str = ""
    upstream: str | None = None
    auth: str | None = None
    decision: str = "reject"
    reason: str = ""
    session_check_ttl: float | None = None
    step_up_max_age: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    def to_json(self) -> str:
        keys = (
            "method", "url", "path", "route", "upstream", "auth", "decision", "reason",
            "session_check_ttl", "step_up_max_age", "headers", "user",
        )  # fmt: skip
        return json.dumps({key: getattr(self, key) for key in keys}, indent=2)

    def to_text(self) -> str:
        route = (
            f"#{self.route} ({self.route_description})"
            if self.route is not None
            else "none: the global settings apply"
        )
        rows = [
            ("request", f"{self.method} {self.url}"),
            ("path", self.path if self.path is not None else "refused: not a target the proxy judges"),
        ]
        if self.path is not None:
            rows += [("route", route), ("upstream", self.upstream or "none: 404")]
            rows += [("auth", self.auth or "")]
        rows += [("user", self.user or "anonymous (no session)")]
        rows += [("decision", f"{self.decision}: {self.reason}")]
        if self.auth not in (None, "public"):
            ttl = self.session_check_ttl
            every = "on every request" if ttl == 0 else f"at most every {ttl:g} s"
            rows += [("session check", f"CentralAuth asked {every}")]
            if self.step_up_max_age is not None:
                rows += [("step-up", f"after {self.step_up_max_age:g} s since the last affirmation")]
        if self.headers:
            rows += [("headers", "; ".join(f"{name}: {value}" for name, value in self.headers.items()))]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def explain(config: Config, method: str, url: str, subject: Subject, now: float | None = None) -> Explanation:
    """The decision trail for `method url` from `subject`. `url` is absolute (its host chooses among
    host routes) or a path on `public_url`'s host. ValueError when `url` is neither."""
    now = time.time() if now is None else now
    method = method.upper()
    runtime = build_runtime(config)
    host, raw = _host_and_target(url, config.server.public_url)
    result = Explanation(method, url)
    user = None
    if subject.email:
        affirmed = datetime.fromtimestamp(now - subject.affirmed_ago, UTC).isoformat()
        user = User("explained-user", subject.email, subject.verified, subject.blocked, None, affirmed)
        flags = ["verified" if subject.verified else "unverified"] + (["blocked"] if subject.blocked else [])
        result.user = f"{subject.email} ({', '.join(flags)}; affirmed {subject.affirmed_ago:g} s ago)"
    try:
        target = runtime.targets(raw)
    except AmbiguousTarget as exc:
        result.reason = f"400: {exc.reason}"
        return result
    result.path = target.path
    route = runtime.route_table.match(host, method, target.path)
    result.route = route.index
    result.route_description = route.describe()
    upstream = runtime.upstream_for(route, target.path)
    auth = auth_mode(runtime, route, method, target.path)
    result.auth = auth
    result.session_check_ttl = (
        route.session_check_ttl
        if route.session_check_ttl is not None
        else config.centralauth.session_check_ttl
    )
    result.step_up_max_age = route.step_up_max_age
    if upstream is None:
        result.reason = "404: no [[upstreams]] entry or route serves this path"
        return result
    result.upstream = _upstream_url(upstream.url, route.forwarded_target(target))
    if auth == "public" and route.index is None:
        # The default route is "required"; an old `[routes] skip_auth` rule is what makes it public.
        decision = Decision("allow-anonymous", "a [routes] skip_auth rule matches: no session is read")
    else:
        decision = decide(route, user if auth != "public" else None, runtime.rules, now)
    result.decision, result.reason = decision.outcome, decision.reason
    if decision.outcome in ("allow", "allow-anonymous"):
        result.headers = {"X-Forwarded-For": subject.client_ip, "X-Forwarded-Host": host}
        if decision.outcome == "allow" and user is not None:
            names = runtime.identity_headers
            result.headers |= {
                names.user: user.id + " (CentralAuth's user id)",
                names.email: user.email,
                names.preferred_username: user.email,
            }
    elif decision.outcome == "sign-in":
        api = route.api if route.index is not None else runtime.routes.api(method, target.path)
        result.reason += "; answered 401 JSON (an API route)" if api else "; redirected to sign in"
    return result


def _host_and_target(url: str, public_url: str) -> tuple[str, str]:
    if url.startswith("/"):
        return urlsplit(public_url).netloc, url
    split = split_absolute(url)
    if split is None:
        raise ValueError(f"{url!r} is neither an http(s):// URL nor a path starting with /")
    return split


def _upstream_url(base: str, target: str) -> str:
    """The URL the upstream would be asked for: its base URL (path prefix included) and the target."""
    if base.startswith("unix://"):
        return f"{base} {target}"
    return base.rstrip("/") + target


def show_routes(config: Config) -> str:
    """The effective route table, as `check-config --show-routes` prints it."""
    runtime = build_runtime(config)
    lines = []
    for route in runtime.route_table.routes:
        goes_to = route.upstream or "longest-prefix [[upstreams]] choice"
        extras = [f"auth {route.auth}"]
        if route.api:
            extras.append("api")
        if route.rules is not None:
            extras.append("own allow-list")
        if route.session_check_ttl is not None:
            extras.append(f"session_check_ttl {route.session_check_ttl:g}")
        if route.step_up_max_age is not None:
            extras.append(f"step_up_max_age {route.step_up_max_age:g}")
        if route.strip_prefix:
            extras.append("strip_prefix")
        lines.append(f"#{route.index}  {route.describe()} -> {goes_to}  [{', '.join(extras)}]")
    skip = ", ".join(f'"{rule}"' for rule in config.routes.skip_auth) or "none"
    api = ", ".join(f'"{rule}"' for rule in config.routes.api) or "none"
    lines.append(
        f"default  any other request -> longest-prefix [[upstreams]] choice  "
        f"[auth required, except skip_auth: {skip}; api: {api}; "
        f"session_check_ttl {config.centralauth.session_check_ttl:g}]"
    )
    for upstream in config.upstreams:
        lines.append(f"upstream  {upstream.path} -> {upstream.url}")
    return "\n".join(lines)
