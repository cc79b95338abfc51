"""`authproxy demo` as a person runs it: a real process that prints where to go, then serves a login."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import ClientSession, CookieJar
from support.harness import free_port


async def test_demo_command_prints_the_url_and_a_login_works() -> None:
    ports = [free_port() for _ in range(3)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "demo",
        "--port", str(ports[0]), "--idp-port", str(ports[1]), "--app-port", str(ports[2]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = ""
        while "Press Ctrl+C" not in banner:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "the demo exited before printing its banner"
            banner += line.decode()
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
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 15) == 0
