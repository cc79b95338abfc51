"""Who may use the upstream once CentralAuth has vouched for them: the `[authorization]` rules.

Pure; applied at login and again on every session check, so blocking a user at CentralAuth (or
unverifying them) takes effect within the check cache's lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.core.user import User


@dataclass(frozen=True, slots=True)
class Rules:
    client_id: str
    allowed_email_domains: frozenset[str] = frozenset()
    allowed_emails: frozenset[str] = frozenset()
    require_verified_email: bool = False
    allow_blocked_users: bool = False


def denial(user: User, rules: Rules) -> str | None:
    """The name of the first rule that refuses `user`, or None when the user is admitted."""
    # Defence in depth, as the official library checks neither the user's organization nor `blocked`: a
    # user of another organization has no business here, whatever the token says.
    if user.organization_id is not None and user.organization_id != rules.client_id:
        return "organization"
    if user.blocked and not rules.allow_blocked_users:
        return "blocked"
    if rules.require_verified_email and not user.verified:
        return "unverified_email"
    if rules.allowed_email_domains or rules.allowed_emails:
        email = user.email.strip().lower()
        domain = email.rpartition("@")[2]
        if email not in rules.allowed_emails and domain not in rules.allowed_email_domains:
            return "email_not_allowed"
    return None
