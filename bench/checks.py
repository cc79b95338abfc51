"""The measurements that are not throughput or latency: session-check economy, memory, streaming.

- `burst`: fresh sessions each fire N concurrent requests, each on a connection of its own so that the
  kernel spreads them over every worker; the fake CentralAuth counts userinfo calls, which should be
  exactly one per burst however many workers took part (they meet at the check broker).
- `steady_state`: many (session, IP, UA) keys under continuous load for several TTLs; the fake's
  request log gives the calls per key, against the bound floor(duration / TTL) + 1.
- `sessions_memory`: N distinct sessions driven through one worker until its cache holds them all
  (its own gauge says so); RSS before, after and at peak.
- `streaming`: a GiB down and a GiB up through one worker; its peak RSS over its RSS before.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench import procstat, sessions, wrk
from bench.measure import userinfo_calls
from bench.servers import Server

CHUNK = 1 << 20


def burst(proxy: Server, login_url: str, idp_url: str, sessions_count: int, size: int) -> dict[str, Any]:
    async def one(number: int) -> int:
        cookie = await sessions.login(login_url)
        before = userinfo_calls(idp_url)
        # Another user agent than the login's: the login's own last request has cached its key.
        headers = {"Cookie": cookie, "User-Agent": f"bench-burst-{number}"}
        connector = aiohttp.TCPConnector(limit=size, force_close=True)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

            async def get() -> int:
                async with http.get(f"{proxy.url}/1k") as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(get() for _ in range(size)))
        if set(statuses) != {200}:
            raise RuntimeError(f"burst answered {Counter(statuses)}")
        return userinfo_calls(idp_url) - before

    async def all_bursts() -> list[int]:
        return [await one(number) for number in range(sessions_count)]

    calls = asyncio.run(all_bursts())
    return {"workers": proxy.workers, "burst": size, "sessions": sessions_count, "calls": calls}


def steady_state(
    proxy: Server,
    identity: sessions.Identity,
    idp_url: str,
    *,
    ttl: float,
    seconds: float,
    keys: tuple[int, int, int],
) -> dict[str, Any]:
    """`keys` = (sessions, client IPs, user agents); the proxy trusts X-Forwarded-For from loopback."""
    session_count, ips, agents = keys
    cookies = sessions.logins(identity.public_url, session_count)
    combos = [
        {"Cookie": cookie, "X-Forwarded-For": f"198.51.100.{ip + 1}", "User-Agent": f"bench-agent-{agent}"}
        for cookie in cookies
        for ip in range(ips)
        for agent in range(agents)
    ]
    _reset_request_log(idp_url)

    async def load() -> int:
        sent = 0
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as http:

            async def client(offset: int) -> None:
                nonlocal sent
                index = offset
                while time.monotonic() < deadline:
                    async with http.get(f"{proxy.url}/1k", headers=combos[index % len(combos)]) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"steady state answered {response.status}")
                    sent += 1
                    index += 1

            await asyncio.gather(*(client(offset) for offset in range(32)))
        return sent

    requests = asyncio.run(load())
    with urllib.request.urlopen(f"{idp_url}/_devidp/requests", timeout=10) as response:
        recorded = json.load(response)
    per_key = Counter(
        (entry["body"], entry["headers"].get("auth-ip"), entry["headers"].get("user-agent"))
        for entry in recorded
        if entry["path"] == "/api/v1/userinfo"
    )
    counts = [
        per_key.get((sessions.token_of(c["Cookie"], identity), c["X-Forwarded-For"], c["User-Agent"]), 0)
        for c in combos
    ]
    return {
        "workers": proxy.workers,
        "ttl_s": ttl,
        "seconds": seconds,
        "keys": len(combos),
        "requests": requests,
        "calls_per_key_max": max(counts),
        "calls_per_key_min": min(counts),
        "calls_total": sum(counts),
        "bound_per_key": math.floor(seconds / ttl) + 1,
    }


def _reset_request_log(idp_url: str) -> None:
    request = urllib.request.Request(f"{idp_url}/_devidp/requests", method="DELETE")
    with urllib.request.urlopen(request, timeout=10):
        pass


def sessions_memory(
    proxy: Server, metrics_url: str, cookies: Path, count: int, work: Path, seconds: int
) -> dict[str, Any]:
    worker = _single_worker(proxy)
    before = procstat.rss_mb(worker)
    procstat.reset_peak([worker])
    started = time.monotonic()
    requests = 0
    entries = 0
    for _ in range(6):
        result = wrk.run(
            f"{proxy.url}/1k",
            seconds=seconds,
            connections=64,
            threads=2,
            headers={"User-Agent": sessions.USER_AGENT},
            workdir=work,
            cookies=cookies,
            start=requests // 2,  # per wrk thread: carry on with the sessions not driven yet
        )
        requests += result.requests
        entries = _gauge(metrics_url, "authproxy_session_cache_entries")
        if entries >= count:
            break
    return {
        "sessions": count,
        "cache_entries": entries,
        "requests": requests,
        "seconds": round(time.monotonic() - started, 1),
        "rss_before_mb": before,
        "rss_after_mb": procstat.rss_mb(worker),
        "peak_rss_mb": procstat.peak_rss_mb(worker),
    }


def _gauge(metrics_url: str, name: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise RuntimeError(f"{name} is not among the metrics at {metrics_url}")


def _single_worker(proxy: Server) -> int:
    if proxy.workers != 1:
        raise ValueError("memory is measured on a single-worker proxy, whose process is the worker")
    return proxy.pid


def streaming(proxy: Server, cookie: str, size: int) -> dict[str, Any]:
    worker = _single_worker(proxy)
    headers = {"Cookie": cookie, "User-Agent": sessions.USER_AGENT}
    result: dict[str, Any] = {"bytes": size}
    for direction in ("download", "upload"):
        before = procstat.rss_mb(worker)
        procstat.reset_peak([worker])
        started = time.monotonic()
        move = _download if direction == "download" else _upload
        moved = move(proxy.port, headers, size)
        elapsed = time.monotonic() - started
        if moved != size:
            raise RuntimeError(f"{direction} moved {moved} of {size} bytes")
        peak = procstat.peak_rss_mb(worker)
        result[direction] = {
            "rss_before_mb": before,
            "peak_rss_mb": peak,
            "growth_mb": peak - before,
            "mib_per_s": size / elapsed / 2**20,
        }
    return result


def _download(port: int, headers: dict[str, str], size: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    # The upstream's file is a GiB; a Range asks for `size` bytes of it (all of it in a full run).
    connection.request("GET", "/1g", headers=headers | {"Range": f"bytes=0-{size - 1}"})
    response = connection.getresponse()
    received = 0
    while data := response.read(CHUNK):
        received += len(data)
    connection.close()
    return received


def _upload(port: int, headers: dict[str, str], size: int) -> int:
    block = b"u" * CHUNK

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            part = block[: min(CHUNK, size - sent)]
            sent += len(part)
            yield part

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/upload", body=body(), headers=headers, encode_chunked=True)
    response = connection.getresponse()
    received = int(json.loads(response.read())["received"])
    connection.close()
    return received
