"""Real HAProxy (Debian's package) on loopback in front of authproxy, for end-to-end tests of the hop.

`start_haproxy()` writes a small config to a private temp directory and runs haproxy in the foreground
(`-db`) as our child, so nothing under /etc or /var is read or written and the test runs as root or not.
The frontend is `mode http` with `option forwardfor`, which is what most HAProxy deployments use to tell
the next hop who the client is; the server line sets `source 127.0.0.1` so that authproxy, configured to
trust 127.0.0.1/32, sees HAProxy as a trusted peer while the test's clients come from other loopback
addresses (127.0.0.2, 127.0.0.3) that are not trusted. Extra `http-request` lines for the frontend
(such as `set-header X-Forwarded-Proto http`) are passed in by the test.

HAProxy is a hard requirement of these tests (CI installs Debian's `haproxy` package): when it is missing
they fail with the install command rather than skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pytest

from support.listening import wait_until_listening
from support.servers import ServerProcess

DEBIAN_HAPROXY = "/usr/sbin/haproxy"
HAPROXY_ENV = "AUTHPROXY_TEST_HAPROXY"
MISSING_HAPROXY = (
    f"haproxy is required by tests/test_haproxy.py and was not found (looked at ${HAPROXY_ENV}, "
    f"{DEBIAN_HAPROXY} and PATH). Install it with `apt-get install -y haproxy` (Debian/Ubuntu), or set "
    f"{HAPROXY_ENV} to a haproxy binary. These tests never skip."
)
START_TIMEOUT = 10.0
# The address HAProxy connects to authproxy from: the one address the tests tell authproxy to trust.
HOP_ADDRESS = "127.0.0.1"

# No `daemon` and no `user`: with -db haproxy stays our child and keeps its stderr, where `log stderr`
# also sends one line per request, so a failing test can show what HAProxy saw and answered.
CONFIG = """\
global
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout http-request 5s

frontend in
    bind 127.0.0.1:{port}
    option forwardfor
{frontend_extra}
    default_backend authproxy

backend authproxy
    server authproxy {backend} source {hop}
"""


def haproxy_binary() -> str:
    """The haproxy to run: $AUTHPROXY_TEST_HAPROXY, else Debian's /usr/sbin/haproxy, else PATH's."""
    configured = os.environ.get(HAPROXY_ENV)
    candidates = [configured] if configured else [DEBIAN_HAPROXY, shutil.which("haproxy")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(MISSING_HAPROXY, pytrace=False)


def render_config(*, port: int, backend: str, frontend_extra: Sequence[str] = ()) -> str:
    """The whole haproxy.cfg: listen on 127.0.0.1:`port`, forward to `backend` (host:port)."""
    extra = "".join(f"    {line}\n" for line in frontend_extra).rstrip("\n")
    return CONFIG.format(port=port, backend=backend, hop=HOP_ADDRESS, frontend_extra=extra)


@dataclass
class HAProxy(ServerProcess):
    """A running haproxy at `url` (http://127.0.0.1:<port>) in front of one authproxy."""

    log_name: ClassVar[str] = "output.log"


async def start_haproxy(*, port: int, authproxy_url: str, frontend_extra: Sequence[str] = ()) -> HAProxy:
    """Run haproxy on 127.0.0.1:`port` in front of the authproxy at `authproxy_url` (http://host:port).

    `frontend_extra` are lines added to the frontend section, e.g. `http-request set-header ...`.
    """
    binary = haproxy_binary()
    directory = Path(tempfile.mkdtemp(prefix="authproxy-haproxy-"))
    config = directory / "haproxy.cfg"
    config.write_text(
        render_config(port=port, backend=urlsplit(authproxy_url).netloc, frontend_extra=frontend_extra)
    )
    with (directory / "output.log").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            binary,
            "-db",
            "-f",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    haproxy = HAProxy(f"http://127.0.0.1:{port}", directory, process)
    try:
        await wait_until_listening("haproxy", haproxy.process, port, haproxy.log, START_TIMEOUT)
    except BaseException:
        await haproxy.stop()
        raise
    return haproxy
