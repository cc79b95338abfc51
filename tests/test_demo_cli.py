"""`authproxy demo` as a person runs it: a real process that prints where to go, then serves a login.

Also as a script runs it: started in the background (SIGINT ignored from the start, as a shell does for
a background job) it still stops on SIGINT and on SIGTERM, leaving no process behind; and a busy port
is one line naming the address and the option that moves it. Every test ends its demo's whole process
group, even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import ClientSession, CookieJar
from support.harness import free_port


@contextlib.asynccontextmanager
async def demo_process(
    ports: list[int], preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`authproxy demo` on these ports in its own process group, which is killed on the way out."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "demo",
        "--port", str(ports[0]), "--idp-port", str(ports[1]), "--app-port", str(ports[2]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, preexec_fn=preexec_fn,
    )  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def read_banner(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    banner = ""
    while "Press Ctrl+C" not in banner:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "the demo exited before printing its banner"
        banner += line.decode()
    return banner


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def ignore_sigint() -> None:
    """What a non-interactive shell does for `command &`: the job starts with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_demo_command_prints_the_url_and_a_login_works() -> None:
    ports = [free_port() for _ in range(3)]
    async with demo_process(ports) as process:
        banner = await read_banner(process)
        url = f"http://127.0.0.1:{ports[0]}/"
        assert f"Open   {url}" in banner and "ada@example.com" in banner
        headers = {"Accept": "text/html", "User-Agent": "demo-test"}
        async with ClientSession(headers=headers, cookie_jar=CookieJar(unsafe=True)) as browser:
            async with browser.get(url) as response:
                form = response.url
                assert 'name="email"' in await response.text()
            async with browser.post(form, data={"email": "ada@example.com"}) as response:
                assert str(response.url) == url
                assert 'Hello, <span id="email">ada@example.com</span>' in await response.text()
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 15) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_demo_started_in_the_background_stops_on_a_signal(signum: signal.Signals) -> None:
    ports = [free_port() for _ in range(3)]
    async with demo_process(ports, preexec_fn=ignore_sigint) as process:
        await read_banner(process)
        process.send_signal(signum)
        assert await asyncio.wait_for(process.wait(), 5) == 0
        assert group_is_gone(process.pid)
        assert process.stderr is not None
        assert "Traceback" not in (await process.stderr.read()).decode()
    # Its ports are free again.
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("busy", [0, 1, 2], ids=["--port", "--idp-port", "--app-port"])
async def test_a_busy_demo_port_is_one_line_naming_its_option(busy: int) -> None:
    option = ("--port", "--idp-port", "--app-port")[busy]
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        ports = [free_port() for _ in range(3)]
        ports[busy] = foreign.getsockname()[1]
        async with demo_process(ports) as process:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 2
    assert stderr.decode().splitlines() == [
        f"authproxy demo: cannot listen on 127.0.0.1:{ports[busy]}: address already in use "
        f"(choose another port with {option})"
    ]
