"""The canonical request target and `[routes]` matching: the table of attack paths and the properties.

The proxy judges a request by its canonical path and forwards that same path upstream, so every
re-spelling of a protected path must canonicalize to the protected path, and a spelling that some
upstream could read differently (encoded slashes, backslashes, NULs, stray or double escapes, dot
segments with parameters) must be refused (`AmbiguousTarget`, a 400) rather than judged.
"""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authproxy.core.paths import (
    AmbiguousTarget,
    CanonicalTargets,
    RouteRules,
    Target,
    canonical_target,
    split_absolute,
)

PROPERTY = settings(max_examples=500, deadline=None)
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
SUB_DELIMS = "!$&'()*+,=:@"
PUBLIC = RouteRules.from_config(["^/public/"], [])
EVERYTHING = RouteRules.from_config([".*"], [])
HEALTHZ = RouteRules.from_config(["GET ^/healthz$"], [])
REFUSED = "REFUSED"


def rules(*skip_auth: str) -> RouteRules:
    return RouteRules.from_config(list(skip_auth), [])


def segments(path: str) -> list[str]:
    return path.split("/")[1:]


def judge(raw: str) -> str:
    """The canonical path, or REFUSED."""
    try:
        return canonical_target(raw).path
    except AmbiguousTarget:
        return REFUSED


def public(routes: RouteRules, method: str, raw: str) -> bool:
    """What the proxy does with `raw`: public only when it is not refused and its canonical path is."""
    path = judge(raw)
    return path != REFUSED and routes.skip_auth(method, path)


NORMALIZE = [
    ("", REFUSED, "empty"),
    ("/", "/", "root"),
    ("a/b", REFUSED, "no-leading-slash"),
    ("/a/b/", "/a/b/", "trailing-slash-kept"),
    ("//a///b", "/a/b", "repeated-slashes"),
    ("/a/./b", "/a/b", "dot"),
    ("/a/../b", "/b", "dot-dot"),
    ("/a/b/..", "/a/", "dot-dot-last"),
    ("/a/b/.", "/a/b/", "dot-last"),
    ("/..", "/", "dot-dot-above-root"),
    ("/../../a", "/a", "dot-dots-above-root"),
    ("/a/../../", "/", "back-to-root"),
    ("/a/%2e%2e/b", "/b", "encoded-dot-dot"),
    ("/a/.%2E/b", REFUSED, "half-encoded-dot-dot"),
    ("/a/%2e/b", "/a/b", "encoded-dot"),
    ("/%41%62%7a", "/Abz", "encoded-letters"),
    ("/%30%39", "/09", "encoded-digits"),
    ("/%2d%2e%5f%7e", "/-._~", "encoded-marks"),
    ("/%7euser", "/~user", "encoded-tilde"),
    ("/a%2fb", REFUSED, "encoded-slash"),
    ("/a%3fb%23c", "/a%3Fb%23c", "encoded-query-fragment-kept"),
    ("/a%20b", "/a%20b", "encoded-space-kept"),
    ("/%e2%82%ac", "/%E2%82%AC", "utf8-upper-cased"),
    ("/%25", "/%25", "encoded-percent-kept"),
    ("/%252e%252e", REFUSED, "double-encoding"),
    ("/a/%2e%2e%2fb", REFUSED, "encoded-slash-in-dots"),
    ("/a?b=../c", "/a", "query-dropped"),
    ("/a#frag/../x", REFUSED, "fragment"),
    ("/a/b?x#y", REFUSED, "fragment-after-query"),
    ("/a/..?q=1", "/", "dot-dot-before-query"),
    ("/public/x%23/../admin", "/public/admin", "encoded-hash-is-a-segment"),
    ("/a/...", "/a/...", "three-dots-is-a-name"),
    ("/a/..b/.c", "/a/..b/.c", "dots-inside-names"),
    ("/a\\..\\b", REFUSED, "backslash"),
    ("/a;b/c", "/a/c", "path-parameter-removed"),
    ("/admin/x;.css", "/admin/x", "parameter-is-not-a-suffix"),
    ("/;x/admin", "/admin", "parameter-only-segment"),
    ("/a/b;", "/a/b", "empty-parameter"),
    ("/a/b/;x", "/a/b/", "trailing-parameter-only-segment"),
    ("/public/..;/admin", REFUSED, "dot-dot-with-parameter"),
    ("/public/%2e%2e;/admin", REFUSED, "encoded-dot-dot-with-parameter"),
    ("/public/.;x/admin", REFUSED, "dot-with-parameter"),
    ("/a/%0d%0a", REFUSED, "encoded-control"),
    ("/a/%7f", REFUSED, "encoded-delete"),
    ("/a%2", REFUSED, "truncated-escape"),
    ("/a%zz", REFUSED, "not-hex"),
    ("/%%32e", REFUSED, "stray-percent"),
    ("/%25%32%65", REFUSED, "encoded-percent-then-escape"),
    ("/%%300", REFUSED, "stray-percent-then-digits"),
    ("/%250%32", REFUSED, "decoding-completes-a-double-escape"),
    ("/%25%41z", "/%25Az", "encoded-percent-before-a-non-hex-pair"),
    ("/%u002e", REFUSED, "iis-unicode-escape"),
    ("/a b", REFUSED, "space"),
    ("/a\x7fb", REFUSED, "delete"),
    ("/caf\u00e9", REFUSED, "non-ascii"),
    ("/a\udcffb", REFUSED, "non-utf8-byte"),
    ("/a?\x01", REFUSED, "control-in-query"),
    ("/a|b{}^`", "/a%7Cb%7B%7D%5E%60", "not-allowed-raw-is-encoded"),
    ('/"<x>[y]', "/%22%3Cx%3E%5By%5D", "quotes-brackets-encoded"),
    ("/a?b=%%", "/a", "query-is-not-judged"),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [pytest.param(raw, out, id=name) for raw, out, name in NORMALIZE]
)
def test_canonical_table(raw: str, expected: str) -> None:
    assert judge(raw) == expected


