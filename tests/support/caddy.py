"""Real Caddy running `deploy/caddy/Caddyfile` on loopback, for end-to-end tests of that example.

`start_caddy()` renders the example file itself, not a copy: the only edits are the ones `site_edits()`
lists (the site address, with the test certificate, and the two upstream addresses), and each must
match exactly once, so an edit to the example that the test can no longer follow fails loudly. A
global options block goes in front (`admin off`: no admin endpoint to collide on; `auto_https off`: no
certificate management and no listener on port 80; `storage` in the test's directory), and Caddy runs
as `caddy run --config FILE --adapter caddyfile` with HOME and the XDG directories in that private
directory too, so it never touches the user's or the system's Caddy state. The site is served over TLS
with the throwaway CA of `support.nginx.site_tls()`; clients trust it with `ssl=site_tls().client_context`.

Caddy is a hard requirement of these tests (CI installs Debian's `caddy` package): when it is missing
they fail with the install command rather than skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from support.listening import wait_until_listening
from support.nginx import write_site_tls
from support.servers import ServerProcess, apply_edits

SITE = Path(__file__).resolve().parents[2] / "deploy" / "caddy" / "Caddyfile"
DEBIAN_CADDY = "/usr/bin/caddy"
CADDY_ENV = "AUTHPROXY_TEST_CADDY"
MISSING_CADDY = (
    f"Caddy is required by tests/test_caddy.py and was not found (looked at ${CADDY_ENV}, {DEBIAN_CADDY} "
    f"and PATH). Install it with `apt-get install -y caddy` (Debian/Ubuntu), or set {CADDY_ENV} to a "
    "caddy binary (2.6 or later, with forward_auth). These tests never skip."
)
START_TIMEOUT = 15.0

GLOBAL_OPTIONS = """\
{{
	admin off
	auto_https off
	storage file_system {{
		root {dir}/storage
	}}
	log {{
		output file {dir}/caddy.log
		level INFO
	}}
}}

"""


def caddy_binary() -> str:
    """The Caddy to run: $AUTHPROXY_TEST_CADDY, else Debian's /usr/bin/caddy, else `caddy` on PATH."""
    configured = os.environ.get(CADDY_ENV)
    candidates = [configured] if configured else [DEBIAN_CADDY, shutil.which("caddy")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(MISSING_CADDY, pytrace=False)


def site_edits(*, port: int, authproxy: str, app: str, cert: Path, key: Path) -> dict[str, str]:
    """Every change made to the example to run it here: `text in the example` -> `its replacement`."""
    return {
        "app.example.com {": f"https://127.0.0.1:{port} {{\n\ttls {cert} {key}",
        "reverse_proxy /oauth2/* 127.0.0.1:4180": f"reverse_proxy /oauth2/* {authproxy}",
        "forward_auth 127.0.0.1:4180 {": f"forward_auth {authproxy} {{",
        "reverse_proxy 127.0.0.1:8080": f"reverse_proxy {app}",
    }


def render_site(text: str, edits: dict[str, str]) -> str:
    return apply_edits(text, edits, SITE, "tests/support/caddy.py:site_edits()")


@dataclass
class Caddy(ServerProcess):
    """A running Caddy serving the example site at `url` (https://127.0.0.1:<port>)."""

    log_name: ClassVar[str] = "caddy.log"


def _prepare(*, port: int, authproxy: str, app: str) -> tuple[Path, Path]:
    """Caddy's private directory with the certificate, a home, and the rendered Caddyfile in it."""
    directory = Path(tempfile.mkdtemp(prefix="authproxy-caddy-"))
    cert, key = write_site_tls(directory)
    (directory / "home").mkdir()
    edits = site_edits(port=port, authproxy=authproxy, app=app, cert=cert, key=key)
    config = directory / "Caddyfile"
    config.write_text(GLOBAL_OPTIONS.format(dir=directory) + render_site(SITE.read_text(), edits))
    return directory, config


async def start_caddy(*, port: int, authproxy: str, app: str) -> Caddy:
    """Run the example site on 127.0.0.1:`port` in front of these host:port addresses."""
    binary = caddy_binary()
    directory, config = _prepare(port=port, authproxy=authproxy, app=app)
    home = directory / "home"
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
    }
    with (directory / "stderr.log").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            binary,
            "run",
            "--config",
            str(config),
            "--adapter",
            "caddyfile",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=environment,
            cwd=directory,
        )
    caddy = Caddy(f"https://127.0.0.1:{port}", directory, process)
    try:
        await wait_until_listening(
            "caddy", process, port, lambda: caddy.log("stderr.log") + caddy.log(), START_TIMEOUT
        )
    except BaseException:
        await caddy.stop()
        raise
    return caddy
