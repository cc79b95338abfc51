"""`authproxy serve` as a real process: two workers on one port, graceful SIGTERM, SIGHUP reload.

The start-up failures an operator meets are here too: a port someone else holds (another authproxy, or
any other listener, with SO_REUSEPORT or without) is one line on stderr and exit status 2, and the first
holder keeps every request; a worker that keeps dying makes the supervisor give up with one line and
exit status 1; SIGTERM at any moment ends the process without a traceback and without leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
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
        self.log = path.with_suffix(".log")  # stdout and stderr

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

    async def start(
        workers: int = 1, title: str = "One", metrics: str = "", port: int = 0, wait: bool = True
    ) -> Served:
        port = port or free_port()
        path = tmp_path / f"authproxy-{port}-{title}.toml"
        path.write_text(config_text(port, devidp.url, echo_url, title, workers, metrics))
        log = (tmp_path / f"authproxy-{port}-{title}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "authproxy", "serve", "-c", str(path),
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        served = Served(process, f"http://127.0.0.1:{port}", path)
        started.append(served)
        if wait:
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
        # Workers hand their figures over at most a second after an observation (metrics.FLUSH_INTERVAL).
        deadline = time.monotonic() + 5
        totals = []
        while not totals or (totals[-1] < 40 and time.monotonic() < deadline):
            await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
            totals.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("authproxy_requests_total{")
                    and 'route="proxy"' in line
                    and 'status="200"' in line
                )
            )
    assert totals[-1] == 40, totals
    assert re.search(r"^authproxy_request_duration_seconds_count\{route=\"proxy\"\} 40.0$", text, re.M), text


# --- start-up failures ---------------------------------------------------------------------------------


async def _serve_to_the_end(path: Path, within: float = 60) -> tuple[int, list[str]]:
    """Run `authproxy serve -c path` to its exit: the status and the lines of its stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "serve", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), within)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


async def _group_is_gone(pgid: int, within: float = 5) -> bool:
    """Whether every process of the group has ended (workers and multiprocessing's resource tracker
    finish just after the supervisor)."""
    for _ in range(int(within / 0.05)):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("second_workers", [1, 2])
async def test_a_second_serve_on_the_same_port_exits_2_and_the_first_keeps_every_request(
    serve_factory, second_workers: int
) -> None:  # type: ignore[no-untyped-def]
    first = await serve_factory(workers=2, title="First")
    port = int(first.url.rsplit(":", 1)[1])
    second = first.path.with_name("second.toml")
    second.write_text(
        first.path.read_text()
        .replace('title = "First"', 'title = "Second"')
        .replace("workers = 2", f"workers = {second_workers}")
    )
    code, stderr = await _serve_to_the_end(second)
    assert code == 2
    assert stderr == [f"authproxy: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert [await first.title() for _ in range(20)] == ["First"] * 20
    # And no process can join the first one's port the way a second SO_REUSEPORT listener could.
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="in use"):
            intruder.bind(("127.0.0.1", port))


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_port_held_by_another_program_exits_2_with_one_line(
    devidp: DevIdp, echo_url: str, tmp_path: Path, workers: int, reuse_port: bool
) -> None:
    with socket.socket() as foreign:
        # Even a listener that allows sharing is not joined: authproxy never asks to share.
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        path = tmp_path / "authproxy.toml"
        path.write_text(config_text(port, devidp.url, echo_url, "One", workers))
        code, stderr = await _serve_to_the_end(path)
    assert code == 2
    assert stderr == [f"authproxy: cannot listen on 127.0.0.1:{port}: address already in use"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_busy_metrics_port_exits_2_with_one_line(
    devidp: DevIdp, echo_url: str, tmp_path: Path, workers: int
) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        metrics = f"127.0.0.1:{foreign.getsockname()[1]}"
        port = free_port()
        path = tmp_path / "authproxy.toml"
        path.write_text(config_text(port, devidp.url, echo_url, "One", workers, metrics))
        code, stderr = await _serve_to_the_end(path)
    assert code == 2
    assert stderr == [f"authproxy: cannot listen on {metrics}: address already in use"]
    # The proxy port it had bound is free again.
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


async def _break_and_kill_a_worker(served: Served) -> None:
    """A worker that cannot start again: its config file now has an error, and it is killed."""
    for _ in range(100):  # both workers have read the good file
        if sum(event["event"] == "worker.ready" for event in _events(served)) >= 2:
            break
        await asyncio.sleep(0.1)
    served.path.write_text(served.path.read_text().replace("workers = 2", 'workers = "two"'))
    os.kill(served.children()[0], signal.SIGKILL)


def _events(served: Served) -> list[dict[str, object]]:
    return [json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")]


async def test_a_worker_that_keeps_failing_makes_the_supervisor_give_up_with_one_line(
    serve_factory,
) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=2)
    started = asyncio.get_running_loop().time()
    await _break_and_kill_a_worker(served)
    assert await asyncio.wait_for(served.process.wait(), 60) == 1
    elapsed = asyncio.get_running_loop().time() - started
    events = _events(served)
    died = [event for event in events if event["event"] == "worker.died"]
    [gave_up] = [event for event in events if event["event"] == "supervisor.giving_up"]
    assert len(died) == 5
    assert "invalid configuration: server.workers" in str(gave_up["cause"])
    assert "Traceback" not in served.log.read_text()
    # Restarted with growing pauses (0.5 + 1 + 2 + 5 s), not in a tight loop.
    assert elapsed > 8.5
    assert await _group_is_gone(served.process.pid)


@pytest.mark.parametrize("deaths", [1, 3])
async def test_sigterm_while_a_worker_is_being_restarted_stops_cleanly(serve_factory, deaths: int) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=2)
    await _break_and_kill_a_worker(served)
    for _ in range(200):
        if sum(event["event"] == "worker.died" for event in _events(served)) >= deaths:
            break
        await asyncio.sleep(0.05)
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 15) == 0
    log = served.log.read_text()
    assert "Traceback" not in log and "supervisor.stopped" in log
    assert await _group_is_gone(served.process.pid)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_during_start_up_never_leaves_a_traceback_or_a_process(
    serve_factory, workers: int, delay: float
) -> None:  # type: ignore[no-untyped-def]
    served = await serve_factory(workers=workers, wait=False)
    await asyncio.sleep(delay)
    served.process.send_signal(signal.SIGTERM)
    # 0 once the handlers are installed; before that, the default action ends it as quietly.
    assert await asyncio.wait_for(served.process.wait(), 15) in (0, -signal.SIGTERM)
    assert await _group_is_gone(served.process.pid)
    assert "Traceback" not in served.log.read_text()
