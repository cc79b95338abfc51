"""The route table over canonical paths: hosts, prefixes and regexes, methods, first match, strip_prefix,
and the decision for a user (`core.routing`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from authproxy.core.authorization import Rules
from authproxy.core.paths import canonical_target
from authproxy.core.routing import Route, RouteTable, decide, host_matches, prefix_matches
from authproxy.core.user import User

RULES = Rules(client_id="app")
NOW = 2_000_000_000.0


def user(email: str = "ada@example.com", *, verified: bool = True, affirmed: float | None = NOW) -> User:
    date = datetime.fromtimestamp(affirmed, UTC).isoformat() if affirmed is not None else None
    return User("u1", email, verified, False, None, date)


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/", "/anything", True),
        ("/admin", "/admin", True),
        ("/admin", "/admin/users", True),
        ("/admin", "/administrator", False),
        ("/admin/", "/admin/users", True),
        ("/admin/", "/admin", False),
        ("/admin/", "/admin/", True),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
    ],
)
def test_prefixes_match_whole_segments(prefix: str, path: str, expected: bool) -> None:
    assert prefix_matches(prefix, path) is expected


@pytest.mark.parametrize(
    ("rule", "host", "expected"),
    [
        ("app.example.com", "app.example.com", True),
        ("app.example.com", "APP.Example.COM", True),
        ("app.example.com", "app.example.com:8443", True),
        ("app.example.com", "app.example.com.evil.test", False),
        ("app.example.com", "evilapp.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "a.example.com:80", True),
        ("app.example.com", "", False),
    ],
)
def test_hosts_match_exactly_or_as_subdomains(rule: str, host: str, expected: bool) -> None:
    assert host_matches(rule, host) is expected


TABLE = RouteTable(
    [
        Route.build(0, "/admin/", host="admin.example.com", auth="required"),
        Route.build(1, "~^/api/v[0-9]+/reports", methods=["GET"], api=True),
        Route.build(2, "/public", auth="public"),
        Route.build(3, "/blog", auth="optional", strip_prefix=True),
        Route.build(4, "/admin/"),  # any other host
    ],
    Route.build(None),
)


@pytest.mark.parametrize(
    ("host", "method", "raw", "index"),
    [
        ("admin.example.com", "GET", "/admin/users", 0),
        ("www.example.com", "GET", "/admin/users", 4),
        ("admin.example.com", "GET", "/other", None),
        ("x", "GET", "/api/v2/reports/1", 1),
        ("x", "POST", "/api/v2/reports/1", None),  # the method does not match: the default route
        ("x", "GET", "/api/vx/reports", None),
        ("x", "GET", "/public/page", 2),
        ("x", "GET", "/publicity", None),
        ("x", "GET", "/blog/post", 3),
        # Spellings that would reach /admin/ are judged by their canonical path, never as /public.
        ("x", "GET", "/public/../admin/users", 4),
        ("x", "GET", "/public/%2e%2e/admin/users", 4),
        ("x", "GET", "/public/./../admin/users", 4),
        ("x", "GET", "/public;x=1/../admin/users", 4),
        ("x", "GET", "//public/../admin/", 4),
        ("x", "GET", "/PUBLIC/page", None),  # paths are case-sensitive
    ],
)
def test_the_first_matching_route_wins_on_the_canonical_path(
    host: str, method: str, raw: str, index: int | None
) -> None:
    path = canonical_target(raw).path
    assert TABLE.match(host, method, path).index == index


@pytest.mark.parametrize(
    ("prefix", "path", "forwarded"),
    [("/blog", "/blog/post", "/post"), ("/blog", "/blog", "/"), ("/blog/", "/blog/a/b", "/a/b")],
)
def test_strip_prefix_forwards_the_rest(prefix: str, path: str, forwarded: str) -> None:
    assert Route.build(0, prefix, strip_prefix=True).forwarded_path(path) == forwarded
    assert Route.build(0, prefix).forwarded_path(path) == path


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"path": "~([unclosed"}, "regular expression"),
        ({"path": "admin"}, "must start with /"),
        ({"path": "~^/x", "strip_prefix": True}, "strip_prefix"),
        ({"host": "bad host!"}, "host"),
        ({"host": "*.*.example.com"}, "host"),
    ],
)
def test_bad_routes_are_refused_with_the_reason(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Route.build(0, **settings)


def test_decisions_for_each_auth_mode() -> None:
    required, optional, public = (
        Route.build(0, "/", auth=mode) for mode in ("required", "optional", "public")
    )
    assert decide(public, None, RULES, NOW).outcome == "allow-anonymous"
    assert decide(public, user(), RULES, NOW).outcome == "allow-anonymous"
    assert decide(optional, None, RULES, NOW).outcome == "allow-anonymous"
    assert decide(optional, user(), RULES, NOW).outcome == "allow"
    assert decide(required, None, RULES, NOW).outcome == "sign-in"
    assert decide(required, user(), RULES, NOW).outcome == "allow"


def test_per_route_allow_lists_override_the_global_rules() -> None:
    staff = Route.build(0, "/", rules=Rules("app", allowed_email_domains=frozenset({"staff.example"})))
    outsider, insider = user("eve@example.com"), user("bob@staff.example")
    assert decide(staff, outsider, RULES, NOW).outcome == "deny"
    assert "the route's rule email_not_allowed" in decide(staff, outsider, RULES, NOW).reason
    assert decide(staff, insider, RULES, NOW).outcome == "allow"
    # Without its own rules a route uses the global ones.
    strict = Rules("app", allowed_emails=frozenset({"bob@staff.example"}))
    plain = Route.build(1, "/")
    assert decide(plain, outsider, strict, NOW).outcome == "deny"
    assert "global" in decide(plain, outsider, strict, NOW).reason


def test_step_up_by_affirmation_age() -> None:
    route = Route.build(0, "/", step_up_max_age=300)
    assert decide(route, user(affirmed=NOW - 299), RULES, NOW).outcome == "allow"
    assert decide(route, user(affirmed=NOW - 301), RULES, NOW).outcome == "step-up"
    assert decide(route, user(affirmed=None), RULES, NOW).outcome == "step-up"
    # A denied user is denied, not sent to affirm.
    narrow = Route.build(1, "/", step_up_max_age=300, rules=Rules("app", allowed_emails=frozenset({"x@y"})))
    assert decide(narrow, user(affirmed=NOW - 1000), RULES, NOW).outcome == "deny"


def test_the_per_route_ttl_is_kept_on_the_route() -> None:
    assert Route.build(0, "/", session_check_ttl=0).session_check_ttl == 0
    assert Route.build(0, "/").session_check_ttl is None
