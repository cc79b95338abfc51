"""Path normalization and `[routes]` matching: the table of attack paths and the properties behind it.

The proxy classifies a request by its normalized path and forwards that same path upstream, so every
re-spelling of a protected path must normalize to the protected path, and no spelling that an upstream
could read differently (encoded slashes, backslashes, NULs) may ever be public.
"""

from __future__ import annotations

from random import Random
from urllib.parse import unquote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from authproxy.paths import RouteRules, ambiguous, normalize_path

PROPERTY = settings(max_examples=500, deadline=None)
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
SUB_DELIMS = "!$&'()*+,;=:@"
PUBLIC = RouteRules.from_config(["^/public/"], [])
EVERYTHING = RouteRules.from_config([".*"], [])
HEALTHZ = RouteRules.from_config(["GET ^/healthz$"], [])


def rules(*skip_auth: str) -> RouteRules:
    return RouteRules.from_config(list(skip_auth), [])


def segments(path: str) -> list[str]:
    return path.split("/")[1:]


def sent_upstream(raw: str) -> str:
    """The path on the wire when the forwarder appends the normalized path to an upstream URL."""
    return URL("http://upstream.test" + normalize_path(raw)).raw_path


NORMALIZE = [
    ("", "/", "empty"),
    ("/", "/", "root"),
    ("a/b", "/a/b", "no-leading-slash"),
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
    ("/a/.%2E/b", "/b", "half-encoded-dot-dot"),
    ("/a/%2e/b", "/a/b", "encoded-dot"),
    ("/%41%62%7a", "/Abz", "encoded-letters"),
    ("/%30%39", "/09", "encoded-digits"),
    ("/%2d%2e%5f%7e", "/-._~", "encoded-marks"),
    ("/%7euser", "/~user", "encoded-tilde"),
    ("/a%2fb", "/a%2Fb", "encoded-slash-kept-upper"),
    ("/a%3fb%23c", "/a%3Fb%23c", "encoded-query-fragment-kept"),
    ("/a%20b", "/a%20b", "encoded-space-kept"),
    ("/%e2%82%ac", "/%E2%82%AC", "utf8-upper-cased"),
    ("/%25", "/%25", "encoded-percent-kept"),
    ("/%252e%252e", "/%252e%252e", "double-encoding-decoded-once"),
    ("/a/%2e%2e%2fb", "/a/..%2Fb", "encoded-slash-does-not-split"),
    ("/a?b=../c", "/a", "query-dropped"),
    ("/a#frag/../x", "/a", "fragment-dropped"),
    ("/a/b?x#y", "/a/b", "query-and-fragment-dropped"),
    ("/a/..?q=1", "/", "dot-dot-before-query"),
    ("/public/x%23/../admin", "/public/admin", "encoded-hash-is-a-segment"),
    ("/a/...", "/a/...", "three-dots-is-a-name"),
    ("/a/..b/.c", "/a/..b/.c", "dots-inside-names"),
    ("/a\\..\\b", "/a\\..\\b", "backslash-is-not-a-separator"),
    ("/a;b/c", "/a;b/c", "path-parameter-kept"),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [pytest.param(raw, out, id=name) for raw, out, name in NORMALIZE]
)
def test_normalize_table(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


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
    assert not PUBLIC.skip_auth("GET", raw)
    assert not sent_upstream(raw).startswith("/public/") or ambiguous(raw)


STRAY_PERCENT = [
    "/public/%%32e%%32e/admin",
    "/public/%%32%65%%32%65/admin",
    "/public/%%32%45%%32%45/admin",
    "/public/x/%%32e%%32e/%%32e%%32e/admin",
    "/public/%%32e./admin",
]


@pytest.mark.parametrize("raw", STRAY_PERCENT, ids=str)
def test_stray_percent_cannot_assemble_a_dot_segment(raw: str) -> None:
    classified = normalize_path(raw)
    assert normalize_path(classified) == classified
    assert not PUBLIC.skip_auth("GET", raw) or sent_upstream(raw).startswith("/public/")


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
    assert PUBLIC.skip_auth("GET", raw)
    assert normalize_path(raw) == upstream
    assert sent_upstream(raw) == upstream


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
    ("/a%2525b", False),
    ("/public/..;/admin", True),
    ("/public/.;x/y", True),
    ("/public/a..;/y", False),
    ("/a%2", False),
    ("/a/b?next=%2F", False),
    ("/a/b?path=\\", False),
    ("/a/b", False),
]


