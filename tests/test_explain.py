"""`authproxy explain` and `authproxy check-config --show-routes`, through the real command line.

Every test writes a config file to tmp_path and runs `authproxy.cli.main` (one test runs the program
in a subprocess for its exit status). The explained decisions are the ones `core.routing.decide`
makes for the proxy: allow, allow-anonymous, sign-in, deny, step-up and reject.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from authproxy.cli import main

BASE = """\
[server]
listen = "127.0.0.1:4180"
public_url = "https://www.example.com"

[centralauth]
client_id = "org-1"
client_secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

[session]
cookie_secrets = ["Vq3bN8xZr2LmT6yW1pK9sD4fH7jC0gA5eU8iO3nB2vM"]
cookie_domain = ".example.com"
"""

UPSTREAM = """
[[upstreams]]
path = "/"
url = "http://127.0.0.1:8080"
"""

# The route table most tests use; the index of each entry is its number in the comments.
TABLE = """
[authorization]
allowed_email_domains = ["example.com"]

# 0: a host of its own, staff only, checked on every request, affirmed within 5 minutes.
[[routes]]
host = "admin.example.com"
upstream = "http://127.0.0.1:8081"
allowed_emails = ["ada@example.com"]
session_check_ttl = 0
step_up_max_age = 300

# 1: a JSON API mounted at /api, served at / by its own app.
[[routes]]
path = "/api"
upstream = "http://127.0.0.1:8082"
api = true
strip_prefix = true

# 2: webhooks: POST only, no session.
[[routes]]
path = "/hooks/"
methods = ["POST"]
auth = "public"

# 3: the blog, readable by anyone.
[[routes]]
path = "/blog"
auth = "optional"

# 4: static files.
[[routes]]
path = "/static/"
auth = "public"

# 5: the admin pages of the main site.
[[routes]]
path = "/admin"
allowed_email_domains = ["staff.example.com"]
"""

IDENTITY = ("X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Preferred-Username")


pytestmark = pytest.mark.usefixtures("no_authproxy_env")


def write(tmp_path: Path, body: str, name: str = "authproxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write(tmp_path, BASE + UPSTREAM + TABLE)


@pytest.fixture
def old_style(tmp_path: Path) -> Path:
    """A config from before the route table: `[[upstreams]]`, the `[routes]` table, `[authorization]`."""
    return write(
        tmp_path,
        BASE
        + UPSTREAM
        + """
[routes]
skip_auth = ["GET ^/healthz$", "^/public/"]
api = ["^/api/"]

