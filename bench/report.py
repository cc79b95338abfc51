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
    throughput, latency = results["throughput"], results["latency"]
    found = ratio(results, "throughput", "1k/authproxy-1w", "1k/bare-1w", "rps")
    goal = "≥ 1.15× the bare aiohttp proxy (1 KiB, access log on)"
    rows.append(_ratio_row("cache-hit throughput, 1 worker", goal, found, 1.15))
    if "1conn/authproxy-1w" in latency and "1conn/upstream" in latency:
        added = (
            latency["1conn/authproxy-1w"]["summary"]["p50_ms"]["median"]
            - latency["1conn/upstream"]["summary"]["p50_ms"]["median"]
        )
        name = "p50 added latency, 1 connection, 200 req/s"
        rows.append(_target(name, "≤ 0.30 ms over the upstream alone", f"{added:.3f} ms", added <= 0.3))
    if "loaded/authproxy-1w" in latency and "loaded/bare-1w" in latency:
        ours = latency["loaded/authproxy-1w"]["summary"]["p99_ms"]["median"]
        theirs = latency["loaded/bare-1w"]["summary"]["p99_ms"]["median"]
        connections, rate = results["settings"]["loaded_latency"]
        name = f"p99 latency, {connections} connections, {rate:g} req/s"
        rows.append(_target(name, "≤ the bare proxy's p99", f"{ours:.3f} vs {theirs:.3f} ms", ours <= theirs))
    if "1k/authproxy-2w" in throughput:
        one = throughput["1k/authproxy-1w"]["summary"]["cpu_us_per_request"]["median"]
        two = throughput["1k/authproxy-2w"]["summary"]["cpu_us_per_request"]["median"]
        measured = f"{two / one:.2f}× ({two:.0f} vs {one:.0f} µs)"
        rows.append(_target("CPU per request, 2 workers over 1", "≤ 1.10×", measured, two <= 1.10 * one))
        ours = ratio(results, "throughput", "1k/authproxy-2w", "1k/authproxy-1w", "rps")
        bare = ratio(results, "throughput", "1k/bare-2w", "1k/bare-1w", "rps")
        if ours is not None and bare is not None:
            goal = f"≥ the bare proxy's on this run ({bare['value']:.2f}×)"
            rows.append(_ratio_row("throughput, 2 workers over 1", goal, ours, bare["value"]))
        rows.append(_ratio_row("stretch: throughput, 2 workers over 1", "≥ 1.6×", ours, 1.6))
    if "1k/authproxy-cold-1w" in throughput:
        cold = throughput["1k/authproxy-cold-1w"]["summary"]
        hit = throughput["1k/authproxy-1w"]["summary"]["cpu_us_per_request"]["median"]
        mine = cold["cpu_us_per_request"]["median"]
        fake = cold.get("devidp_cpu_us_per_request", {}).get("median")
        measured = f"{mine / hit:.2f}× ({mine:.0f} vs {hit:.0f} µs"
        measured += f"; the fake CentralAuth {fake:.0f} µs apart)" if fake is not None else ")"
        name = "cold path CPU per request (userinfo every request)"
        rows.append(_target(name, "≤ 1.6× the cache-hit CPU per request", measured, mine <= 1.6 * hit))
    checks = results["checks"]
    for burst in checks.get("burst", []):
        # With several workers too: their misses meet at the check broker, which sends one to CentralAuth.
        ones = sum(1 for calls in burst["calls"] if calls == 1)
        name = f"burst of {burst['burst']} concurrent requests, {burst['workers']} worker(s)"
        seen = f"{ones} of {burst['sessions']} bursts cost exactly 1 call (worst {max(burst['calls'])})"
        rows.append(_target(name, "exactly 1 userinfo call, every burst", seen, ones == burst["sessions"]))
    for steady in checks.get("steady_state", []):
        name = f"steady state, {steady['workers']} worker(s), TTL {steady['ttl_s']:g} s"
        allowed = steady["bound_per_key"]
        goal = f"≤ 1 call per key per TTL: ≤ {allowed} per key in {steady['seconds']:g} s"
        measured = f"max {steady['calls_per_key_max']} per key ({steady['keys']} keys)"
        rows.append(_target(name, goal, measured, steady["calls_per_key_max"] <= allowed))
    memory = checks.get("sessions_memory")
    if memory is not None:
        complete = memory["cache_entries"] >= 100_000
        measured = (
            f"{memory['rss_after_mb']:.0f} MB with {memory['cache_entries']:,} cached "
            f"(peak {memory['peak_rss_mb']:.0f} MB; {memory['rss_before_mb']:.0f} MB before)"
        )
        met = memory["rss_after_mb"] <= 100 if complete else None
        rows.append(_target("100,000 cached sessions", "≤ 100 MB RSS per worker", measured, met))
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
    if "1k/authproxy-tracing-1w" in throughput:
        on = throughput["1k/authproxy-tracing-1w"]["summary"]["cpu_us_per_request"]["median"]
        off = throughput["1k/authproxy-1w"]["summary"]["cpu_us_per_request"]["median"]
        measured = f"+{on - off:.0f} µs per request ({on:.0f} vs {off:.0f} µs with it off)"
        rows.append(_target("tracing on, every span exported (the cost)", "reported", measured, None))
    rows += _peer_rows(results)
    return rows