@pytest.mark.parametrize(("raw", "expected"), AMBIGUOUS, ids=[raw for raw, _ in AMBIGUOUS])
def test_ambiguous(raw: str, expected: bool) -> None:
    assert ambiguous(raw) is expected


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
    assert rules(*skip).skip_auth(method, raw) is expected


def test_api_rules_match_the_normalized_path() -> None:
    routes = RouteRules.from_config([], ["^/api/"])
    assert routes.api("GET", "/x/../api/v1")
    assert routes.api("GET", "/%61pi/v1")
    assert not routes.api("GET", "/api/../x")


def hex_escape(char: str, rnd: Random) -> str:
    return "%" + "".join(d.upper() if rnd.random() < 0.5 else d for d in f"{ord(char):02x}")


TOKENS = [
    *(("data", c) for c in UNRESERVED),
    *(("raw", c) for c in SUB_DELIMS),
    *(("escape", chr(b)) for b in range(256) if chr(b) not in UNRESERVED),
]
NAMED_SEGMENTS = [[("data", c) for c in name] for name in ("public", "admin", "healthz", ".", "..")]
segment = st.one_of(
    st.sampled_from(NAMED_SEGMENTS), st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6)
)


@st.composite
def respelled_paths(draw: st.DrawFn) -> tuple[str, str]:
    """A well-formed path and a browser-equivalent spelling of it: unreserved characters percent-encoded
    at random (either hex case), escapes re-cased, and extra slashes between segments."""
    parts = draw(st.lists(segment, max_size=8))
    trailing = draw(st.booleans())
    rnd = Random(draw(st.integers(0, 2**32)))
    plain: list[str] = []
    respelled: list[str] = []
    for tokens in parts:
        plain.append("".join(c if kind != "escape" else f"%{ord(c):02X}" for kind, c in tokens))
        respelled.append(
            "".join(
                hex_escape(c, rnd) if kind == "escape" or (kind == "data" and rnd.random() < 0.5) else c
                for kind, c in tokens
            )
        )
    separators = [rnd.choice(["/", "/", "//", "///"]) for _ in range(len(parts) + 1)]
    original = "/" + "/".join(plain) + ("/" if trailing else "")
    variant = "".join(sep + part for sep, part in zip(separators, respelled, strict=False))
    return original, variant + (separators[-1] if trailing else "")


@PROPERTY
@given(respelled_paths())
def test_respelling_never_changes_the_normalized_path(pair: tuple[str, str]) -> None:
    original, variant = pair
    once = normalize_path(original)
    assert normalize_path(once) == once
    assert normalize_path(variant) == once
    for method in ("GET", "POST"):
        for routes in (PUBLIC, HEALTHZ):
            assert routes.skip_auth(method, variant) == routes.skip_auth(method, original)


@PROPERTY
@given(st.text())
@example("/%%32e")
@example("/%%34%31")
def test_idempotent_on_any_text(raw: str) -> None:
    once = normalize_path(raw)
    assert normalize_path(once) == once


@PROPERTY
@given(st.text())
def test_shape_on_any_text(raw: str) -> None:
    result = normalize_path(raw)
    assert result.startswith("/")
    assert "//" not in result
    assert not {".", ".."} & set(segments(result))
    assert "?" not in result
    assert "#" not in result


AMBIGUOUS_MARKERS = st.sampled_from(["%2F", "%2f", "%5C", "%5c", "%00", "\\"])
NO_QUERY = st.text(st.characters(codec="utf-8", exclude_characters="?"), max_size=20)


@PROPERTY
@given(st.sampled_from(["", "/", "/public/", "/healthz"]), NO_QUERY, AMBIGUOUS_MARKERS, st.text(max_size=20))
def test_ambiguous_paths_are_never_public(start: str, before: str, marker: str, after: str) -> None:
    raw = start + before + marker + after
    assert ambiguous(raw)
    for method in ("GET", "POST"):
        assert not EVERYTHING.skip_auth(method, raw)
        assert not PUBLIC.skip_auth(method, raw)


URI_TOKENS = st.sampled_from(["%", "%2e", "%2E", "%32", "%45", "%65", "%25", "%41", ".", "..", "/", "//"])
URI_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#\\")


@PROPERTY
@given(st.lists(st.one_of(URI_TOKENS, URI_CHARS), max_size=24).map(lambda parts: "/" + "".join(parts)))
@example("/public/%%32e%%32e/admin")
def test_upstream_url_keeps_the_classified_path(raw: str) -> None:
    assume(not ambiguous(raw))
    assert unquote(sent_upstream(raw)) == unquote(normalize_path(raw))
