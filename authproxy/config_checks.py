"""Judgements on configuration values that go beyond their type: placeholders, ID shape, risky settings.

Pure functions, no I/O. `config.py` refuses placeholders and malformed client IDs while it validates;
`config_warnings()` looks at a configuration that is already valid and lists the settings that work but
are probably a mistake. `authproxy check-config` prints them (and `--strict` refuses them); `serve`
logs them at start-up.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from authproxy.config import Config

__all__ = [
    "CLIENT_SECRET_LENGTH",
    "MAX_SESSION_CHECK_TTL",
    "ConfigWarning",
    "client_id_problem",
    "config_warnings",
    "is_placeholder",
]

# CentralAuth issues client secrets of exactly this many characters (its fake, devidp, insists on it).
CLIENT_SECRET_LENGTH = 64
# Beyond this, a sign-out or a blocked user at CentralAuth takes minutes to reach the proxy.
MAX_SESSION_CHECK_TTL = 300

# --- placeholders --------------------------------------------------------------------------------------
#
# Only values nobody would pick on purpose are refused: a UUID, a hex or base64url string from a
# generator, or a readable but specific name ("org-1", "demo-client") always passes. Words are what
# remains after splitting on "-", "_", "." and white space, compared case-insensitively.

# Template syntax that was never filled in: <org id>, ${CLIENT_ID}, {{ .Values.clientId }}.
_UNFILLED_TEMPLATE = re.compile(r"<.*>|\$\{.*\}|\{\{.*\}\}", re.DOTALL)
# A first word that starts an instruction rather than a value: YOUR-ORGANIZATION-ID, PASTE-THE-SECRET.
_INSTRUCTION_WORDS = frozenset({"your", "paste", "insert", "enter", "replace", "fill"})
# Whole values (with the separators removed) that stand for a value instead of being one.
_PLACEHOLDER_VALUES = frozenset(
    {
        "change",
        "changeme",
        "changeit",
        "changethis",
        "replaceme",
        "placeholder",
        "example",
        "sample",
        "secret",
        "mysecret",
        "supersecret",
        "topsecret",
        "clientsecret",
        "cookiesecret",
        "clientid",
        "organizationid",
        "orgid",
        "password",
        "passwd",
        "todo",
        "fixme",
        "tbd",
        "redacted",
        "dummy",
        "null",
        "none",
        "undefined",
    }
)
# Values that start this way are placeholders whatever follows: CHANGE-ME-TO-A-LONG-RANDOM-STRING.
_PLACEHOLDER_PREFIXES = ("changeme", "changeit", "replaceme", "placeholder")
# Words that mark a placeholder wherever they appear: my-example-secret, client-id-placeholder.
_PLACEHOLDER_WORDS = frozenset({"example", "placeholder", "changeme"})
# Masks and filler: xxx, XXXX-XXXX, ****, ..., …
_FILLER = re.compile(r"[x*.…•\s_-]*", re.IGNORECASE)


def is_placeholder(value: str) -> bool:
    """Whether `value` is obviously a stand-in for a real client ID or secret (see the rules above)."""
    text = value.strip().lower()
    if not text:
        return False  # an empty value is "missing", reported as such by the caller
    if _UNFILLED_TEMPLATE.fullmatch(text):
        return True
    if _FILLER.fullmatch(text) and sum(char in "x*.…•" for char in text) >= 3:
        return True
    words = [word for word in re.split(r"[-_.\s]+", text) if word]
    compact = "".join(words)
    return (
        (len(words) > 1 and words[0] in _INSTRUCTION_WORDS)
        or compact in _PLACEHOLDER_VALUES
        or compact.startswith(_PLACEHOLDER_PREFIXES)
        or any(word in _PLACEHOLDER_WORDS for word in words)
    )


# The client ID travels in the login URL's query, in a URL path (/api/v1/client_challenge/{client_id})
# and as the user part of HTTP Basic credentials, where a ':' would cut it short. CentralAuth's are
# UUIDs; the fake accepts any name, so only the characters that cannot work there are refused.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def client_id_problem(value: str) -> str | None:
    """Why `value` cannot be a CentralAuth organization ID, or None when it can (it is not empty)."""
    if is_placeholder(value):
        return f"{value!r} is a placeholder; set it to your CentralAuth organization ID"
    if not _CLIENT_ID.fullmatch(value):
        return (
            f"{value!r} is not a CentralAuth organization ID (a UUID such as "
            "3f1c2a9e-7b4d-4e8a-9c61-0d2b5e8f7a10; letters, digits, '-', '_', '.' and '~' only)"
        )
    return None


# --- warnings ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """A valid but risky setting: the dotted key and a one-line message that never contains a secret."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def config_warnings(config: Config) -> list[ConfigWarning]:
    """The risky settings of a valid configuration, in the order of the config file."""
    found: list[ConfigWarning] = []
    https = urlsplit(config.server.public_url).scheme == "https"

    if not config.server.trusted_proxies and https and not _is_loopback(config.server.listen):
        found.append(
            ConfigWarning(
                "server.trusted_proxies",
                "is empty while listen is not loopback and public_url is https: behind a TLS-terminating "
                "load balancer, its address would be taken for every client's (and CentralAuth's IP "
                "check would compare that); list the balancer's address or network",
            )
        )

    centralauth = config.centralauth
    length = len(centralauth.client_secret.get_secret_value())
    if length != CLIENT_SECRET_LENGTH:
        key = "client_secret_file" if centralauth.client_secret_file is not None else "client_secret"
        found.append(
            ConfigWarning(
                f"centralauth.{key}",
                f"the client secret is {length} characters; CentralAuth's are {CLIENT_SECRET_LENGTH} "
                "(was it copied whole?)",
            )
        )
    if centralauth.session_check_ttl > MAX_SESSION_CHECK_TTL:
        found.append(
            ConfigWarning(
                "centralauth.session_check_ttl",
                f"is {centralauth.session_check_ttl:g} seconds: a sign-out or a blocked user at CentralAuth "
                f"reaches the proxy only that much later; {MAX_SESSION_CHECK_TTL} or less is advised",
            )
        )

    if not config.session.cookie_secure and https:
        found.append(
            ConfigWarning(
                "session.cookie_secure",
                "is false while public_url is https: browsers would also send the session cookie over "
                "plain http, where anyone on the network can read it",
            )
        )

    for index, rule in enumerate(config.routes.skip_auth):
        method, pattern = _split_rule(rule)
        if not pattern.startswith(("^", r"\A")):
            found.append(
                ConfigWarning(
                    f"routes.skip_auth[{index}]",
                    f"{rule!r} is not anchored with '^', so sign-in is skipped for every path that "
                    f"contains a match anywhere; did you mean {method + '^' + pattern!r}?",
                )
            )
    public_host = (urlsplit(config.server.public_url).hostname or "").lower()
    domain = config.session.cookie_domain.lower().lstrip(".")
    for index, route in enumerate(config.routes.table):
        host = route.host.lower().removeprefix("*.")
        if not host or host == public_host:
            continue
        if not domain or not (host == domain or host.endswith("." + domain)):
            found.append(
                ConfigWarning(
                    f"routes[{index}].host",
                    f"{route.host!r} is not covered by session.cookie_domain ({domain or 'unset'}): the "
                    "session cookie set after a login on public_url's host never reaches it, so its "
                    "requests would be sent to sign in again and again",
                )
            )
    return found


def _split_rule(rule: str) -> tuple[str, str]:
    """("GET ", pattern) or ("", pattern), with the method prefix the rule parser (paths.py) accepts."""
    method, sep, pattern = rule.partition(" ")
    if sep and re.fullmatch(r"[A-Z]+", method):
        return f"{method} ", pattern.strip()
    return "", rule


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
