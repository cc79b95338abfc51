"""The fake's command line (`python -m authproxy.devidp`, wired as `authproxy devidp`).

Starts the real program as a subprocess on a free loopback port, talks to it over HTTP, and stops it
with SIGTERM (or SIGINT, even when started in the background with SIGINT ignored); bad options and a
busy port are checked in-process. Also checks the organization configured from options (with a
64-character secret) and the discovery document served.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from conftest import CLIENT_SECRET, basic

from authproxy.devidp.cli import main

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def running_devidp(*args: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy.devidp", "--listen", f"127.0.0.1:{port}", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/.well-known/openid-configuration"):
                        break
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, "the fake exited during start-up"
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the fake did not start listening within 10 s")
        yield url, process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)


async def test_cli_serves_the_configured_organization_and_stops_on_sigterm() -> None:
    args = [
        "--client-id",
        "cli-org",
        "--client-secret",
        CLIENT_SECRET,
        "--whitelist",
        "https://app.example.com",
    ]
    async with running_devidp(*args, "--max-session-time", "60") as (url, process):
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/.well-known/openid-configuration") as response:
                document = await response.json()
            async with http.get(url + "/_devidp/settings") as response:
                settings = await response.json()
            async with http.post(
                url + "/api/v1/userinfo", data=b"x", headers={"Authorization": basic("cli-org")}
            ) as r:
                token_error = await r.json()
    assert document["token_endpoint"] == f"{url}/api/v1/verify"
    assert settings["clientId"] == "cli-org"
    assert settings["whitelistItems"] == [{"value": "https://app.example.com"}]
    assert settings["maxSessionTime"] == 60
    assert token_error["errorCode"] == "tokenInvalid"
    assert process.returncode == 0
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert f"listening on {url}" in log
    assert CLIENT_SECRET not in log


async def test_cli_generates_and_prints_a_secret_when_none_is_given() -> None:
    async with running_devidp("--no-hijack-protection", "--autologin") as (url, process):
        async with aiohttp.ClientSession() as http, http.get(url + "/_devidp/settings") as response:
            settings = await response.json()
    assert process.stdout is not None
    printed = (await process.stdout.read()).decode()
    [secret_line] = [line for line in printed.splitlines() if "client secret" in line]
    assert len(secret_line.rsplit(" ", 1)[1]) == 64
    assert settings["hijackProtection"] is False
    assert settings["autoLogin"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--client-secret", "too-short"], "exactly 64 characters"),
        (["--whitelist", "not-an-origin"], "whitelist"),
        (["--listen", "nowhere"], "HOST:PORT"),
        (["--max-session-time", "-5"], "seconds"),
        (["--code-ttl", "0"], "code_ttl"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--listen", "--client-id", "--client-secret", "--whitelist", "--max-session-time",
                   "--max-inactivity-time", "--no-hijack-protection", "--autologin"):  # fmt: skip
        assert option in out


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_a_busy_port_exits_2_with_one_line(reuse_port: bool, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        # Not even a listener that allows sharing is joined.
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["--listen", f"127.0.0.1:{port}", "--client-id", "x", "--client-secret", CLIENT_SECRET]
        assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"authproxy devidp: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_started_in_the_background_it_stops_on_a_signal(signum: signal.Signals) -> None:
    """As `authproxy devidp &` from a script: SIGINT starts out ignored, and still stops it."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "devidp", "--listen", f"127.0.0.1:{port}",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        while b"listening on" not in await asyncio.wait_for(process.stderr.readline(), 30):
            assert process.returncode is None
        process.send_signal(signum)
        assert await asyncio.wait_for(process.wait(), 5) == 0
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def test_the_fake_imports_nothing_from_the_rest_of_authproxy() -> None:
    for module in (ROOT / "authproxy" / "devidp").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{module.name} reaches outside the package"
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert all(name.split(".")[0] != "authproxy" for name in names), module.name
