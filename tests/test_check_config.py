"""`authproxy check-config`: placeholders refused, every problem in one run, warnings and `--strict`.

Also: `serve` logs the same warnings at start-up, as `config.warning` events (in process with the
server stubbed, and as a real process).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import structlog
from support.configs import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, VALID
from support.harness import free_port

from authproxy import cli, logs, server
from authproxy.config import Config, load
from authproxy.config_checks import client_id_problem, config_warnings, is_placeholder

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("no_authproxy_env")


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["check-config", *flags, "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_base_config_is_valid_without_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    assert check(path, capsys) == (0, f"{path}: configuration is valid\n", "")
    assert check(path, capsys, "--strict") == (0, f"{path}: configuration is valid\n", "")


# --- placeholders --------------------------------------------------------------------------------------

CLIENT_ID_PLACEHOLDERS = [
    "CHANGE-ME",
    "CHANGEME",
    "change_me",
    "YOUR-ORGANIZATION-ID",
    "your_client_id",
    "<organization id>",
    "<ORG-ID>",
    "${CLIENT_ID}",
    "{{ .Values.clientId }}",
    "xxx",
    "XXXX-XXXX",
    "example",
    "example-org",
    "placeholder",
    "client-id",
    "TODO",
]
SECRET_PLACEHOLDERS = [
    "PASTE-THE-CLIENT-SECRET",
    "paste your secret here",
    "CHANGE-ME",
    "changeit",
    "secret",
    "client_secret",
    "********",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "<the 64-character client secret>",
    "REPLACE-WITH-THE-SECRET-FROM-THE-DASHBOARD",
]
# At least 32 characters, so that only the placeholder rule can refuse them.
COOKIE_PLACEHOLDERS = [
    "CHANGE-ME-TO-A-LONG-RANDOM-STRING-0123456789",
    "your-cookie-secret-goes-here-0123456789",
    "an-example-cookie-secret-0123456789abcdef",
    "<output of authproxy gen-secret, 43 chars>",
]


@pytest.mark.parametrize("value", CLIENT_ID_PLACEHOLDERS)
def test_placeholder_client_ids_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = write(tmp_path, VALID.replace(CLIENT_ID, value))
    code, out, err = check(path, capsys)
    assert code == 2 and out == ""
    assert (
        err
        == f"centralauth.client_id: {value!r} is a placeholder; set it to your CentralAuth organization ID\n"
    )


@pytest.mark.parametrize("value", SECRET_PLACEHOLDERS)
def test_placeholder_client_secrets_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = write(tmp_path, VALID.replace(CLIENT_SECRET, value))
    code, _, err = check(path, capsys)
    assert code == 2
    message = "is a placeholder; paste the client secret from the CentralAuth dashboard"
    assert err == f"centralauth.client_secret: {message}\n"


@pytest.mark.parametrize("value", COOKIE_PLACEHOLDERS)
def test_placeholder_cookie_secrets_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = write(tmp_path, VALID.replace(f'["{COOKIE_SECRET}"]', f'["{COOKIE_SECRET}", "{value}"]'))
    code, _, err = check(path, capsys)
    assert code == 2
    assert err == "session.cookie_secrets: secret #2 is a placeholder (`authproxy gen-secret` makes one)\n"


def test_placeholders_in_secret_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = write(tmp_path, "CHANGE-ME\n", "client_secret")
    cookies = write(tmp_path, f"{COOKIE_SECRET}\nCHANGE-ME\n", "cookie_secrets")
    text = VALID.replace(f'client_secret = "{CLIENT_SECRET}"', f'client_secret_file = "{client}"')
    text = text.replace(f'cookie_secrets = ["{COOKIE_SECRET}"]', f'cookie_secret_file = "{cookies}"')
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert err.splitlines() == [
        f"centralauth.client_secret_file: {str(client)!r} holds a placeholder; put the client secret from "
        "the CentralAuth dashboard in it",
        f"session.cookie_secret_file: secret #2 in {str(cookies)!r} is a placeholder (`authproxy gen-secret` "
        "makes one)",
    ]


def test_the_readme_quickstart_placeholders_are_refused_as_they_stand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copying the Quickstart without replacing its placeholders fails check-config, naming both."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(
        match.group(1)
        for match in re.finditer(r"```toml\n(.*?)```", readme, re.DOTALL)
        if "YOUR-ORGANIZATION-ID" in match.group(1)
    )
    secret_line = next(line for line in readme.splitlines() if "/etc/authproxy/client_secret" in line)
    pasted = re.search(r"'([A-Z-]+)'", secret_line)
    assert pasted and pasted.group(1) == "PASTE-THE-CLIENT-SECRET"
    client = write(tmp_path, pasted.group(1) + "\n", "client_secret")
    cookie = write(tmp_path, secrets.token_urlsafe(32) + "\n", "cookie_secret")
    text = block.replace("/etc/authproxy/client_secret", str(client)).replace(
        "/etc/authproxy/cookie_secret", str(cookie)
    )
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert [line.split(":")[0] for line in err.splitlines()] == [
        "centralauth.client_id",
        "centralauth.client_secret_file",
    ]


@pytest.mark.parametrize(
    "value",
    [
        CLIENT_ID,
        CLIENT_SECRET,
        COOKIE_SECRET,
        "org-1",
        "local-test",
        "demo-client",
        "bench-client",
        "test-cookie-secret-0123456789abcdefghijklmnop",
        "another-secret-entirely-0123456789abcdef",
        "c" * 64,
        "k" * 43,
    ],
)
def test_real_looking_values_are_not_placeholders(value: str) -> None:
    assert not is_placeholder(value)


def test_generated_values_are_never_placeholders() -> None:
    # What CentralAuth, `authproxy gen-secret` and `devidp` produce: refusing one would be a false alarm.
    for _ in range(2000):
        for value in (str(uuid.uuid4()), secrets.token_hex(32), secrets.token_urlsafe(32)):
            assert not is_placeholder(value), value
            assert client_id_problem(value) is None, value


@pytest.mark.parametrize("value", ["org:1", "org 1", "org/1", "org?x=1", "o" * 129, "organización"])
def test_a_client_id_that_cannot_travel_in_urls_or_basic_auth_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, _, err = check(write(tmp_path, VALID.replace(CLIENT_ID, value)), capsys)
    assert code == 2
    assert err.startswith(f"centralauth.client_id: {value!r} is not a CentralAuth organization ID")


# --- every problem in one run --------------------------------------------------------------------------


def test_an_unreadable_secret_file_hides_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = VALID.replace(
        f'client_secret = "{CLIENT_SECRET}"', f'client_secret_file = "{tmp_path / "absent"}"'
    )
    text = text.replace(f'cookie_secrets = ["{COOKIE_SECRET}"]', f'cookie_secret_file = "{tmp_path}"')
    text = text.replace(CLIENT_ID, "CHANGE-ME")
    text = text.replace("[server]", "[server]\nworkers = -1")
    text = text.replace("[centralauth]", '[centralauth]\non_outage = "retry"')
    text = text.replace("[session]", '[session]\ncookie_samesite = "sometimes"')
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert [line.split(":")[0] for line in err.splitlines()] == [
        "server.workers",
        "centralauth.client_id",
        "centralauth.client_secret_file",
        "centralauth.on_outage",
        "session.cookie_secret_file",
        "session.cookie_samesite",
    ]
    assert "cannot read" in err and "Is a directory" in err


def test_every_bad_cookie_secret_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = VALID.replace(f'["{COOKIE_SECRET}"]', f'["short", "{COOKIE_SECRET}", "CHANGE-ME", "also-short"]')
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert err.splitlines() == [
        "session.cookie_secrets: secret #1 is shorter than 32 characters (`authproxy gen-secret` makes one)",
        "session.cookie_secrets: secret #3 is a placeholder (`authproxy gen-secret` makes one)",
        "session.cookie_secrets: secret #4 is shorter than 32 characters (`authproxy gen-secret` makes one)",
    ]


# --- warnings ------------------------------------------------------------------------------------------

# (replace this, with that) -> the key of the one warning it causes.
RISKY = [
    (f'client_secret = "{CLIENT_SECRET}"', 'client_secret = "abcdefghi"', "centralauth.client_secret"),
    (
        f'client_secret = "{CLIENT_SECRET}"',
        f'client_secret = "{CLIENT_SECRET}0"',
        "centralauth.client_secret",
    ),
    ("[routes]", '[routes]\nskip_auth = ["^/ok/", "/public/"]', "routes.skip_auth[1]"),
    ("[routes]", '[routes]\nskip_auth = ["GET /healthz"]', "routes.skip_auth[0]"),
    ("[session]", "[session]\ncookie_secure = false", "session.cookie_secure"),
    ('listen = "127.0.0.1:4180"', 'listen = "0.0.0.0:4180"', "server.trusted_proxies"),
    ('listen = "127.0.0.1:4180"', 'listen = "[::]:4180"', "server.trusted_proxies"),
    ('listen = "127.0.0.1:4180"', 'listen = "10.1.2.3:4180"', "server.trusted_proxies"),
    ("[centralauth]", "[centralauth]\nsession_check_ttl = 301", "centralauth.session_check_ttl"),
]
# The same settings where they are fine.
SAFE = [
    ("[routes]", '[routes]\nskip_auth = ["^/public/", "GET ^/healthz$", "\\\\A/static/"]'),
    ("[routes]", '[routes]\napi = ["/api/"]'),
    ("https://app.example.com", "http://app.example.com"),  # cookie_secure = false is then required
    ('listen = "127.0.0.1:4180"', 'listen = "[::1]:4180"'),
    ('listen = "127.0.0.1:4180"', 'listen = "localhost:4180"'),
    ('listen = "127.0.0.1:4180"', 'listen = "0.0.0.0:4180"\ntrusted_proxies = ["10.0.0.0/8"]'),
    ("[centralauth]", "[centralauth]\nsession_check_ttl = 300"),
]


def risky(old: str, new: str) -> str:
    text = VALID + "\n[routes]\n"
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "key"), RISKY, ids=[f"{key}-{i}" for i, (_, _, key) in enumerate(RISKY)]
)
def test_a_risky_setting_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str
) -> None:
    path = write(tmp_path, risky(old, new))
    code, out, err = check(path, capsys)
    assert code == 0
    assert out == f"{path}: configuration is valid (1 warning)\n"
    (line,) = err.splitlines()
    assert line.startswith(f"warning: {key}: ")
    assert CLIENT_SECRET not in err


@pytest.mark.parametrize(
    ("old", "new", "key"), RISKY, ids=[f"{key}-{i}" for i, (_, _, key) in enumerate(RISKY)]
)
def test_strict_makes_a_warning_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str
) -> None:
    code, out, err = check(write(tmp_path, risky(old, new)), capsys, "--strict")
    assert code == 2
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"{key}: ")


@pytest.mark.parametrize(("old", "new"), SAFE)
def test_the_same_settings_where_they_are_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str
) -> None:
    text = risky(old, new)
    if "http://app" in text:
        text = text.replace("[session]", "[session]\ncookie_secure = false")
    code, _, err = check(write(tmp_path, text), capsys, "--strict")
    assert (code, err) == (0, "")


def test_warnings_are_counted_and_name_the_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = write(tmp_path, "s" * 63, "client_secret")
    text = VALID.replace(f'client_secret = "{CLIENT_SECRET}"', f'client_secret_file = "{secret}"')
    text = text.replace("[centralauth]", "[centralauth]\nsession_check_ttl = 3600")
    path = write(tmp_path, text)
    code, out, err = check(path, capsys)
    assert code == 0
    assert out == f"{path}: configuration is valid (2 warnings)\n"
    assert err.splitlines() == [
        "warning: centralauth.client_secret_file: the client secret is 63 characters; CentralAuth's are 64 "
        "(was it copied whole?)",
        "warning: centralauth.session_check_ttl: is 3600 seconds: a sign-out or a blocked user at "
        "CentralAuth reaches the proxy only that much later; 300 or less is advised",
    ]


def test_the_repository_example_warns_only_about_trusted_proxies(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its listen and public_url are the defaults an operator adapts; the one warning points at the
    # decision still to make.
    monkeypatch.setenv("AUTHPROXY_CENTRALAUTH__CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AUTHPROXY_CENTRALAUTH__CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AUTHPROXY_SESSION__COOKIE_SECRETS", COOKIE_SECRET)
    config = load(ROOT / "config.example.toml")
    assert [warning.key for warning in config_warnings(config)] == ["server.trusted_proxies"]


# --- serve logs the warnings ---------------------------------------------------------------------------

RISKY_SERVE = risky("[routes]", '[routes]\nskip_auth = ["/public/"]').replace(
    "[centralauth]", "[centralauth]\nsession_check_ttl = 900"
)


def test_serve_logs_each_warning_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    # Neither global logging nor a real server: the events are captured and run() only records its call.
    monkeypatch.setattr(logs, "configure", lambda *args: None)

    def run(path: str, config: Config) -> int:
        started.append(path)
        return 0

    monkeypatch.setattr(server, "run", run)
    path = write(tmp_path, RISKY_SERVE)
    with structlog.testing.capture_logs() as events:
        assert cli.main(["serve", "-c", str(path)]) == 0
    assert started == [str(path)]
    warnings = [event for event in events if event["event"] == "config.warning"]
    assert [(event["log_level"], event["key"]) for event in warnings] == [
        ("warning", "centralauth.session_check_ttl"),
        ("warning", "routes.skip_auth[0]"),
    ]
    assert all(event["message"] for event in warnings)


def test_serve_as_a_process_logs_config_warning_events(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, RISKY_SERVE.replace("127.0.0.1:4180", f"127.0.0.1:{port}"))
    log_path = tmp_path / "serve.log"
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("AUTHPROXY_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "authproxy", "serve", "-c", str(path)],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline and process.poll() is None:
            lines = log_path.read_text(encoding="utf-8").splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
            if any(event["event"] == "worker.ready" for event in events):
                break
            time.sleep(0.05)
        warnings = [event for event in events if event["event"] == "config.warning"]
        assert [event["key"] for event in warnings] == [
            "centralauth.session_check_ttl",
            "routes.skip_auth[0]",
        ]
        assert all(event["level"] == "warning" for event in warnings)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize(
    ("host", "cookie_domain", "warned"),
    [
        ("admin.example.com", "", True),
        ("admin.example.com", ".example.com", False),
        ("admin.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("admin.other.test", ".example.com", True),
        ("app.example.com", "", False),  # public_url's own host needs no shared cookie
        ("", "", False),
    ],
)
def test_a_routed_host_the_session_cookie_cannot_reach_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, cookie_domain: str, warned: bool
) -> None:
    text = VALID.replace("[session]", f'[session]\ncookie_domain = "{cookie_domain}"')
    text += f'\n[[routes]]\nhost = "{host}"\npath = "/admin/"\n'
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 0
    if warned:
        (line,) = err.splitlines()
        assert line.startswith("warning: routes[0].host: ") and "session.cookie_domain" in line
    else:
        assert err == ""


def test_show_routes_prints_the_route_table_and_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blog = '[[routes]]\npath = "/blog"\nauth = "optional"\n'
    api = '[[routes]]\npath = "~^/api/v[0-9]+/"\napi = true\n'
    text = f"{VALID}\n{blog}\n{api}"
    code, out, _ = check(write(tmp_path, text), capsys, "--show-routes")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].startswith("#0  any host, path /blog, any method") and "auth optional" in lines[1]
    assert lines[2].startswith("#1  any host, path ~^/api/v[0-9]+/, any method") and "api" in lines[2]
    assert lines[3].startswith("default  any other request")
    assert lines[4] == "upstream  / -> http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("route", "key"),
    [
        ('path = "~([unclosed"', "routes[0].path"),
        ('path = "admin"', "routes[0].path"),
        ('path = "~^/x"\nstrip_prefix = true', "routes[0].path"),
        ('host = "bad host"', "routes[0].host"),
        ('auth = "sometimes"', "routes[0].auth"),
        ('methods = ["GET /"]', "routes[0].methods"),
        ("session_check_ttl = -1", "routes[0].session_check_ttl"),
        ("step_up_max_age = 0", "routes[0].step_up_max_age"),
        ('upstream = "ftp://x"', "routes[0].upstream"),
        ("colour = 1", "routes[0].colour"),
    ],
)
def test_a_bad_route_names_its_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], route: str, key: str
) -> None:
    code, out, err = check(write(tmp_path, VALID + f"\n[[routes]]\n{route}\n"), capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith(f"{key}: "), err
    assert "Traceback" not in err


def test_an_environment_override_of_routes_keeps_the_route_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authproxy.config import load

    route = 'host = "admin.example.com"\npath = "/admin/"\nallowed_emails = ["boss@example.com"]'
    text = f"{VALID}\n[[routes]]\n{route}\n"
    monkeypatch.setenv("AUTHPROXY_ROUTES__KEEP_PATH_PARAMETERS", "true")
    config = load(write(tmp_path, text))
    assert config.routes.keep_path_parameters is True
    assert [route.allowed_emails for route in config.routes.table] == [["boss@example.com"]]


@pytest.mark.parametrize(
    "setting",
    [
        'allowed_email_domains = ["example.com"]',
        "require_verified_email = true",
        "session_check_ttl = 0",
        "step_up_max_age = 60",
        'allowed_emails = ["a@example.com"]',
    ],
)
def test_a_public_route_takes_no_session_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str
) -> None:
    code, _, err = check(
        write(tmp_path, VALID + f'\n[[routes]]\npath = "/x/"\nauth = "public"\n{setting}\n'), capsys
    )
    assert code == 2
    assert err.startswith("routes[0].auth: a public route reads no session")