ATTACKS = [
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "//admin",
    "/public/..%2fadmin",
    "/public/%2f../admin",
    "/public\\..\\admin",
    "/public/x/../../admin",
    "/./public/../admin",
    "/public/..",
    "/public/../",
    "/public/./../admin",
    "/public/%2e/../admin",
    "/public/%2e./admin",
    "/public/%2E%2e/admin",
    "/public/x/%2e%2e/%2e%2e/admin",
    "///public/../admin",
    "//public//..//admin",
    "/public/../public/../admin",
    "/%70ublic/../admin",
    "/public%2f../admin",
    "/public%2F..%2Fadmin",
    "/public/%2e%2e%2Fadmin",
    "/public/%5c../admin",
    "/public/..%5Cadmin",
    "/public/x%00",
    "/public/%00/../admin",
    "/public\\admin",
    "/public/..?/x",
    "/public/..#/x",
    "/public",
    "/PUBLIC/x",
    "/Public/x",
    "/admin/public/",
    "/admin?/public/",
    "/admin#/public/",
]


@pytest.mark.parametrize("raw", ATTACKS, ids=str)
def test_attack_paths_are_not_public(raw: str) -> None:
    assert not public(PUBLIC, "GET", raw)
    path = judge(raw)
    assert path == REFUSED or canonical_target(raw).wire == path


STRAY_PERCENT = [
    "/public/%%32e%%32e/admin",
    "/public/%%32%65%%32%65/admin",
    "/public/%%32%45%%32%45/admin",
    "/public/x/%%32e%%32e/%%32e%%32e/admin",
    "/public/%%32e./admin",
    "/public/%25%32%65%25%32%65/admin",
    "/public/%%300/admin",
    "/public/%252e%252e/admin",
]


@pytest.mark.parametrize("raw", STRAY_PERCENT, ids=str)
def test_stray_percent_is_refused(raw: str) -> None:
    assert judge(raw) == REFUSED