PEERS = ("1k/apache-cookie", "1k/apache-shm")  # Apache + mod_auth_openidc, its two session stores


def _best_peer(results: dict[str, Any], metric: str, lowest: bool) -> str | None:
    """The Apache variant with the best median `metric` in this run (None when none was measured)."""
    cases = results["throughput"]
    found = [key for key in PEERS if key in cases and metric in cases[key]["summary"]]
    if not found:
        return None
    medians = {key: cases[key]["summary"][metric]["median"] for key in found}
    return min(medians, key=medians.__getitem__) if lowest else max(medians, key=medians.__getitem__)


def _peer_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """authproxy against Apache + mod_auth_openidc's best variant of the same run."""
    cases = results["throughput"]
    name = "cache-hit CPU per request, 1 worker, vs mod_auth_openidc"
    goal = "≤ 0.85× mod_auth_openidc's (best variant)"
    best = _best_peer(results, "cpu_us_per_request", lowest=True)
    found = ratio(results, "throughput", "1k/authproxy-1w", best, "cpu_us_per_request") if best else None
    if best is None or found is None:
        rows = [_target(name, goal, "not measured in this mode", None)]
    else:
        ours = cases["1k/authproxy-1w"]["summary"]["cpu_us_per_request"]["median"]
        theirs = cases[best]["summary"]["cpu_us_per_request"]["median"]
        measured = (
            f"{found['value']:.2f}× ({ours:.0f} vs {theirs:.0f} µs; "
            f"rounds {found['paired_min']:.2f}–{found['paired_max']:.2f})"
        )
        two = ratio(results, "throughput", "1k/authproxy-2w", best, "cpu_us_per_request")
        if two is not None:
            measured += f"; with 2 workers {two['value']:.2f}×"
        goal = f"≤ 0.85× mod_auth_openidc's (best variant: {best.removeprefix('1k/')})"
        rows = [_target(name, goal, measured, found["value"] <= 0.85)]
    goal = "≥ 1.2× mod_auth_openidc's (best variant)"
    best = _best_peer(results, "rps", lowest=False)
    found = ratio(results, "throughput", "1k/authproxy-2w", best, "rps") if best else None
    if best is not None and found is not None:
        goal = f"≥ 1.2× mod_auth_openidc's (best variant: {best.removeprefix('1k/')})"
    rows.append(_ratio_row("throughput with 2 workers vs mod_auth_openidc", goal, found, 1.2))
    return rows


def _ratio_row(name: str, goal: str, found: dict[str, float] | None, bound: float) -> dict[str, Any]:
    if found is None:
        return _target(name, goal, "not measured in this mode", None)
    measured = f"{found['value']:.2f}× (rounds {found['paired_min']:.2f}–{found['paired_max']:.2f})"
    return _target(name, goal, measured, found["value"] >= bound)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
