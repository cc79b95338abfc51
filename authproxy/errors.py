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
    # Seconds a client should wait before trying again (a `Retry-After` header), for passing overloads.
    retry_after: ClassVar[int | None] = None

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


# Why `[authorization]` refused someone, by the rule names of `authorization.denial`: in words the user
# can act on, and without the configuration itself (no list of the admitted domains or addresses).
DENIAL_REASONS: dict[str, str] = {
    "email_not_allowed": "It admits only some e-mail addresses or domains, and yours is not one of them.",
    "unverified_email": "It admits only verified e-mail addresses, and yours is not verified at CentralAuth.",
    "blocked": "Your account is blocked at CentralAuth.",
    "organization": "Your account belongs to another CentralAuth organization than this application.",
    "affirmation_mismatch": "You are still signed in with the account you had before.",
}


class AccessDenied(AuthproxyError):
    """The user signed in but the `[authorization]` rules do not admit them.

    The message names the kind of rule, never whether a session exists: at login none was made, on a
    proxied request there is one, and only the page rendering the error knows which.
    """

    code = "access_denied"
    status = 403
    message = "This account is not allowed to use this application."

    def __init__(self, rule: str) -> None:
        reason = DENIAL_REASONS.get(rule)
        super().__init__(public=f"{self.message} {reason}" if reason else None)
        self.rule = rule


class AffirmationMismatch(AccessDenied):
    """A step-up login came back signed in as another account than the session that asked for it."""

    message = "You confirmed your sign-in with a different account."

    def __init__(self) -> None:
        super().__init__("affirmation_mismatch")


class StepUpRequired(AuthproxyError):
    """A route wants a recent CentralAuth affirmation; an API client gets this, a browser is sent to
    affirm instead."""

    code = "step_up_required"
    status = 401
    message = "This resource needs a recent confirmation of your sign-in. Sign in again to continue."


class UpstreamUnavailable(AuthproxyError):
    """The upstream could not be reached or broke the exchange; `detail` names the cause for the log
    (refused, reset, DNS, TLS verification and its certificate error, protocol error)."""

    code = "upstream_unavailable"
    status = 502
    message = "The application behind this proxy is not answering. Please try again shortly."


class UpstreamTimeout(AuthproxyError):
    """The upstream was silent too long; `detail` says at which stage (connect, response, read)."""

    code = "upstream_timeout"
    status = 504
    message = "The application behind this proxy took too long to answer."


class UpstreamBusy(AuthproxyError):
    """Every upstream connection of this worker was in use for longer than the acquire timeout."""

    code = "upstream_busy"
    status = 503
    message = "The application behind this proxy is busy. Please try again in a moment."
    retry_after = 2


class SessionStoreUnavailable(AuthproxyError):
    """The session store (Redis) did not answer; the session is kept and the request answered 503."""

    code = "session_store_unavailable"
    status = 503
    message = "The session store is unavailable right now. Please try again in a moment."
