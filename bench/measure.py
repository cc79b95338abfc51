"""One measured run against one server: load from wrk or the fixed-rate generator, cost from /proc.

A `Case` names what is loaded (a URL) and which process trees are metered: the server under test,
plus helpers whose cost belongs to the same requests (the upstream; the fake CentralAuth on the cold
path). Each run resets peak RSS, reads CPU before and after, and reads the fake's userinfo counter
before and after, so every sample says what it cost and how many session checks it caused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat, wrk
from bench.servers import Server


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
        return self

    def __exit__(self, *exc: object) -> None:
        self.usage = self.server.stop()
        self.helper_usage = [meter.stop() for meter in self.helpers]
        self.calls = userinfo_calls(self.idp_url) - self.calls

    def values(self, requests: int) -> dict[str, float]:
        per = 1e6 / requests if requests else 0.0
        values = {
            "cpu_us_per_request": self.usage.cpu_seconds * per,
            "peak_rss_mb": self.usage.peak_rss_mb,
            "userinfo_calls_per_request": self.calls / requests if requests else 0.0,
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
