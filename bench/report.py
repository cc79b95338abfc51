"""Turning samples into the results: medians and ranges, the targets, the JSON file and the tables.

Every repeated measurement is reported as its median with the range of its runs. Ratios between two
servers are computed twice: from the medians (the headline), and round by round from the runs that
were measured next to each other (their range shows how much the machine's noise moves the ratio).
A target is met or missed on the headline number; one that a mode does not measure is reported as
not measured, never as met.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

Runs = list[dict[str, float]]


def summary(runs: Runs) -> dict[str, dict[str, float]]:
    metrics = sorted({name for run in runs for name in run})
    return {
        name: {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
        for name in metrics
        if (values := [run[name] for run in runs if name in run])
    }


def ratio(
    results: dict[str, Any], section: str, top: str, bottom: str, metric: str
) -> dict[str, float] | None:
    """`top` over `bottom`: median over median, and the range of the per-round ratios."""
    cases = results[section]
    if top not in cases or bottom not in cases:
        return None
    high, low = cases[top]["runs"], cases[bottom]["runs"]
    paired = [a[metric] / b[metric] for a, b in zip(high, low, strict=False) if b[metric]]
    median_low = cases[bottom]["summary"][metric]["median"]
    return {
        "value": cases[top]["summary"][metric]["median"] / median_low if median_low else 0.0,
        "paired_min": min(paired, default=0.0),
        "paired_max": max(paired, default=0.0),
    }


def _target(name: str, goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for workers in (1, 2):
        found = ratio(results, "throughput", f"1k/authproxy-{workers}w", f"1k/bare-{workers}w", "rps")
        goal = "≥ 0.90× the bare aiohttp proxy (1 KiB, access log on)"
        rows.append(_ratio_row(f"cache-hit throughput, {workers} worker(s)", goal, found, 0.9))
    found = ratio(results, "throughput", "1k/authproxy-1w", "1k/bare-1w", "rps")
    rows.append(_ratio_row("stretch: cache-hit throughput, 1 worker", "≥ 1.0× bare", found, 1.0))
    latency = results["latency"]
    if "1conn/authproxy-1w" in latency and "1conn/upstream" in latency:
        added = (
            latency["1conn/authproxy-1w"]["summary"]["p50_ms"]["median"]
            - latency["1conn/upstream"]["summary"]["p50_ms"]["median"]
        )
        rows.append(_target("p50 added latency, 1 connection", "≤ 0.30 ms", f"{added:.3f} ms", added <= 0.3))
    checks = results["checks"]
    for burst in checks.get("burst", []):
        # With several workers too: their misses meet at the check broker, which sends one to CentralAuth.
        ones = sum(1 for calls in burst["calls"] if calls == 1)
        name = f"burst of {burst['burst']} concurrent requests, {burst['workers']} worker(s)"
        seen = f"{ones} of {burst['sessions']} bursts cost exactly 1 call (worst {max(burst['calls'])})"
        rows.append(_target(name, "exactly 1 userinfo call, every burst", seen, ones == burst["sessions"]))
    for steady in checks.get("steady_state", []):
        name = f"steady state, {steady['workers']} worker(s), TTL {steady['ttl_s']:g} s"
        allowed = steady["bound_per_key"] * steady["workers"]
        goal = f"≤ 1 call per key per TTL: ≤ {allowed} per key in {steady['seconds']:g} s"
        measured = f"max {steady['calls_per_key_max']} per key ({steady['keys']} keys)"
        rows.append(_target(name, goal, measured, steady["calls_per_key_max"] <= allowed))
    memory = checks.get("sessions_memory")
    if memory is not None:
        complete = memory["cache_entries"] >= 100_000
        measured = (
            f"{memory['rss_after_mb']:.0f} MB with {memory['cache_entries']:,} cached "
            f"(peak {memory['peak_rss_mb']:.0f} MB)"
        )
        met = memory["rss_after_mb"] <= 150 if complete else None
        rows.append(_target("100,000 cached sessions", "≤ 150 MB RSS per worker", measured, met))
    stream = checks.get("streaming")
    if stream is not None:
        full = stream["bytes"] >= 2**30
        for direction in ("download", "upload"):
            growth = stream[direction]["growth_mb"]
            name = f"1 GiB {direction} through one worker"
            met = growth <= 30 if full else None
            rows.append(
                _target(name, "RSS growth ≤ 30 MB", f"{growth:.1f} MB ({stream['bytes'] // 2**20} MiB)", met)
            )
    found = ratio(results, "throughput", "1k/authproxy-2w", "1k/authproxy-1w", "rps")
    rows.append(_ratio_row("two workers over one (cache hit)", "≥ 1.6×", found, 1.6))
    return rows


def _ratio_row(name: str, goal: str, found: dict[str, float] | None, bound: float) -> dict[str, Any]:
    if found is None:
        return _target(name, goal, "not measured in this mode", None)
    measured = f"{found['value']:.2f}× (rounds {found['paired_min']:.2f}–{found['paired_max']:.2f})"
    return _target(name, goal, measured, found["value"] >= bound)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
