"""The error tree: each error carries a machine code (for logs and JSON bodies) and an HTTP status.

Routes raise these; one place turns them into pages or JSON. `public` is written for the person who sees
the page; `detail` is for the operator's log. Neither ever contains tokens, codes, cookies or secrets.
"""

from __future__ import annotations

from typing import ClassVar


class AuthproxyError(Exception):
    """Base of every error the proxy raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    message: ClassVar[str] = "The proxy could not handle this request."

    def __init__(self, detail: str | None = None, *, public: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        self.public = public or self.message


class ConfigError(AuthproxyError):
    """The configuration cannot be used; `problems` holds one `key: message` line per error."""

    code = "config_invalid"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SessionTooLarge(AuthproxyError):
    """A session would not fit in a browser cookie; refused at creation rather than silently dropped."""

    code = "session_too_large"
    status = 500
    message = "The session is too large to store in a cookie."


class CentralAuthUnavailable(AuthproxyError):
    """CentralAuth did not give a usable answer (timeout, connection error, 429, 5xx, non-JSON).

    An outage is never a logout: the session is kept and the request is answered 503 (or served from the
    stale window when configured).
    """

    code = "centralauth_unavailable"
    status = 503
    message = "The sign-in service is not answering right now. Please try again in a moment."


class SessionRejected(AuthproxyError):
    """CentralAuth definitely refused the session (session, token, domain or permission error)."""

    code = "session_rejected"
    status = 401
    message = "Your session has ended. Please sign in again."

    def __init__(self, error_code: str) -> None:
        super().__init__()
        self.error_code = error_code


class LoginError(AuthproxyError):
    """A login could not be completed; the browser gets a page with a way to start over."""

    code = "login_failed"
    status = 400
    message = "Sign-in could not be completed. Please try again."


class LoginExpired(LoginError):
    code = "login_expired"
    message = "This sign-in has expired or was started in another browser. Please try again."


class LoginRejected(LoginError):
    """CentralAuth refused the login (an `error` on the callback, or a refused code exchange)."""

    code = "login_rejected"

    def __init__(self, error_code: str) -> None:
        super().__init__()
        self.error_code = error_code


class AmbiguousRequest(AuthproxyError):
    """The request could be read two ways (its target, a header's bytes): refused rather than guessed."""

    code = "ambiguous_request"
    status = 400
    message = "This request is malformed or ambiguous, and was not passed on."


class AccessDenied(AuthproxyError):
    """The user signed in but the `[authorization]` rules do not admit them."""

    code = "access_denied"
    status = 403
    message = "You are signed in, but this account is not allowed to use this application."

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule


class UpstreamUnavailable(AuthproxyError):
    code = "upstream_unavailable"
    status = 502
    message = "The application behind this proxy is not answering. Please try again shortly."


class UpstreamTimeout(AuthproxyError):
    code = "upstream_timeout"
    status = 504
    message = "The application behind this proxy took too long to answer."


class SessionStoreUnavailable(AuthproxyError):
    """The session store (Redis) did not answer; the session is kept and the request answered 503."""

    code = "session_store_unavailable"
    status = 503
    message = "The session store is unavailable right now. Please try again in a moment."
