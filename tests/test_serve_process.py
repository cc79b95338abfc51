"""`authproxy serve` as a real process: two workers on one port, graceful SIGTERM, SIGHUP reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp
from support.harness import COOKIE_SECRET, free_port


def config_text(port: int, idp_url: str, echo_url: str, title: str, workers: int, metrics: str = "") -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
workers = {workers}
shutdown_grace = 10
metrics_listen = "{metrics}"

[centralauth]
base_url = "{idp_url}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[session]
cookie_secrets = ["{COOKIE_SECRET}"]
cookie_secure = false

[[upstreams]]
url = "{echo_url}"

[routes]
skip_auth = ["^/public/"]

[branding]
title = "{title}"

[logging]
format = "json"
access_log = false
"""


class Served:
    def __init__(self, process: asyncio.subprocess.Process, url: str, path: Path) -> None:
        self.process = process
        self.url = url
        self.path = path

    def children(self) -> list[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        found = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if (
                        b"resource_tracker" not in cmdline
                        and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
                    ):
                        found.append(int(pid))
        return found

    async def title(self) -> str:
        async with ClientSession() as http, http.get(f"{self.url}/oauth2/sign_in") as response:
            page = await response.text()
        return page.split("<span>", 1)[1].split("</span>", 1)[0]


async def _wait_until_up(url: str, process: asyncio.subprocess.Process) -> None:
    async with ClientSession() as http:
        for _ in range(200):
            if process.returncode is not None:
                raise AssertionError(f"serve exited with {process.returncode}")
            try:
                async with http.get(f"{url}/ping") as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("serve did not come up")


@pytest.fixture
async def serve_factory(devidp: DevIdp, echo_url: str, tmp_path: Path) -> AsyncIterator[object]:
    started: list[Served] = []

    async def start(workers: int = 1, title: str = "One", metrics: str = "") -> Served:
        port = free_port()
        path = tmp_path / f"authproxy-{port}.toml"
        path.write_text(config_text(port, devidp.url, echo_url, title, workers, metrics))
        log = (tmp_path / f"authproxy-{port}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "authproxy", "serve", "-c", str(path),
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        served = Served(process, f"http://127.0.0.1:{port}", path)
        started.append(served)
        await _wait_until_up(served.url, process)
        return served

    yield start
    for served in started:
        # The whole process group: a supervisor's workers must not outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(served.process.pid, signal.SIGKILL)
        await served.process.wait()


async def test_two_workers_share_the_port(serve_factory) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=2)
    for _ in range(50):
        if len(served.children()) >= 2:
            break
        await asyncio.sleep(0.1)
    workers = served.children()
    assert len(workers) >= 2
    async with ClientSession() as http:
        statuses = await asyncio.gather(*(_status(http, f"{served.url}/public/{i}") for i in range(60)))
    assert statuses == [200] * 60
    # A worker that dies is replaced.
    os.kill(workers[0], signal.SIGKILL)
    for _ in range(100):
        alive = served.children()
        if len(alive) >= 2 and workers[0] not in alive:
            break
        await asyncio.sleep(0.1)
    assert len(served.children()) >= 2 and workers[0] not in served.children()
    async with ClientSession() as http:
        assert await _status(http, f"{served.url}/public/after") == 200


async def _status(http: ClientSession, url: str) -> int:
    async with http.get(url) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_a_slow_request_finish(serve_factory, workers: int) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=workers)
    if workers == 2:
        for _ in range(50):
            if len(served.children()) >= 2:
                break
            await asyncio.sleep(0.1)
    async with ClientSession() as http:
        slow = asyncio.ensure_future(_status(http, f"{served.url}/public/_slow?delay=1.5"))
        await asyncio.sleep(0.4)
        served.process.send_signal(signal.SIGTERM)
        assert await slow == 200
    assert await asyncio.wait_for(served.process.wait(), 15) == 0


async def test_sighup_keeps_the_old_config_when_the_new_one_is_broken(serve_factory) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=2, title="One")
    await asyncio.sleep(0.5)  # both workers up
    good = served.path.read_text()
    served.path.write_text(good.replace("workers = 2", 'workers = "many"'))
    served.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert served.process.returncode is None
    assert {await served.title() for _ in range(10)} == {"One"}
    served.path.write_text(good.replace('title = "One"', 'title = "Two"'))
    served.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        titles = {await served.title() for _ in range(10)}
        if titles == {"Two"}:
            break
        await asyncio.sleep(0.1)
    assert titles == {"Two"}  # every worker took the change


async def test_sighup_applies_changed_rules_in_a_single_worker(serve_factory) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=1)
    async with ClientSession(headers={"Accept": "application/json"}) as http:
        assert await _status(http, f"{served.url}/open/x") == 401
        served.path.write_text(
            served.path.read_text().replace('skip_auth = ["^/public/"]', 'skip_auth = ["^/open/"]')
        )
        served.process.send_signal(signal.SIGHUP)
        for _ in range(50):
            if await _status(http, f"{served.url}/open/x") == 200:
                break
            await asyncio.sleep(0.1)
        assert await _status(http, f"{served.url}/open/x") == 200
        assert await _status(http, f"{served.url}/public/x") == 401


async def test_metrics_of_all_workers_are_summed(serve_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics_port = free_port()
    served = await serve_factory(workers=2, metrics=f"127.0.0.1:{metrics_port}")
    async with ClientSession() as http:
        for _ in range(40):
            assert await _status(http, f"{served.url}/public/m") == 200
        async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            text = await response.text()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("authproxy_requests_total{") and 'route="proxy"' in line and 'status="200"' in line
    )
    assert total == 40