PUBLIC_PATHS = [
    ("/public/x", "/public/x"),
    ("/public/", "/public/"),
    ("/public/x%23/../admin", "/public/admin"),
    ("/%70ublic/x", "/public/x"),
    ("/%70%75%62%6C%69%63/x", "/public/x"),
    ("//public//x", "/public/x"),
    ("/public/./x", "/public/x"),
    ("/admin/../public/x", "/public/x"),
    ("/public/x?next=/admin", "/public/x"),
    ("/public/x?q=%2F", "/public/x"),
    ("/public/...", "/public/..."),
]


@pytest.mark.parametrize(("raw", "upstream"), PUBLIC_PATHS, ids=[raw for raw, _ in PUBLIC_PATHS])
def test_public_paths_and_what_the_upstream_gets(raw: str, upstream: str) -> None:
    assert public(PUBLIC, "GET", raw)
    target = canonical_target(raw)
    assert target.path == upstream
    assert target.wire == upstream


AMBIGUOUS = [
    ("/a%2Fb", True),
    ("/a%2fb", True),
    ("/a%5Cb", True),
    ("/a%5cb", True),
    ("/a%00b", True),
    ("/a\\b", True),
    ("/a/b#%2F", True),
    ("/a%252Fb", True),  # double-encoded: an upstream that decodes twice sees a slash
    ("/a%252eb", True),
    ("/a%2525b", True),
    ("/public/..;/admin", True),
    ("/public/.;x/y", True),
    ("/public/a..;/y", False),
    ("/a%2", True),
    ("/a/b?next=%2F", False),
    ("/a/b?path=\\", False),
    ("/a/b", False),
]


@pytest.mark.parametrize(("raw", "expected"), AMBIGUOUS, ids=[raw for raw, _ in AMBIGUOUS])
def test_ambiguous(raw: str, expected: bool) -> None:
    assert (judge(raw) == REFUSED) is expected


METHOD_RULES = [
    (("GET ^/healthz$",), "GET", "/healthz", True, "method-matches"),
    (("GET ^/healthz$",), "POST", "/healthz", False, "other-method"),
    (("GET ^/healthz$",), "HEAD", "/healthz", False, "head-is-not-get"),
    (("GET ^/healthz$",), "GET", "/healthz?probe=1", True, "query-ignored"),
    (("GET ^/healthz$",), "GET", "//healthz", True, "normalized-before-matching"),
    (("GET ^/healthz$",), "GET", "/x/../healthz", True, "dot-segments-resolved"),
    (("GET ^/healthz$",), "GET", "/healthz/", False, "dollar-anchor"),
    (("GET ^/healthz$",), "GET", "/healthzz", False, "dollar-anchor-suffix"),
    (("GET ^/healthz$",), "GET", "/x/healthz", False, "caret-anchor"),
    (("^/healthz$",), "DELETE", "/healthz", True, "no-method-any-method"),
    (("^/public",), "GET", "/publicity", True, "unslashed-prefix-also-matches-publicity"),
    (("^/public/",), "GET", "/publicity", False, "slashed-prefix-does-not"),
    (("/public/",), "GET", "/admin/public/x", True, "unanchored-matches-anywhere"),
    (("GET ^/a/", "POST ^/b/"), "POST", "/b/x", True, "any-rule-matches"),
    (("GET ^/a/", "POST ^/b/"), "POST", "/a/x", False, "rule-method-binds"),
    ((), "GET", "/", False, "no-rules"),
]


@pytest.mark.parametrize(
    ("skip", "method", "raw", "expected"),
    [
        pytest.param(skip, method, raw, expected, id=name)
        for skip, method, raw, expected, name in METHOD_RULES
    ],
)
def test_skip_auth_rules(skip: tuple[str, ...], method: str, raw: str, expected: bool) -> None:
    assert public(rules(*skip), method, raw) is expected