[authorization]
allowed_email_domains = ["example.com"]
""",
        "old.toml",
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def explain(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> dict[str, Any]:
    """The `--json` explanation; explain exits 0 whatever it decides."""
    code, out, err = run(capsys, "explain", "-c", str(path), "--json", *args)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


# --- one test per decision -----------------------------------------------------------------------------


def test_allow_a_signed_in_user_with_identity_headers(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    result = explain(
        capsys, config, "--email", "ada@example.com", "--client-ip", "198.51.100.7", "/shop/cart"
    )
    assert result["decision"] == "allow"
    assert result["reason"] == "signed in"
    assert result["route"] is None  # under no route: the global settings
    assert result["auth"] == "required"
    assert result["path"] == "/shop/cart"
    assert result["upstream"] == "http://127.0.0.1:8080/shop/cart"
    assert result["session_check_ttl"] == 30
    assert result["step_up_max_age"] is None
    assert result["user"] == "ada@example.com (verified; affirmed 0 s ago)"
    assert result["headers"] == {
        "X-Forwarded-For": "198.51.100.7",
        "X-Forwarded-Host": "www.example.com",
        "X-Forwarded-User": "explained-user (CentralAuth's user id)",
        "X-Forwarded-Email": "ada@example.com",
        "X-Forwarded-Preferred-Username": "ada@example.com",
    }


def test_allow_anonymous_on_a_public_route_reads_no_session(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    for args in ((), ("--email", "ada@example.com")):
        result = explain(capsys, config, *args, "/static/app.css")
        assert result["decision"] == "allow-anonymous"
        assert result["reason"] == "the route is public: no session is read"
        assert result["route"] == 4
        assert result["auth"] == "public"
        # Even with a session at hand: no identity headers on a public route.
        assert result["headers"] == {"X-Forwarded-For": "203.0.113.10", "X-Forwarded-Host": "www.example.com"}


def test_allow_anonymous_on_an_optional_route_without_a_session(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    result = explain(capsys, config, "/blog/hello")
    assert result["decision"] == "allow-anonymous"
    assert result["reason"] == "no session, and the route's auth is optional"
    assert (result["route"], result["auth"]) == (3, "optional")
    assert result["user"] is None
    assert not set(IDENTITY) & set(result["headers"])
    # With a session, the same route identifies the user.
    signed_in = explain(capsys, config, "--email", "ada@example.com", "/blog/hello")
    assert signed_in["decision"] == "allow"
    assert signed_in["headers"]["X-Forwarded-Email"] == "ada@example.com"


def test_sign_in_without_a_session_redirects_a_browser_or_answers_an_api_401(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    result = explain(capsys, config, "/shop/cart")
    assert result["decision"] == "sign-in"
    assert result["reason"] == "no session, and the route requires one; redirected to sign in"
    assert result["headers"] == {}
    api = explain(capsys, config, "/api/orders")
    assert (api["decision"], api["route"]) == ("sign-in", 1)
    assert api["reason"] == "no session, and the route requires one; answered 401 JSON (an API route)"


def test_deny_by_a_routes_own_allow_list(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    # bob@example.com passes the global [authorization] but not the admin host's allow-list.
    result = explain(capsys, config, "--email", "bob@example.com", "https://admin.example.com/users")
    assert (result["decision"], result["route"]) == ("deny", 0)
    assert result["reason"] == "the route's rule email_not_allowed"
    assert result["headers"] == {}
    staff = explain(capsys, config, "--email", "bob@staff.example.com", "/admin/users")
    assert (staff["decision"], staff["route"]) == ("allow", 5)


def test_deny_by_the_global_authorization(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    result = explain(capsys, config, "--email", "eve@other.org", "/shop/cart")
    assert (result["decision"], result["route"]) == ("deny", None)
    assert result["reason"] == "the global [authorization] rule email_not_allowed"
    blocked = explain(capsys, config, "--email", "ada@example.com", "--blocked", "/shop/cart")
    assert blocked["decision"] == "deny"
    assert blocked["reason"] == "the global [authorization] rule blocked"
    assert blocked["user"] == "ada@example.com (verified, blocked; affirmed 0 s ago)"
    # A route without its own lists applies the global ones.
    blog = explain(capsys, config, "--email", "eve@other.org", "/blog/hello")
    assert (blog["decision"], blog["route"]) == ("deny", 3)


def test_step_up_when_the_last_affirmation_is_too_old(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    url = "https://admin.example.com/users"
    stale = explain(capsys, config, "--email", "ada@example.com", "--affirmed-ago", "900", url)
    assert (stale["decision"], stale["route"]) == ("step-up", 0)
    assert stale["reason"] == "affirmed 900 s ago; the route allows 300 s"
    assert stale["step_up_max_age"] == 300
    assert stale["session_check_ttl"] == 0
    assert stale["headers"] == {}
    fresh = explain(capsys, config, "--email", "ada@example.com", "--affirmed-ago", "120", url)
    assert fresh["decision"] == "allow"
    assert fresh["reason"] == "signed in, affirmation recent enough"


@pytest.mark.parametrize("target", ["/a%2fb", "/static/..%5cadmin", "/x/.%2e/admin"])
def test_reject_a_target_upstreams_could_read_differently(
    capsys: pytest.CaptureFixture[str], config: Path, target: str
) -> None:
    result = explain(capsys, config, target)
    assert result["decision"] == "reject"
    assert result["reason"].startswith("400: ")
    assert (result["path"], result["route"], result["upstream"], result["auth"]) == (None, None, None, None)
    assert result["headers"] == {}


def test_reject_a_path_no_upstream_serves(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '\n[[upstreams]]\npath = "/app"\nurl = "http://127.0.0.1:8080"\n')
    result = explain(capsys, path, "--email", "ada@example.com", "/elsewhere")
    assert result["decision"] == "reject"
    assert result["reason"] == "404: no [[upstreams]] entry or route serves this path"
    assert result["upstream"] is None
    assert result["path"] == "/elsewhere"
    assert result["headers"] == {}
    assert explain(capsys, path, "--email", "ada@example.com", "/app/x")["decision"] == "allow"


def test_the_text_format_of_a_refused_target(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(config), "/a%2fb")
    assert code == 0
    assert out.splitlines() == [
        "request   GET /a%2fb",
        "path      refused: not a target the proxy judges",
        "user      anonymous (no session)",
        "decision  reject: 400: an encoded '/', '\\' or NUL",
    ]


def test_the_text_format_of_a_step_up(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    argv = ["--email", "ada@example.com", "--unverified", "--affirmed-ago", "900"]
    code, out, _ = run(capsys, "explain", "-c", str(config), *argv, "https://admin.example.com/users")
    assert code == 0
    assert out.splitlines() == [
        "request        GET https://admin.example.com/users",
        "path           /users",
        "route          #0 (host admin.example.com, path /, any method)",
        "upstream       http://127.0.0.1:8081/users",
        "auth           required",
        "user           ada@example.com (unverified; affirmed 900 s ago)",
        "decision       step-up: affirmed 900 s ago; the route allows 300 s",
        "session check  CentralAuth asked on every request",
        "step-up        after 300 s since the last affirmation",
    ]


def test_an_unverified_and_blocked_user_is_described_as_both(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    result = explain(capsys, config, "--email", "ada@example.com", "--unverified", "--blocked", "/shop")
    assert result["user"] == "ada@example.com (unverified, blocked; affirmed 0 s ago)"
    assert (result["decision"], result["reason"]) == ("deny", "the global [authorization] rule blocked")


# --- how the route is chosen ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["/static/../admin/users", "/static/%2e%2e/admin/users", "/static/./../admin/users"]
)
def test_a_dot_segment_spelling_is_judged_as_the_path_it_names(
    capsys: pytest.CaptureFixture[str], config: Path, spelling: str
) -> None:
    result = explain(capsys, config, spelling)
    assert result["path"] == "/admin/users"
    assert (result["route"], result["auth"], result["decision"]) == (5, "required", "sign-in")
    assert result["upstream"] == "http://127.0.0.1:8080/admin/users"
    # A user the public route would have let through unseen is refused by the admin route's list.
    denied = explain(capsys, config, "--email", "ada@example.com", spelling)
    assert (denied["route"], denied["decision"]) == (5, "deny")


def test_host_routes_are_chosen_by_the_urls_host(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    admin = explain(capsys, config, "https://admin.example.com/static/app.css")
    # First match wins: the admin host's route comes before the /static/ route.
    assert (admin["route"], admin["decision"]) == (0, "sign-in")
    assert admin["upstream"] == "http://127.0.0.1:8081/static/app.css"
    assert explain(capsys, config, "https://ADMIN.example.com:8443/x")["route"] == 0
    main_site = explain(capsys, config, "https://www.example.com/static/app.css")
    assert (main_site["route"], main_site["decision"]) == (4, "allow-anonymous")
    # A path alone is a request on public_url's host.
    assert explain(capsys, config, "/static/app.css")["route"] == 4
    assert explain(capsys, config, "https://other.example.com/shop")["route"] is None


def test_the_method_chooses_a_method_restricted_route(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    post = explain(capsys, config, "--method", "POST", "/hooks/github")
    assert (post["method"], post["route"], post["auth"], post["decision"]) == (
        "POST", 2, "public", "allow-anonymous",
    )  # fmt: skip
    get = explain(capsys, config, "--method", "get", "/hooks/github")
    assert (get["method"], get["route"], get["auth"], get["decision"]) == ("GET", None, "required", "sign-in")


def test_strip_prefix_shows_in_the_upstream_url(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    result = explain(capsys, config, "--email", "ada@example.com", "/api/orders/7?expand=lines")
    assert (result["route"], result["decision"]) == (1, "allow")
    assert result["path"] == "/api/orders/7"
    assert result["upstream"] == "http://127.0.0.1:8082/orders/7?expand=lines"
    assert explain(capsys, config, "/api")["upstream"] == "http://127.0.0.1:8082/"


@pytest.mark.parametrize(
    ("args", "decision"),
    [
        (("--email", "ada@example.com", "/shop"), "allow"),
        (("--email", "ada@example.com", "/static/x"), "allow-anonymous"),
        (("/blog",), "allow-anonymous"),
        (("/shop",), "sign-in"),
        (("--email", "eve@other.org", "/shop"), "deny"),
        (("--email", "ada@example.com", "--affirmed-ago", "301", "https://admin.example.com/"), "step-up"),
        (("--email", "ada@example.com", "/a%2fb"), "reject"),
    ],
)
def test_identity_headers_only_when_allowed(
    capsys: pytest.CaptureFixture[str], config: Path, args: tuple[str, ...], decision: str
) -> None:
    result = explain(capsys, config, *args)
    assert result["decision"] == decision
    present = [name for name in IDENTITY if name in result["headers"]]
    assert present == (list(IDENTITY) if decision == "allow" else [])


# --- exit statuses -------------------------------------------------------------------------------------


def test_a_malformed_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE + UPSTREAM + '\n[[routes]]\npath = "/x"\n\n[[routes]]\npath = "/y"\nauth = "sometimes"\n',
    )
    done = subprocess.run(
        [sys.executable, "-m", "authproxy", "explain", "-c", str(path), "/y"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("routes[1].auth: ")


def test_a_route_path_that_is_not_a_path_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, BASE + UPSTREAM + '\n[[routes]]\npath = "admin"\n')
    code, out, err = run(capsys, "explain", "-c", str(path), "/admin")
    assert (code, out) == (2, "")
    assert err == "routes[0].path: path 'admin' must start with / (or ~ for a regular expression)\n"


@pytest.mark.parametrize("url", ["ftp://www.example.com/x", "admin/users", "www.example.com/x"])
def test_a_url_that_is_neither_http_nor_a_path_exits_2(
    capsys: pytest.CaptureFixture[str], config: Path, url: str
) -> None:
    code, out, err = run(capsys, "explain", "-c", str(config), url)
    assert (code, out) == (2, "")
    assert err == f"authproxy explain: {url!r} is neither an http(s):// URL nor a path starting with /\n"


# --- check-config --show-routes ------------------------------------------------------------------------


def test_show_routes_prints_every_route_and_the_default(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, err = run(capsys, "check-config", "-c", str(config), "--show-routes")
    assert code == 0, err
    assert out.splitlines() == [
        f"{config}: configuration is valid",
        "#0  host admin.example.com, path /, any method -> http://127.0.0.1:8081  "
        "[auth required, own allow-list, session_check_ttl 0, step_up_max_age 300]",
        "#1  any host, path /api, any method -> http://127.0.0.1:8082  [auth required, api, strip_prefix]",
        "#2  any host, path /hooks/, methods POST -> longest-prefix [[upstreams]] choice  [auth public]",
        "#3  any host, path /blog, any method -> longest-prefix [[upstreams]] choice  [auth optional]",
        "#4  any host, path /static/, any method -> longest-prefix [[upstreams]] choice  [auth public]",
        "#5  any host, path /admin, any method -> longest-prefix [[upstreams]] choice  "
        "[auth required, own allow-list]",
        "default  any other request -> longest-prefix [[upstreams]] choice  "
        "[auth required, except skip_auth: none; api: none; session_check_ttl 30]",
        "upstream  / -> http://127.0.0.1:8080",
    ]


def test_check_config_without_show_routes_prints_no_table(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert (code, out) == (0, f"{config}: configuration is valid\n")


# --- configs from before the route table ---------------------------------------------------------------


def test_an_old_style_config_explains_as_before(capsys: pytest.CaptureFixture[str], old_style: Path) -> None:
    skipped = explain(capsys, old_style, "/public/logo.png")
    assert (skipped["route"], skipped["auth"], skipped["decision"]) == (None, "public", "allow-anonymous")
    assert skipped["reason"] == "a [routes] skip_auth rule matches: no session is read"
    signed_in = explain(capsys, old_style, "--email", "ada@example.com", "/public/logo.png")
    assert signed_in["decision"] == "allow-anonymous"
    assert not set(IDENTITY) & set(signed_in["headers"])  # skip_auth requests carry no identity headers

    # skip_auth's method prefix: only GET /healthz skips sign-in.
    assert explain(capsys, old_style, "/healthz")["decision"] == "allow-anonymous"
    assert explain(capsys, old_style, "--method", "POST", "/healthz")["decision"] == "sign-in"

    api = explain(capsys, old_style, "/api/orders")
    assert (api["route"], api["auth"], api["decision"]) == (None, "required", "sign-in")
    assert "401 JSON" in api["reason"]
    page = explain(capsys, old_style, "/reports")
    assert page["decision"] == "sign-in"
    assert page["reason"].endswith("redirected to sign in")

    denied = explain(capsys, old_style, "--email", "eve@other.org", "/reports")
    assert (denied["decision"], denied["reason"]) == (
        "deny",
        "the global [authorization] rule email_not_allowed",
    )
    assert explain(capsys, old_style, "--email", "ada@example.com", "/reports")["decision"] == "allow"
    # The skip_auth rules judge the canonical path too.
    assert explain(capsys, old_style, "/public/../reports")["decision"] == "sign-in"


def test_an_old_style_config_shows_its_rules_as_the_default_route(
    capsys: pytest.CaptureFixture[str], old_style: Path
) -> None:
    code, out, err = run(capsys, "check-config", "-c", str(old_style), "--show-routes")
    assert code == 0, err
    assert out.splitlines()[1:] == [
        "default  any other request -> longest-prefix [[upstreams]] choice  [auth required, "
        'except skip_auth: "GET ^/healthz$", "^/public/"; api: "^/api/"; session_check_ttl 30]',
        "upstream  / -> http://127.0.0.1:8080",
    ]
