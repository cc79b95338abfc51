"""The canonical request target, and the path rules that judge it (pure: no I/O, no framework).

A request passes only as the exact thing that was judged. `canonical_target` turns the raw target of a
request into one canonical path, which every decision uses (`skip_auth`, `api`, the choice of upstream,
forward-auth's `X-Forwarded-Uri`) and which is also what the upstream receives, so an upstream can
never route a different resource from the one the rules saw. The query passes through unchanged.

Canonicalization (each step is what some upstream does before routing, so doing it first leaves the
upstream nothing to reinterpret):

- percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, the others are kept
  with upper-case hex (RFC 3986, section 6.2.2), and the printable characters a path may not hold raw
  (`" < > [ ] ^ ` { | }`) are encoded;
- `;parameters` are removed from every segment: servlet containers (Tomcat, Jetty) route on the path
  without them, so `/admin/x;.css` is `/admin/x` to them, whatever a regex on the raw path thinks;
- dot segments are resolved, percent-encoded ones too (RFC 3986, section 5.2.4), and empty segments merged.

What cannot be judged unambiguously is refused with `AmbiguousTarget` (a 400), because some upstream
would read it differently from the rules:

- a byte outside printable ASCII (controls, space, DEL, non-ASCII), a backslash (a separator to IIS
  and some Windows stacks) or `#` in the path;
- a `%` not followed by two hex digits (servers differ on stray escapes);
- an encoded `/`, `\\` or NUL (`%2F`, `%5C`, `%00`): stacks that decode before routing see a separator;
- `%25` followed by a hex pair or another `%` (`%252e`, `%25%32%65`): double decoding turns it into a
  different escape;
- an encoded control character (`%00`-`%1F`, `%7F`): a decoding upstream may split a line on it;
- a dot segment carrying parameters (`..;x`) or mixing plain and encoded dots (`.%2e`).

A target in absolute form (`http://host/path`) is judged by its path, once `split_absolute` has shown
that its authority is the request's `Host`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Printable ASCII, less what is refused anywhere in a target: backslash and `#` (see the docstring).
_PLAIN = re.compile(r"[!-\"$-\[\]-~]*")
_QUERY = re.compile(r"[!-\"$-~]*")
_ESCAPE = re.compile(r"%(..)?", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
_DOUBLE = re.compile(r"%25(%|[0-9A-Fa-f]{2})")
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_DOTS_RAW = frozenset({".", "..", "%2e", "%2e%2e"})
# Printable characters RFC 3986 does not allow in a path. Browsers encode some of them and not others,
# Tomcat refuses them raw, other servers accept them: encoded, they mean the same to every decoder.
_ENCODE = str.maketrans({char: f"%{ord(char):02X}" for char in '"<>[]^`{|}'})


class AmbiguousTarget(ValueError):
    """The request target reads differently to different parsers; it is refused with 400."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """`path` is what the rules judge; `wire` is the path the upstream receives (the same path, with
    the segments' parameters put back only under `keep_parameters`); `query` passes unchanged."""

    path: str
    wire: str
    query: str

    @property
    def wire_target(self) -> str:
        return f"{self.wire}?{self.query}" if self.query else self.wire


def split_absolute(raw_target: str) -> tuple[str, str] | None:
    """(authority, origin-form target) for an absolute-form target, None for any other form."""
    match = _ABSOLUTE.match(raw_target)
    if match is None or match.group(1).lower() not in ("http", "https"):
        return None
    rest = raw_target[match.end() :]
    if rest.startswith("?"):
        rest = "/" + rest
    return match.group(2), rest or "/"


def _decode_segment(raw: str) -> str:
    """Percent-escapes of unreserved characters decoded, the others upper-cased; raises when ambiguous."""
    if "%" not in raw:
        return raw
    out: list[str] = []
    position = 0
    for match in _ESCAPE.finditer(raw):
        pair = match.group(1)
        if pair is None or pair[0] not in _HEX or pair[1] not in _HEX:
            raise AmbiguousTarget("a '%' that starts no escape")
        value = int(pair, 16)
        if value in (0x2F, 0x5C, 0x00):
            raise AmbiguousTarget("an encoded '/', '\\' or NUL")
        if value < 0x20 or value == 0x7F:
            raise AmbiguousTarget("an encoded control character")
        out.append(raw[position : match.start()])
        char = chr(value)
        out.append(char if char in _UNRESERVED else "%" + pair.upper())
        position = match.end()
    out.append(raw[position:])
    decoded = "".join(out)
    # Checked on the result, since decoding may bring a hex pair next to `%25` (`%250%32` is `%2502`).
    if _DOUBLE.search(decoded) is not None:
        raise AmbiguousTarget("a double-encoded escape")
    return decoded


def canonical_target(raw_target: str, *, keep_parameters: bool = False) -> Target:
    """The canonical form of an origin-form request target; raises AmbiguousTarget (see the module)."""
    raw_path, has_query, query = raw_target.partition("?")
    if not raw_path.startswith("/"):
        raise AmbiguousTarget("a target that is not an absolute path")
    if _PLAIN.fullmatch(raw_path) is None:
        raise AmbiguousTarget("a control, non-ASCII, backslash or '#' byte in the path")
    if has_query and _QUERY.fullmatch(query) is None:
        raise AmbiguousTarget("a control, non-ASCII or '#' byte in the query")
    raw_path = raw_path.translate(_ENCODE)
    names: list[str] = []
    params: list[str] = []
    raw_segments = raw_path.split("/")
    trailing = False
    for raw in raw_segments[1:]:
        raw_name, semicolon, parameters = raw.partition(";")
        name = _decode_segment(raw_name)
        # The parameters themselves are never judged, but must not hide an escape the upstream decodes.
        _decode_segment(parameters)
        trailing = False
        if name in (".", ".."):
            if semicolon:
                raise AmbiguousTarget("a dot segment with parameters")
            if raw_name.lower() not in _DOTS_RAW:
                raise AmbiguousTarget("a dot segment that mixes plain and encoded dots")
            if name == ".." and names:
                names.pop()
                params.pop()
            trailing = True
            continue
        if not name:
            trailing = True
            continue
        names.append(name)
        params.append(semicolon + parameters)
    suffix = "/" if trailing and names else ""
    path = "/" + "/".join(names) + suffix
    if keep_parameters and any(params):
        wire = "/" + "/".join(name + param for name, param in zip(names, params, strict=True)) + suffix
    else:
        wire = path
    return Target(path, wire, query)


class CanonicalTargets:
    """`canonical_target` remembered per raw target: browsers ask for the same few paths over and over,
    and the answer is a function of the raw target alone, so remembering it is exact. Refusals are
    remembered too. The memory is bounded (oldest first) and only short targets are kept."""

    def __init__(self, keep_parameters: bool = False, size: int = 4096, longest: int = 512) -> None:
        self._keep = keep_parameters
        self._size = size
        self._longest = longest
        self._memo: dict[str, Target | AmbiguousTarget] = {}

    def __call__(self, raw_target: str) -> Target:
        found = self._memo.get(raw_target)
        if found is None:
            try:
                found = canonical_target(raw_target, keep_parameters=self._keep)
            except AmbiguousTarget as exc:
                found = exc
            if len(raw_target) <= self._longest:
                if len(self._memo) >= self._size:
                    del self._memo[next(iter(self._memo))]  # insertion order: the oldest entry
                self._memo[raw_target] = found
        if isinstance(found, AmbiguousTarget):
            raise AmbiguousTarget(found.reason)
        return found


def canonical_path(raw_target: str) -> str:
    """Just the judged path of `canonical_target` (query dropped); raises AmbiguousTarget."""
    return canonical_target(raw_target).path


def parse_route_rule(rule: str) -> tuple[str | None, re.Pattern[str]]:
    """Split a `"GET ^/healthz$"` or `"^/public/"` rule into (method or None, compiled regex)."""
    method, sep, pattern = rule.partition(" ")
    if sep and re.fullmatch(r"[A-Z]+", method):
        return method, re.compile(pattern.strip())
    return None, re.compile(rule)


@dataclass(frozen=True, slots=True)
class Rule:
    method: str | None
    pattern: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


class RuleSet:
    """One list of `[routes]` rules, compiled once at start-up, matched against canonical paths."""

    def __init__(self, rules: Sequence[str]) -> None:
        self._rules = tuple(Rule(*parse_route_rule(rule)) for rule in rules)

    def __call__(self, method: str, path: str) -> bool:
        return any(rule.matches(method, path) for rule in self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)


@dataclass(frozen=True, slots=True)
class RouteRules:
    """`skip_auth` and `api` rules. Both take the canonical path (`Target.path`), never a raw one."""

    skip: RuleSet
    api_rules: RuleSet

    @classmethod
    def from_config(cls, skip_auth: Sequence[str], api: Sequence[str]) -> RouteRules:
        return cls(RuleSet(skip_auth), RuleSet(api))

    def skip_auth(self, method: str, path: str) -> bool:
        return bool(self.skip) and self.skip(method, path)

    def api(self, method: str, path: str) -> bool:
        return bool(self.api_rules) and self.api_rules(method, path)
