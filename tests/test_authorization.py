"""The `[authorization]` rules applied to CentralAuth users."""

from __future__ import annotations

from typing import Any

import pytest

from authproxy.core.authorization import Rules, denial
from authproxy.core.user import User


def user(**overrides: Any) -> User:
    values: dict[str, Any] = {
        "id": "u1",
        "email": "Ada@Example.com",
        "verified": True,
        "blocked": False,
        "organization_id": "org",
        "affirmation_date": None,
    }
    values.update(overrides)
    return User(**values)


@pytest.mark.parametrize(
    ("rules", "subject", "expected"),
    [
        (Rules("org"), user(), None),
        (Rules("org"), user(organization_id=None), None),
        (Rules("org"), user(organization_id="other"), "organization"),
        (Rules("org"), user(blocked=True), "blocked"),
        (Rules("org", allow_blocked_users=True), user(blocked=True), None),
        (Rules("org", require_verified_email=True), user(verified=False), "unverified_email"),
        (Rules("org"), user(verified=False), None),
        (Rules("org", allowed_email_domains=frozenset({"example.com"})), user(), None),
        (Rules("org", allowed_email_domains=frozenset({"example.org"})), user(), "email_not_allowed"),
        (
            Rules("org", allowed_email_domains=frozenset({"example.com"})),
            user(email="a@sub.example.com"),
            "email_not_allowed",
        ),
        (Rules("org", allowed_emails=frozenset({"ada@example.com"})), user(), None),
        (Rules("org", allowed_emails=frozenset({"bob@example.com"})), user(), "email_not_allowed"),
        (
            Rules(
                "org",
                allowed_emails=frozenset({"bob@example.com"}),
                allowed_email_domains=frozenset({"example.com"}),
            ),
            user(),
            None,
        ),
        (
            Rules("org", allowed_email_domains=frozenset({"example.com"})),
            user(email="a@example.com@evil.org"),
            "email_not_allowed",
        ),
    ],
)
def test_rules(rules: Rules, subject: User, expected: str | None) -> None:
    assert denial(subject, rules) == expected


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        ({"id": "u", "email": "a@b.c"}, True),
        ({"id": "u", "email": "a@b.c", "verified": "true", "blocked": 1}, True),
        ({"id": "", "email": "a@b.c"}, False),
        ({"id": "u"}, False),
        ({"id": 5, "email": "a@b.c"}, False),
        (["id", "email"], False),
        (None, False),
        ("user", False),
    ],
)
def test_user_parsing_is_defensive(body: object, parsed: bool) -> None:
    result = User.from_json(body)
    assert (result is not None) == parsed
    if result is not None:
        # Odd flag values fall on the safe side: never verified, blocked when truthy.
        assert result.verified is False
        assert isinstance(body, dict)
        assert result.blocked is bool(body.get("blocked"))
