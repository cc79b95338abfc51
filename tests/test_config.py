"""Config loading: the example file, environment overrides, secret files, and one clear line per error."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from authproxy import cli
from authproxy.config import ConfigError, load

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SECRET = "c" * 64
COOKIE_SECRET = "k" * 43

VALID = f"""
[server]
public_url = "https://app.example.com"

[centralauth]
client_id = "org-1"
client_secret = "{CLIENT_SECRET}"

[session]
cookie_secrets = ["{COOKIE_SECRET}"]

[[upstreams]]
url = "http://127.0.0.1:8080"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


pytestmark = pytest.mark.usefixtures("no_authproxy_env")


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, VALID))
    assert config.server.listen == "0.0.0.0:4180"
    assert config.server.proxy_prefix == "/oauth2"
    assert config.centralauth.base_url == "https://centralauth.com"
    assert config.centralauth.session_check_ttl == 30
    assert config.centralauth.on_outage == "fail-closed"
    assert config.session.store == "cookie"
    assert config.session.cookie_name == "_authproxy"
    assert config.session.cookie_samesite == "lax"
    assert config.upstreams[0].path == "/"
    assert config.headers.profile == "oauth2-proxy"
    assert config.logging.format == "json"
    assert config.centralauth.client_secret.get_secret_value() == CLIENT_SECRET


def test_example_config_is_valid_once_secrets_are_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHPROXY_CENTRALAUTH__CLIENT_ID", "org-1")
    monkeypatch.setenv("AUTHPROXY_CENTRALAUTH__CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AUTHPROXY_SESSION__COOKIE_SECRETS", f'["{COOKIE_SECRET}"]')
    assert cli.main(["check-config", "-c", str(ROOT / "config.example.toml")]) == 0


def test_example_config_documents_every_key() -> None:
    import tomllib

    from pydantic import BaseModel

    from authproxy.config import Config, RouteConfig

    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    example = tomllib.loads(text)
    for section, field in Config.model_fields.items():
        model = getattr(field.annotation, "__args__", (field.annotation,))[0]
        assert isinstance(model, type) and issubclass(model, BaseModel), (section, model)
        table = example[section][0] if section == "upstreams" else example[section]
        for key in model.model_fields:
            if (section, key) == ("routes", "table"):
                # The `[[routes]]` shape: its keys are commented lines (a file holds one shape or the other).
                assert all(f"# {name} =" in text for name in RouteConfig.model_fields), "[[routes]] keys"
                continue
            # *_file keys are documented as commented-out alternatives of their secret.
            assert key in table or f"# {key} =" in text, f"{section}.{key} missing from the example"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHPROXY_SERVER__WORKERS", "3")
    monkeypatch.setenv("AUTHPROXY_CENTRALAUTH__CLIENT_SECRET", "e" * 64)
    monkeypatch.setenv("AUTHPROXY_SERVER__TRUSTED_PROXIES", '["10.0.0.0/8"]')
    config = load(write(tmp_path, VALID))
    assert config.server.workers == 3
    assert config.centralauth.client_secret.get_secret_value() == "e" * 64
    assert config.server.trusted_proxies == [ipaddress.ip_network("10.0.0.0/8")]


def test_secrets_come_from_files(tmp_path: Path) -> None:
    client = write(tmp_path, CLIENT_SECRET + "\n", "client.secret")
    cookies = write(tmp_path, f"{'n' * 40}\n\n{COOKIE_SECRET}\n", "cookies.secret")
    text = VALID.replace(f'client_secret = "{CLIENT_SECRET}"', f'client_secret_file = "{client}"')
    text = text.replace(f'cookie_secrets = ["{COOKIE_SECRET}"]', f'cookie_secret_file = "{cookies}"')
    config = load(write(tmp_path, text))
    assert config.centralauth.client_secret.get_secret_value() == CLIENT_SECRET
    assert [s.get_secret_value() for s in config.session.cookie_secrets] == ["n" * 40, COOKIE_SECRET]


def test_secrets_are_never_shown(tmp_path: Path) -> None:
    config = load(write(tmp_path, VALID))
    assert CLIENT_SECRET not in repr(config)
    assert COOKIE_SECRET not in str(config.model_dump())


