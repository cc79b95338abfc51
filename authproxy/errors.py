"""The error tree: each error carries a machine code (for logs and JSON bodies) and an HTTP status.

Routes raise these; one place turns them into pages or JSON. Messages are written for the person who
sees them and never contain tokens, codes, cookies or secrets.
"""

from __future__ import annotations

from typing import ClassVar


class AuthproxyError(Exception):
    """Base of every error the proxy raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    message: ClassVar[str] = "The proxy could not handle this request."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message


class ConfigError(AuthproxyError):
    """The configuration cannot be used; `problems` holds one `key: message` line per error."""

    code = "config_invalid"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
