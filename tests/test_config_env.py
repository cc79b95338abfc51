"""Environment overrides: lists as JSON or comma-separated values, and bad values as one clear line.

A bad `AUTHPROXY_...` value must read like a bad file value — `key: message` — plus the variable it came
from, and stop `check-config` and `serve` with exit 2 and no traceback. The real command runs as a
process for those cases, as an operator would run it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.configs import COOKIE_SECRET, VALID

from authproxy.config import ConfigError, load, read_environment

OTHER_COOKIE_SECRET = "uP4oN7iM1bV5cX9zL3kJ6hG0fD2sA8qW4eR7tY1uI5o"


def authproxy_command() -> list[str]:
    """The installed `authproxy` script next to this Python, as operators run it."""
    script = Path(sys.executable).parent / "authproxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "authproxy"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.upper().startswith("AUTHPROXY_")}
    return subprocess.run(
        [*authproxy_command(), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


pytestmark = pytest.mark.usefixtures("no_authproxy_env")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(VALID, encoding="utf-8")
    return path


# --- both forms of a list ------------------------------------------------------------------------------

NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16")]


@pytest.mark.parametrize(
    "value",
    [
        '["10.0.0.0/8", "192.168.0.0/16"]',
        "10.0.0.0/8,192.168.0.0/16",
        " 10.0.0.0/8 , 192.168.0.0/16 ",
        "10.0.0.0/8,192.168.0.0/16,",
    ],
)
def test_trusted_proxies_as_json_or_commas(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AUTHPROXY_SERVER__TRUSTED_PROXIES", value)
    assert load(config_file).server.trusted_proxies == NETWORKS


@pytest.mark.parametrize(
    "value", [f'["{COOKIE_SECRET}", "{OTHER_COOKIE_SECRET}"]', f"{COOKIE_SECRET},{OTHER_COOKIE_SECRET}"]
)
def test_cookie_secrets_as_json_or_commas(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AUTHPROXY_SESSION__COOKIE_SECRETS", value)
    secrets = load(config_file).session.cookie_secrets
    assert [secret.get_secret_value() for secret in secrets] == [COOKIE_SECRET, OTHER_COOKIE_SECRET]


def test_other_lists_take_commas_too(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHPROXY_AUTHORIZATION__ALLOWED_EMAIL_DOMAINS", "example.com,@Example.org")
    monkeypatch.setenv("AUTHPROXY_HEADERS__STRIP_EXTRA", "X-App-User")
    monkeypatch.setenv("AUTHPROXY_WEBSOCKET__ALLOWED_ORIGINS", "https://a.example.com,https://b.example.com")
    config = load(config_file)
    assert config.authorization.allowed_email_domains == ["example.com", "example.org"]
    assert config.headers.strip_extra == ["X-App-User"]
    assert config.websocket.allowed_origins == ["https://a.example.com", "https://b.example.com"]


def test_an_empty_list_variable_is_an_empty_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text(VALID.replace("[server]", '[server]\ntrusted_proxies = ["10.0.0.0/8"]'), encoding="utf-8")
    monkeypatch.setenv("AUTHPROXY_SERVER__TRUSTED_PROXIES", "")
    assert load(path).server.trusted_proxies == []


def test_an_empty_file_variable_means_no_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHPROXY_SESSION__COOKIE_SECRET_FILE", "")
    assert load(config_file).session.cookie_secret_file is None


def test_one_route_rule_needs_no_json_but_several_do(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A regex may contain commas, so splitting on them could silently change what a rule matches.
    monkeypatch.setenv("AUTHPROXY_ROUTES__SKIP_AUTH", "^/public/")
    assert load(config_file).routes.skip_auth == ["^/public/"]
    monkeypatch.setenv("AUTHPROXY_ROUTES__SKIP_AUTH", '["^/a{1,3}/", "GET ^/healthz$"]')
    assert load(config_file).routes.skip_auth == ["^/a{1,3}/", "GET ^/healthz$"]
    monkeypatch.setenv("AUTHPROXY_ROUTES__SKIP_AUTH", "^/a{1,3}/")
    with pytest.raises(ConfigError) as caught:
        load(config_file)
    assert caught.value.problems == [
        'routes.skip_auth: a regex may contain ",": write the list as JSON, e.g. ["^/a/"] '
        "(from AUTHPROXY_ROUTES__SKIP_AUTH)"
    ]


def test_whole_sections_and_the_upstream_table_are_json(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHPROXY_UPSTREAMS", '[{"path": "/", "url": "http://127.0.0.1:9090"}]')
    monkeypatch.setenv("AUTHPROXY_LOGGING", '{"level": "debug"}')
    monkeypatch.setenv("AUTHPROXY_LOGGING__FORMAT", "console")
    config = load(config_file)
    assert [upstream.url for upstream in config.upstreams] == ["http://127.0.0.1:9090"]
    assert (config.logging.level, config.logging.format) == ("debug", "console")
    assert config.server.public_url == "https://app.example.com", "the file's other keys stay"


def test_names_are_case_insensitive_and_other_tools_variables_are_ignored(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("authproxy_server__workers", "3")
    monkeypatch.setenv("AUTHPROXY_PORT", "8000")
    monkeypatch.setenv("AUTHPROXY_TEST_NGINX", "1")
    assert load(config_file).server.workers == 3


def test_reading_the_environment_is_pure() -> None:
    env = read_environment(
        {
            "AUTHPROXY_SERVER__TRUSTED_PROXIES": "10.0.0.0/8",
            "AUTHPROXY_UPSTREAMS": "[{",
            "AUTHPROXY_PORT": "1",
            "PATH": "/bin",
        }
    )
    assert env.values == {"server": {"trusted_proxies": ["10.0.0.0/8"]}}
    assert env.origins == {("server", "trusted_proxies"): "AUTHPROXY_SERVER__TRUSTED_PROXIES"}
    assert [loc for loc, _ in env.problems] == [("upstreams",)]


# --- bad values: one line, key and variable, exit 2, no traceback ----------------------------------------

BAD = [
    (
        {"AUTHPROXY_SERVER__TRUSTED_PROXIES": "10.0.0/8"},
        "server.trusted_proxies: '10.0.0/8' is not an IP address or CIDR such as 10.0.0.0/8 "
        "(from AUTHPROXY_SERVER__TRUSTED_PROXIES)",
    ),
    (
        {"AUTHPROXY_SERVER__TRUSTED_PROXIES": '["10.0.0.0/8"'},
        "server.trusted_proxies: not valid JSON: Expecting ',' delimiter (character 14) "
        "(from AUTHPROXY_SERVER__TRUSTED_PROXIES)",
    ),
    (
        {"AUTHPROXY_UPSTREAMS": '[{"path": "/", "url": "http://127.0.0.1:8080"'},
        "upstreams: not valid JSON: Expecting ',' delimiter (character 46) (from AUTHPROXY_UPSTREAMS)",
    ),
    (
        {"AUTHPROXY_UPSTREAMS": '[{"path": "/", "url": "ftp://files"}]'},
        "upstreams[0].url: must be an absolute http:// or https:// URL, got 'ftp://files' "
        "(from AUTHPROXY_UPSTREAMS)",
    ),
    (
        {"AUTHPROXY_UPSTREAMS": '{"url": "http://127.0.0.1:8080"}'},
        "upstreams: Input should be a valid list (from AUTHPROXY_UPSTREAMS)",
    ),
    (
        {"AUTHPROXY_UPSTREAMS__0__URL": "http://127.0.0.1:8080"},
        "upstreams: cannot be set key by key; put the whole list in AUTHPROXY_UPSTREAMS as JSON "
        "(from AUTHPROXY_UPSTREAMS__0__URL)",
    ),
    (
        {"AUTHPROXY_SESSION__COOKIE_SECRETS": f"{COOKIE_SECRET},too-short"},
        "session.cookie_secrets: secret #2 is shorter than 32 characters (`authproxy gen-secret` makes one) "
        "(from AUTHPROXY_SESSION__COOKIE_SECRETS)",
    ),
    (
        {"AUTHPROXY_SESSION__COOKIE_SECRETS": f'["{COOKIE_SECRET}'},
        "session.cookie_secrets: not valid JSON: Unterminated string starting at (character 2) "
        "(from AUTHPROXY_SESSION__COOKIE_SECRETS)",
    ),
    (
        {"AUTHPROXY_SERVER__WORKERS": "many"},
        "server.workers: Input should be a valid integer, unable to parse string as an integer "
        "(from AUTHPROXY_SERVER__WORKERS)",
    ),
    (
        {"AUTHPROXY_SERVER__WOKERS": "2"},
        "server.wokers: unknown key; did you mean 'workers'? (from AUTHPROXY_SERVER__WOKERS)",
    ),
    (
        {"AUTHPROXY_SERVER": '{"workers": 2'},
        "server: not valid JSON: Expecting ',' delimiter (character 14) (from AUTHPROXY_SERVER)",
    ),
    (
        {"AUTHPROXY_SERVER": '["workers"]'},
        "server: must be a JSON object of [server] keys (from AUTHPROXY_SERVER)",
    ),
    (
        {"AUTHPROXY_CENTRALAUTH__CLIENT_ID": "CHANGE-ME"},
        "centralauth.client_id: 'CHANGE-ME' is a placeholder; set it to your CentralAuth organization ID "
        "(from AUTHPROXY_CENTRALAUTH__CLIENT_ID)",
    ),
]


@pytest.mark.parametrize(("env", "line"), BAD, ids=[next(iter(env)) for env, _ in BAD])
def test_check_config_names_the_key_and_the_variable(
    config_file: Path, env: dict[str, str], line: str
) -> None:
    result = run(["check-config", "-c", str(config_file)], env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""
    assert COOKIE_SECRET not in result.stderr


def test_serve_refuses_a_bad_variable_the_same_way(config_file: Path) -> None:
    env = {"AUTHPROXY_SERVER__TRUSTED_PROXIES": "10.0.0/8", "AUTHPROXY_UPSTREAMS": "[{"}
    result = run(["serve", "-c", str(config_file)], env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "upstreams: not valid JSON: Expecting property name enclosed in double quotes (character 3) "
        "(from AUTHPROXY_UPSTREAMS)",
        "server.trusted_proxies: '10.0.0/8' is not an IP address or CIDR such as 10.0.0.0/8 "
        "(from AUTHPROXY_SERVER__TRUSTED_PROXIES)",
    ]


def test_a_bad_variable_does_not_hide_the_files_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(VALID.replace("[server]", "[server]\nworkers = -1"), encoding="utf-8")
    monkeypatch.setenv("AUTHPROXY_SESSION__COOKIE_SECRETS", "[")
    with pytest.raises(ConfigError) as caught:
        load(path)
    keys = sorted(problem.split(":")[0] for problem in caught.value.problems)
    assert keys == ["server.workers", "session.cookie_secrets"]
    assert "(from" not in next(p for p in caught.value.problems if p.startswith("server.workers"))


def test_an_unreadable_variable_leaves_no_second_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without [[upstreams]] in the file, "upstreams: missing" would only repeat that the variable failed.
    path = tmp_path / "config.toml"
    path.write_text(VALID.split("[[upstreams]]")[0], encoding="utf-8")
    monkeypatch.setenv("AUTHPROXY_UPSTREAMS", "not json")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.problems == [
        "upstreams: not valid JSON: Expecting value (character 1) (from AUTHPROXY_UPSTREAMS)"
    ]


def test_a_file_value_is_not_blamed_on_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(VALID.replace("[server]", '[server]\nproxy_prefix = "oauth2"'), encoding="utf-8")
    monkeypatch.setenv("AUTHPROXY_SERVER__WORKERS", "2")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.problems == ["server.proxy_prefix: must start with a single '/', got 'oauth2'"]
