"""`authproxy serve` as a real process: two workers on one port, graceful SIGTERM, SIGHUP reload.

The start-up failures an operator meets are here too: a port someone else holds (another authproxy, or
any other listener, with SO_REUSEPORT or without) is one line on stderr and exit status 2, and the first
holder keeps every request; a worker that keeps dying makes the supervisor give up with one line and
exit status 1; SIGTERM at any moment ends the process without a traceback and without leftovers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from conftest import CLIENT_ID, CLIENT_SECRET, DevIdp
from support.harness import free_port
from support.served import ServedProxy


def settings(workers: int = 1, title: str = "One", metrics: str = "") -> dict[str, Any]:
    """These tests' config tables, over `ServedProxy`'s base: `/public/` open, the title on every page."""
    return {
        "server": {"workers": workers, "shutdown_grace": 10, "metrics_listen": metrics},
        "routes": {"skip_auth": ["^/public/"]},
        "branding": {"title": title},
        "logging": {"format": "json", "access_log": False},
    }


Unstarted = Callable[..., ServedProxy]
ServeFactory = Callable[..., Awaitable[ServedProxy]]


@pytest.fixture
def unstarted(devidp: DevIdp, echo_url: str, tmp_path: Path) -> Unstarted:
    """`authproxy serve` in front of the echo upstream, its config file written but not started."""

    def make(
        *, workers: int = 1, title: str = "One", metrics: str = "", port: int | None = None
    ) -> ServedProxy:
        served = ServedProxy(
            tmp_path,
            idp_url=devidp.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            upstream_url=echo_url,
            port=port,
            name=title.lower(),
        )
        return served.configure(**settings(workers, title, metrics))

    return make


@pytest.fixture
async def serve_factory(unstarted: Unstarted) -> AsyncIterator[ServeFactory]:
    started: list[ServedProxy] = []

    async def start(
        workers: int = 1, title: str = "One", metrics: str = "", wait: bool = True
    ) -> ServedProxy:
        served = unstarted(workers=workers, title=title, metrics=metrics)
        started.append(served)
        return await served.start(wait=wait)

    yield start
    for served in started:
        await served.stop()  # the whole process group: a supervisor's workers must not outlive the test


async def title_of(served: ServedProxy) -> str:
    """The branding title on the sign-in page, as whichever worker answered renders it."""
    async with ClientSession() as http, http.get(f"{served.url}/oauth2/sign_in") as response:
        page = await response.text()
    return page.split("<span>", 1)[1].split("</span>", 1)[0]


async def test_two_workers_share_the_port(serve_factory: ServeFactory) -> None:
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
async def test_sigterm_lets_a_slow_request_finish(serve_factory: ServeFactory, workers: int) -> None:
    served = await serve_factory(workers=workers)
    assert served.process is not None
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


async def test_sighup_keeps_the_old_config_when_the_new_one_is_broken(serve_factory: ServeFactory) -> None:
    served = await serve_factory(workers=2, title="One")
    assert served.process is not None
    await asyncio.sleep(0.5)  # both workers up
    served.configure(server={"workers": "many"})
    served.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert served.process.returncode is None
    assert {await title_of(served) for _ in range(10)} == {"One"}
    served.configure(server={"workers": 2}, branding={"title": "Two"})
    served.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        titles = {await title_of(served) for _ in range(10)}
        if titles == {"Two"}:
            break
        await asyncio.sleep(0.1)
    assert titles == {"Two"}  # every worker took the change


async def test_sighup_applies_changed_rules_in_a_single_worker(serve_factory: ServeFactory) -> None:
    served = await serve_factory(workers=1)
    assert served.process is not None
    async with ClientSession(headers={"Accept": "application/json"}) as http:
        assert await _status(http, f"{served.url}/open/x") == 401
        served.configure(routes={"skip_auth": ["^/open/"]})
        served.process.send_signal(signal.SIGHUP)
        for _ in range(50):
            if await _status(http, f"{served.url}/open/x") == 200:
                break
            await asyncio.sleep(0.1)
        assert await _status(http, f"{served.url}/open/x") == 200
        assert await _status(http, f"{served.url}/public/x") == 401


async def test_metrics_of_all_workers_are_summed(serve_factory: ServeFactory) -> None:
    metrics_port = free_port()
    served = await serve_factory(workers=2, metrics=f"127.0.0.1:{metrics_port}")
    async with ClientSession() as http:
        for _ in range(40):
            assert await _status(http, f"{served.url}/public/m") == 200
        # Workers hand their figures over at most a second after an observation (metrics.FLUSH_INTERVAL).
        deadline = time.monotonic() + 5
        totals: list[float] = []
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


@pytest.mark.parametrize("second_workers", [1, 2])
async def test_a_second_serve_on_the_same_port_exits_2_and_the_first_keeps_every_request(
    serve_factory: ServeFactory, unstarted: Unstarted, second_workers: int
) -> None:
    first = await serve_factory(workers=2, title="First")
    port = first.port
    second = unstarted(workers=second_workers, title="Second", port=port)
    code, stderr = await second.run_to_exit()
    assert code == 2
    assert stderr == [f"authproxy: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert [await title_of(first) for _ in range(20)] == ["First"] * 20
    # And no process can join the first one's port the way a second SO_REUSEPORT listener could.
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="in use"):
            intruder.bind(("127.0.0.1", port))


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_port_held_by_another_program_exits_2_with_one_line(
    unstarted: Unstarted, workers: int, reuse_port: bool
) -> None:
    with socket.socket() as foreign:
        # Even a listener that allows sharing is not joined: authproxy never asks to share.
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        code, stderr = await unstarted(workers=workers, port=port).run_to_exit()
    assert code == 2
    assert stderr == [f"authproxy: cannot listen on 127.0.0.1:{port}: address already in use"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_busy_metrics_port_exits_2_with_one_line(unstarted: Unstarted, workers: int) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        metrics = f"127.0.0.1:{foreign.getsockname()[1]}"
        served = unstarted(workers=workers, metrics=metrics)
        code, stderr = await served.run_to_exit()
    assert code == 2
    assert stderr == [f"authproxy: cannot listen on {metrics}: address already in use"]
    # The proxy port it had bound is free again.
    with socket.socket() as again:
        again.bind(("127.0.0.1", served.port))


async def _break_and_kill_a_worker(served: ServedProxy) -> None:
    """A worker that cannot start again: its config file now has an error, and it is killed."""
    for _ in range(100):  # both workers have read the good file
        if sum(event["event"] == "worker.ready" for event in served.events()) >= 2:
            break
        await asyncio.sleep(0.1)
    served.configure(server={"workers": "two"})
    os.kill(served.children()[0], signal.SIGKILL)


async def test_a_worker_that_keeps_failing_makes_the_supervisor_give_up_with_one_line(
    serve_factory: ServeFactory,
) -> None:
    served = await serve_factory(workers=2)
    assert served.process is not None
    started = asyncio.get_running_loop().time()
    await _break_and_kill_a_worker(served)
    assert await asyncio.wait_for(served.process.wait(), 60) == 1
    elapsed = asyncio.get_running_loop().time() - started
    events = served.events()
    died = [event for event in events if event["event"] == "worker.died"]
    [gave_up] = [event for event in events if event["event"] == "supervisor.giving_up"]
    assert len(died) == 5
    assert "invalid configuration: server.workers" in str(gave_up["cause"])
    assert "Traceback" not in served.log()
    # Restarted with growing pauses (0.5 + 1 + 2 + 5 s), not in a tight loop.
    assert elapsed > 8.5
    assert await served.group_gone()


@pytest.mark.parametrize("deaths", [1, 3])
async def test_sigterm_while_a_worker_is_being_restarted_stops_cleanly(
    serve_factory: ServeFactory, deaths: int
) -> None:
    served = await serve_factory(workers=2)
    assert served.process is not None
    await _break_and_kill_a_worker(served)
    for _ in range(200):
        if sum(event["event"] == "worker.died" for event in served.events()) >= deaths:
            break
        await asyncio.sleep(0.05)
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 15) == 0
    log = served.log()
    assert "Traceback" not in log and "supervisor.stopped" in log
    assert await served.group_gone()


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_during_start_up_never_leaves_a_traceback_or_a_process(
    serve_factory: ServeFactory, workers: int, delay: float
) -> None:
    served = await serve_factory(workers=workers, wait=False)
    assert served.process is not None
    await asyncio.sleep(delay)
    served.process.send_signal(signal.SIGTERM)
    # 0 once the handlers are installed; before that, the default action ends it as quietly.
    assert await asyncio.wait_for(served.process.wait(), 15) in (0, -signal.SIGTERM)
    assert await served.group_gone()
    assert "Traceback" not in served.log()