def test_api_rules_match_the_canonical_path() -> None:
    routes = RouteRules.from_config([], ["^/api/"])
    assert routes.api("GET", judge("/x/../api/v1"))
    assert routes.api("GET", judge("/%61pi/v1"))
    assert not routes.api("GET", judge("/api/../x"))


def test_the_query_passes_unchanged() -> None:
    assert canonical_target("/%61/./b?x=%2F..%2f&y=%%") == Target("/a/b", "/a/b", "x=%2F..%2f&y=%%")
    assert judge("/a?#") == REFUSED
    assert canonical_target("/%61/./b?x=%2F..%2f&y=%%").wire_target == "/a/b?x=%2F..%2f&y=%%"
    assert canonical_target("/a?").wire_target == "/a"


def test_parameters_kept_on_the_wire_only_when_asked() -> None:
    raw = "/app;jsessionid=ABC/x/../page;v=1?q=1"
    assert canonical_target(raw) == Target("/app/page", "/app/page", "q=1")
    kept = canonical_target(raw, keep_parameters=True)
    assert kept == Target("/app/page", "/app;jsessionid=ABC/page;v=1", "q=1")
    assert kept.wire_target == "/app;jsessionid=ABC/page;v=1?q=1"
    with pytest.raises(AmbiguousTarget):
        canonical_target("/app/..;x/admin", keep_parameters=True)
    with pytest.raises(AmbiguousTarget):
        canonical_target("/app;x=%2F/admin", keep_parameters=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://app.example/private?q=1", ("app.example", "/private?q=1")),
        ("HTTPS://App.Example:8443", ("App.Example:8443", "/")),
        ("http://app.example?q", ("app.example", "/?q")),
        ("/private", None),
        ("ftp://app.example/x", None),
        ("*", None),
        ("app.example:443", None),
    ],
)
def test_split_absolute(raw: str, expected: tuple[str, str] | None) -> None:
    assert split_absolute(raw) == expected


def hex_escape(char: str, rnd: Random) -> str:
    return "%" + "".join(d.upper() if rnd.random() < 0.5 else d for d in f"{ord(char):02x}")


# Escapes a browser may send for characters that are not refused when encoded.
REFUSED_ESCAPES = {*range(0x20), 0x7F, ord("/"), ord("\\"), ord("%")}
TOKENS = [
    *(("data", c) for c in UNRESERVED),
    *(("raw", c) for c in SUB_DELIMS),
    *(("escape", chr(b)) for b in range(256) if chr(b) not in UNRESERVED and b not in REFUSED_ESCAPES),
]
NAMED_SEGMENTS = [[("data", c) for c in name] for name in ("public", "admin", "healthz")]
DOT_SEGMENTS = [[("dots", c) for c in name] for name in (".", "..")]
segment = st.one_of(
    st.sampled_from(NAMED_SEGMENTS),
    st.sampled_from(DOT_SEGMENTS),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6),
)


@st.composite
def respelled_paths(draw: st.DrawFn) -> tuple[str, str]:
    """A well-formed path and a browser-equivalent spelling of it: unreserved characters percent-encoded
    at random (either hex case), dot segments wholly encoded or not, escapes re-cased, and extra
    slashes between segments."""
    parts = draw(st.lists(segment, max_size=8))
    trailing = draw(st.booleans())
    rnd = Random(draw(st.integers(0, 2**32)))
    plain: list[str] = []
    respelled: list[str] = []
    for tokens in parts:
        plain.append("".join(c if kind != "escape" else f"%{ord(c):02X}" for kind, c in tokens))
        encode_dots = rnd.random() < 0.5
        if plain[-1] in (".", ".."):
            # A dot segment, however its tokens were drawn (data dots too): browsers encode it whole
            # or not at all, and a mix is refused as ambiguous (tested on its own).
            respelled.append("".join(hex_escape(c, rnd) for c in plain[-1]) if encode_dots else plain[-1])
            continue
        respelled.append(
            "".join(
                hex_escape(c, rnd)
                if kind == "escape"
                or (kind == "data" and rnd.random() < 0.5)
                or (kind == "dots" and encode_dots)
                else c
                for kind, c in tokens
            )
        )
    separators = [rnd.choice(["/", "/", "//", "///"]) for _ in range(len(parts) + 1)]
    original = "/" + "/".join(plain) + ("/" if trailing else "")
    variant = "".join(sep + part for sep, part in zip(separators, respelled, strict=False))
    variant += separators[-1] if trailing else ""
    return original, variant if variant.startswith("/") else "/" + variant


