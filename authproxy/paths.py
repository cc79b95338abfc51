"""Path normalization and the `[routes]` rules that match against it (pure).

Rules are matched against the path as an upstream will understand it, so that `/public/../admin`,
`/public/%2e%2e/admin` or `//admin` cannot reach a protected route dressed up as a public one: percent-
encoded unreserved characters are decoded, other escapes upper-cased, repeated slashes merged and dot
segments removed (RFC 3986 §5.2.4, §6.2.2). The forwarder sends this same normalized path upstream, so
what was classified is what the upstream sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from authproxy.config import parse_route_rule

# A "%" that starts no escape is itself encoded, so decoding can never assemble a new escape ("%%32e").
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Escapes that some upstream stacks decode before routing (once or twice); a path carrying them, or a
# Tomcat/Jetty-style `..;` dot segment with parameters, is never public.
_AMBIGUOUS = re.compile(r"%(2F|5C|00)|%25(2F|5C|00|2E)|\\|(^|/)\.{1,2};", re.IGNORECASE)


def _unescape(match: re.Match[str]) -> str:
    if match.group(1) is None:
        return "%25"
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def normalize_path(raw_path: str) -> str:
    """The canonical form of the path part of a request target (query and fragment dropped)."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    path = _ESCAPE.sub(_unescape, path)
    output: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if output:
                output.pop()
            continue
        output.append(segment)
    trailing = "/" if output and path.endswith(("/", "/.", "/..")) else ""
    return "/" + "/".join(output) + trailing


def ambiguous(raw_path: str) -> bool:
    """True when the path holds encoded slashes, backslashes or NULs: never treat such a path as public."""
    return bool(_AMBIGUOUS.search(raw_path.split("?", 1)[0]))


@dataclass(frozen=True, slots=True)
class Rule:
    method: str | None
    pattern: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


class RuleSet:
    """One list of `[routes]` rules, compiled once at start-up."""

    def __init__(self, rules: Sequence[str]) -> None:
        self._rules = tuple(Rule(*parse_route_rule(rule)) for rule in rules)

    def __call__(self, method: str, normalized_path: str) -> bool:
        return any(rule.matches(method, normalized_path) for rule in self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)


@dataclass(frozen=True, slots=True)
class RouteRules:
    skip: RuleSet
    api_rules: RuleSet

    @classmethod
    def from_config(cls, skip_auth: Sequence[str], api: Sequence[str]) -> RouteRules:
        return cls(RuleSet(skip_auth), RuleSet(api))

    def skip_auth(self, method: str, raw_path: str, normalized: str | None = None) -> bool:
        """`normalized` is `normalize_path(raw_path)` when the caller has it already."""
        if not self.skip:
            return False
        path = normalize_path(raw_path) if normalized is None else normalized
        return not ambiguous(raw_path) and self.skip(method, path)

    def api(self, method: str, raw_path: str) -> bool:
        return bool(self.api_rules) and self.api_rules(method, normalize_path(raw_path))
