"""One measured run against one server: load from wrk or the fixed-rate generator, cost from /proc.

A `Case` names what is loaded (a URL) and which process trees are metered: the server under test,
plus helpers whose cost belongs to the same requests (the upstream; the fake CentralAuth on the cold
path). Each run resets peak RSS, reads CPU before and after, and reads the fake's userinfo counter
before and after, so every sample says what it cost and how many session checks it caused.

Each run also says how much CPU went to processes that are not part of it (`foreign_cores`: the
machine's busy time, less the metered servers, the load generator and the harness). On a shared
machine a burst of someone else's work can halve a run's throughput; `repeat_while_disturbed` measures
such a run again, up to twice, and the samples keep the number so the report can show it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine, procstat, wrk
from bench.servers import Server

# Other processes' CPU above which a run is measured again: 0.1 cores is 5 % of this machine.
DISTURBED_CORES = 0.1
RETRIES = 2


@dataclass(frozen=True)
class Case:
    key: str  # "1k/authproxy-1w", stable across runs: the JSON and the README use it
    label: str
    url: str
    server: Server
    helpers: tuple[Server, ...] = ()
    connections: int = 64
    threads: int = 2


def userinfo_calls(idp_url: str | None) -> int:
    if idp_url is None:
        return 0
    with urllib.request.urlopen(f"{idp_url}/_devidp/stats", timeout=10) as response:
        return int(json.load(response)["userinfo"])


class _Metered:
    """CPU and peak RSS of the case's trees, and userinfo calls, around one load run."""

    def __init__(self, case: Case, idp_url: str | None) -> None:
        self.case = case
        self.idp_url = idp_url
        self.server = procstat.Meter(case.server.pid)
        self.helpers = [procstat.Meter(helper.pid) for helper in case.helpers]

    def __enter__(self) -> _Metered:
        self.calls = userinfo_calls(self.idp_url)
        self.server.start()
        for meter in self.helpers:
            meter.start()
        self.started = time.monotonic()
        self.busy, self.own = machine.machine_seconds()[0], machine.own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own = machine.machine_seconds()[0] - self.busy, machine.own_seconds() - self.own
        elapsed = time.monotonic() - self.started
        self.usage = self.server.stop()
        self.helper_usage = [meter.stop() for meter in self.helpers]
        self.calls = userinfo_calls(self.idp_url) - self.calls
        metered = self.usage.cpu_seconds + sum(usage.cpu_seconds for usage in self.helper_usage)
        self.foreign_cores = max(0.0, busy - metered - own) / elapsed if elapsed else 0.0

    def values(self, requests: int) -> dict[str, float]:
        per = 1e6 / requests if requests else 0.0
        values = {
            "cpu_us_per_request": self.usage.cpu_seconds * per,
            "peak_rss_mb": self.usage.peak_rss_mb,
            "userinfo_calls_per_request": self.calls / requests if requests else 0.0,
            "foreign_cores": self.foreign_cores,
        }
        for helper, usage in zip(self.case.helpers, self.helper_usage, strict=True):
            values[f"{helper.name}_cpu_us_per_request"] = usage.cpu_seconds * per
        return values


def throughput(
    case: Case, seconds: int, headers: dict[str, str], work: Path, cookies: Path | None, idp_url: str | None
) -> dict[str, float]:
    with _Metered(case, idp_url) as metered:
        result = wrk.run(
            case.url,
            seconds=seconds,
            connections=case.connections,
            threads=case.threads,
            headers=headers,
            workdir=work,
            cookies=cookies,
        )
    return {
        "rps": result.rps,
        "server_cores": metered.usage.cpu_seconds / result.seconds if result.seconds else 0.0,
        "mib_per_s": result.bytes / result.seconds / 2**20 if result.seconds else 0.0,
        "errors": float(result.socket_errors),
        "non2xx": float(result.non2xx),
        **metered.values(result.requests),
    }


def latency(
    case: Case, rate: float, connections: int, seconds: float, headers: dict[str, str], idp_url: str | None
) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.loadgen", case.url, "--rate", str(rate)]
    command += ["--connections", str(connections), "--seconds", str(seconds)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    with _Metered(case, idp_url) as metered:
        completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60)
    result: dict[str, Any] = json.loads(completed.stdout)
    values = {key: float(result[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")}
    values |= {"errors": float(result["errors"]), "non2xx": float(result["non2xx"])}
    values |= metered.values(int(result["requests"]))
    return values


def repeat_while_disturbed(measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run `measure` again while other processes took a noticeable share of the machine."""
    sample = measure()
    for attempt in range(1, RETRIES + 1):
        if sample["foreign_cores"] <= DISTURBED_CORES:
            break
        sample = measure() | {"repeats": float(attempt)}
    return sample
