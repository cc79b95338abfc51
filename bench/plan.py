"""How much to measure: the full run (`make bench`), a quick one (`BENCH_QUICK=1`), and the smoke test's.

Every mode runs the same code path; they differ in durations, repetitions and sizes. Only `full`
measures everything the targets name at the sizes they name; a smaller mode reports such a target as
not measured instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int  # every case is measured once per round; rounds interleave the servers
    seconds: int  # one wrk run
    warmup: int  # an unrecorded wrk run per case before the first round (0 = none)
    latency_seconds: float
    latency_rate: float  # requests per second on one connection
    loaded_latency: tuple[int, float]  # (connections, requests per second)
    sessions: int  # real logins rotated through by the throughput runs
    two_workers: bool  # the 2-worker servers and the scaling target
    large_responses: bool  # the 1 MiB cases
    burst_sessions: int
    burst_size: int
    steady_ttl: float
    steady_seconds: float
    steady_keys: tuple[int, int, int]  # sessions, client IPs, user agents
    memory_sessions: int
    memory_seconds: int  # one wrk run while filling the cache (repeated until it is full)
    stream_bytes: int
    # Apache httpd + mod_auth_openidc as a peer (bench/apache.py), when apache2 and the module are
    # installed: its throughput cases (and latency), and the targets that compare authproxy with it.
    apache: bool = False

    def settings(self) -> dict[str, Any]:
        return asdict(self)


PLANS = {
    "full": Plan(
        mode="full",
        rounds=3,
        seconds=8,
        warmup=2,
        latency_seconds=6.0,
        latency_rate=200.0,
        loaded_latency=(16, 2000.0),
        sessions=64,
        two_workers=True,
        large_responses=True,
        burst_sessions=10,
        burst_size=30,
        steady_ttl=2.0,
        steady_seconds=10.0,
        steady_keys=(4, 2, 2),
        memory_sessions=100_000,
        memory_seconds=20,
        stream_bytes=GIB,
        apache=True,
    ),
    "quick": Plan(
        mode="quick",
        rounds=2,
        seconds=3,
        warmup=1,
        latency_seconds=3.0,
        latency_rate=200.0,
        loaded_latency=(16, 2000.0),
        sessions=16,
        two_workers=True,
        large_responses=False,
        burst_sessions=3,
        burst_size=30,
        steady_ttl=1.0,
        steady_seconds=4.0,
        steady_keys=(2, 2, 2),
        memory_sessions=100_000,
        memory_seconds=15,
        stream_bytes=GIB,
        apache=True,
    ),
    "smoke": Plan(
        mode="smoke",
        rounds=1,
        seconds=1,
        warmup=0,
        latency_seconds=1.0,
        latency_rate=100.0,
        loaded_latency=(2, 200.0),
        sessions=2,
        two_workers=False,
        large_responses=False,
        burst_sessions=1,
        burst_size=10,
        steady_ttl=1.0,
        steady_seconds=2.0,
        steady_keys=(1, 1, 2),
        memory_sessions=300,
        memory_seconds=1,
        stream_bytes=8 * 2**20,
    ),
}