@PROPERTY
@given(respelled_paths())
def test_respelling_never_changes_the_canonical_path(pair: tuple[str, str]) -> None:
    original, variant = pair
    once = judge(original)
    assert once != REFUSED
    assert judge(once) == once
    assert judge(variant) == once
    for method in ("GET", "POST"):
        for routes in (PUBLIC, HEALTHZ):
            assert public(routes, method, variant) == public(routes, method, original)


@PROPERTY
@given(st.text())
@example("/%%32e")
@example("/%%34%31")
@example("/a/..;/b")
def test_idempotent_on_any_text(raw: str) -> None:
    once = judge(raw)
    assert once == REFUSED or judge(once) == once


@PROPERTY
@given(st.text().map(lambda text: "/" + text))
def test_shape_on_any_text(raw: str) -> None:
    result = judge(raw)
    if result == REFUSED:
        return
    assert result.startswith("/")
    assert "//" not in result
    assert not {".", ".."} & set(segments(result))
    assert not {"?", "#", ";", "\\"} & set(result)
    assert all(0x21 <= ord(char) <= 0x7E for char in result)


AMBIGUOUS_MARKERS = st.sampled_from(
    ["%2F", "%2f", "%5C", "%5c", "%00", "\\", "%252e", "%%32e", "%25%32%65", "%%300", "/..;/", "/.%2e/", "#"]
)
NO_QUERY = st.text(st.characters(codec="utf-8", exclude_characters="?"), max_size=20)


@PROPERTY
@given(st.sampled_from(["", "/", "/public/", "/healthz"]), NO_QUERY, AMBIGUOUS_MARKERS, st.text(max_size=20))
def test_ambiguous_paths_are_refused(start: str, before: str, marker: str, after: str) -> None:
    raw = "/" + start + before + marker + after
    assert judge(raw) == REFUSED
    for method in ("GET", "POST"):
        assert not public(EVERYTHING, method, raw)
        assert not public(PUBLIC, method, raw)


URI_TOKENS = st.sampled_from(
    ["%", "%2e", "%2E", "%32", "%45", "%65", "%25", "%41", ".", "..", "/", "//", ";", ";x=1", "%3B"]
)
URI_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#\\")


@PROPERTY
@given(st.lists(st.one_of(URI_TOKENS, URI_CHARS), max_size=24).map(lambda parts: "/" + "".join(parts)))
@example("/public/%%32e%%32e/admin")
@example("/public/%2e%2e;/admin")
@example("/%250%32")  # decoding %32 would put a hex pair after %25
def test_the_upstream_gets_the_judged_path(raw: str) -> None:
    try:
        target = canonical_target(raw)
    except AmbiguousTarget:
        return
    assert target.wire == target.path
    assert canonical_target(target.wire).path == target.path


def test_remembered_targets_answer_as_the_function_does() -> None:
    remember = CanonicalTargets(size=4, longest=64)
    for raw in ["/a/../b", "/public/..;/admin", "/x;y/z", "/a/../b", "/public/..;/admin", "/" + "a" * 100]:
        for _ in range(2):  # the second time from the memory (except the over-long one)
            try:
                expected: Target | str = canonical_target(raw)
            except AmbiguousTarget as exc:
                expected = exc.reason
            try:
                got: Target | str = remember(raw)
            except AmbiguousTarget as exc:
                got = exc.reason
            assert got == expected
    assert len(remember._memo) <= 4
    kept = CanonicalTargets(keep_parameters=True)
    assert kept("/x;y/z").wire == "/x;y/z"