# (replace this, with that) -> the line that must be printed. Each one is a distinct mistake.
BROKEN = [
    ('public_url = "https://app.example.com"', 'public_url = "app.example.com"', "server.public_url: "),
    ("[server]", '[server]\nworkers = "many"', "server.workers: "),
    ("[server]", '[server]\nlistne = "0.0.0.0:80"', "server.listne: unknown key; did you mean 'listen'?"),
    ("[server]", '[server]\nlisten = "4180"', "server.listen: expected host:port"),
    ("[server]", '[server]\ntrusted_proxies = ["10.0.0/8"]', "server.trusted_proxies: '10.0.0/8' is not"),
    ("[server]", '[server]\nproxy_prefix = "oauth2"', "server.proxy_prefix: must start with"),
    (f'client_secret = "{CLIENT_SECRET}"', "", "centralauth.client_secret: missing"),
    ('client_id = "org-1"', 'client_id = ""', "centralauth.client_id: missing"),
    ("[centralauth]", '[centralauth]\non_outage = "retry"', "centralauth.on_outage: "),
    (
        "[centralauth]",
        '[centralauth]\nbase_url = "https://c.example.com/x"',
        "centralauth.base_url: must be an",
    ),
    (f'["{COOKIE_SECRET}"]', '["tooshort"]', "session.cookie_secrets: secret #1 is shorter than 32"),
    (f'cookie_secrets = ["{COOKIE_SECRET}"]', "", "session.cookie_secrets: missing"),
    ("[session]", '[session]\ncookie_samesite = "none"\ncookie_secure = false', "session.cookie_samesite: "),
    ("[session]", '[session]\nredis_url = "http://redis"', "session.redis_url: must be a redis://"),
    ('url = "http://127.0.0.1:8080"', 'url = "ftp://files"', "upstreams[0].url: must be an absolute http"),
    ('url = "http://127.0.0.1:8080"', 'url = "/"', "upstreams[0].url: must be an absolute http"),
    ("[[upstreams]]", "[[upstreams]]\npath = 'api'", "upstreams[0].path: must start with"),
    (
        "[server]",
        '[routes]\nskip_auth = ["^/(public"]\n[server]',
        "routes.skip_auth[0]: invalid regular",
    ),
    ("[server]", '[routes]\napi = ["GET [a-"]\n[server]', "routes.api[0]: invalid regular expression"),
    ("[server]", '[redirects]\nallowed_domains = ["a b"]\n[server]', "redirects.allowed_domains[0]: "),
    ("[server]", '[logging]\nformat = "xml"\n[server]', "logging.format: "),
    ("[server]", '[loging]\nlevel = "info"\n[server]', "loging: unknown key; did you mean 'logging'?"),
    ("[server]", "[server\n", "config: "),
]


@pytest.mark.parametrize(("old", "new", "expected"), BROKEN, ids=[case[2].split(":")[0] for case in BROKEN])
def test_broken_config_names_the_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert CLIENT_SECRET not in err and COOKIE_SECRET not in err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = VALID.replace('url = "http://127.0.0.1:8080"', 'url = "ftp://x"').replace(
        "[server]", '[server]\nworkers = -1\nlisten = "nope"'
    )
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    keys = sorted(problem.split(":")[0] for problem in caught.value.problems)
    assert keys == ["server.listen", "server.workers", "upstreams[0].url"]


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    text = VALID.replace(
        f'client_secret = "{CLIENT_SECRET}"', f'client_secret_file = "{tmp_path / "absent"}"'
    )
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert caught.value.problems[0].startswith("centralauth.client_secret_file: cannot read")


def test_duplicate_upstream_paths_are_refused(tmp_path: Path) -> None:
    text = VALID + '\n[[upstreams]]\nurl = "http://127.0.0.1:9090"\n'
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert caught.value.problems == ["upstreams: path '/' is used by more than one upstream"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_check_config_as_a_real_process(tmp_path: Path) -> None:
    good = write(tmp_path, VALID, "good.toml")
    bad = write(tmp_path, VALID.replace("[server]", "[server]\nworkers = -3"), "bad.toml")
    run = [sys.executable, "-m", "authproxy", "check-config", "-c"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert failed.returncode == 2
    assert failed.stderr.startswith("server.workers: ")


def test_gen_secret_is_fresh_and_long_enough(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["gen-secret"])
    cli.main(["gen-secret"])
    first, second = capsys.readouterr().out.split()
    assert first != second
    assert len(first) >= 32


@pytest.mark.parametrize("pattern", ["host:", ".1.2.3.4", "0x7f.1", "host:\u0664\u0664\u0663", "a b"])
def test_redirect_patterns_are_judged_by_the_redirect_validator(tmp_path: Path, pattern: str) -> None:
    text = VALID + f'\n[redirects]\nallowed_domains = ["{pattern}"]\n'
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert caught.value.problems[0].startswith("redirects.allowed_domains[0]: ")


def test_listen_port_must_be_ascii_digits(tmp_path: Path) -> None:
    text = VALID.replace("[server]", '[server]\nlisten = "0.0.0.0:\u0664\u0661\u0668\u0660"')
    with pytest.raises(ConfigError, match=r"server\.listen: expected host:port"):
        load(write(tmp_path, text))


@pytest.mark.parametrize("logo", ["javascript:alert(1)", "//evil.example/x.png", "logo.png"])
def test_branding_logo_must_be_a_url_or_a_path(tmp_path: Path, logo: str) -> None:
    with pytest.raises(ConfigError, match=r"branding\.logo_url: "):
        load(write(tmp_path, VALID + f'\n[branding]\nlogo_url = "{logo}"\n'))
