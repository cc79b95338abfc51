"""The Markdown tables of a run, as `bench/README.md` shows them between its results markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"


def _cell(summary: dict[str, dict[str, float]], metric: str, digits: int = 0) -> str:
    if metric not in summary:
        return "–"
    value = summary[metric]
    if value["min"] == value["max"]:
        return f"{value['median']:,.{digits}f}"
    return f"{value['median']:,.{digits}f} ({value['min']:,.{digits}f}–{value['max']:,.{digits}f})"


def _met(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    contention = results["contention"]
    peer = f", {machine['apache']}" if "apache" in machine else ""
    lines = [
        f"Run: `{results['mode']}` mode, {results['started']}, {results['duration_s']:.0f} s. "
        f"Machine: {machine['cpu']}, {machine['cores']} cores"
        f"{' (virtual machine)' if machine['virtualised'] else ''}, {machine['memory_gib']} GiB, "
        f"{machine['os']}, Linux {machine['kernel']}, Python {machine['python']}, "
        f"aiohttp {machine['packages']['aiohttp']}, uvloop {machine['packages']['uvloop']}, "
        f"httptools {machine['packages']['httptools']}, {machine['nginx']}, {machine['wrk']}{peer}. "
        f"Other processes used {contention['other_cores_average']:.2f} cores on average during the run "
        f"({contention['other_cpu_seconds']:.0f} CPU s; hypervisor steal "
        f"{contention['steal_seconds']:.0f} s). {_disturbance(results)}",
        "",
        "### Targets",
        "",
        "| Target | Goal | Measured | Result |",
        "| --- | --- | --- | --- |",
    ]
    for row in results["targets"]:
        result = "reported" if row["goal"] == "reported" else _met(row["met"])
        lines.append(f"| {row['target']} | {row['goal']} | {row['measured']} | {result} |")
    lines += [
        "",
        f"### Throughput (wrk, closed loop, {settings['seconds']} s runs × {settings['rounds']} rounds; "
        "median, range in parentheses)",
        "",
        "| Case | req/s | MiB/s | server CPU µs/req | server cores | upstream CPU µs/req "
        "| fake CentralAuth CPU µs/req | peak RSS MB | userinfo calls/req | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in results["throughput"].values():
        s = case["summary"]
        lines.append(
            f"| {case['label']} | {_cell(s, 'rps')} | {_cell(s, 'mib_per_s')} "
            f"| {_cell(s, 'cpu_us_per_request')} | {_cell(s, 'server_cores', 2)} "
            f"| {_cell(s, 'nginx-upstream_cpu_us_per_request')} "
            f"| {_cell(s, 'devidp_cpu_us_per_request')} | {_cell(s, 'peak_rss_mb')} "
            f"| {_cell(s, 'userinfo_calls_per_request', 3)} | {_errors(s)} |"
        )
    lines += [
        "",
        f"### Latency (fixed-rate generator, measured from each request's intended send time; "
        f"{settings['latency_seconds']:g} s runs × {settings['rounds']} rounds; ms)",
        "",
        "| Case | load | p50 | p90 | p99 | p99.9 | max | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in results["latency"].values():
        s = case["summary"]
        lines.append(
            f"| {case['label']} | {case['load']} | {_cell(s, 'p50_ms', 3)} | {_cell(s, 'p90_ms', 3)} "
            f"| {_cell(s, 'p99_ms', 3)} | {_cell(s, 'p999_ms', 3)} | {_cell(s, 'max_ms', 2)} | {_errors(s)} |"
        )
    lines += ["", *_checks(results["checks"])]
    return "\n".join(lines) + "\n"


def _disturbance(results: dict[str, Any]) -> str:
    runs = [
        run
        for section in ("throughput", "latency")
        for case in results[section].values()
        for run in case["runs"]
    ]
    repeated = sum(1 for run in runs if run.get("repeats"))
    foreign = sorted(run.get("foreign_cores", 0.0) for run in runs)
    if not foreign:
        return ""
    return (
        f"{repeated} of {len(runs)} runs were measured again because other processes took over 0.1 cores; "
        f"in the runs kept they took {foreign[len(foreign) // 2]:.2f} cores (median), "
        f"{foreign[-1]:.2f} at most."
    )


def _errors(summary: dict[str, dict[str, float]]) -> str:
    worst = max(summary.get("errors", {}).get("max", 0), summary.get("non2xx", {}).get("max", 0))
    return "0" if not worst else f"**{worst:.0f}**"


def _checks(checks: dict[str, Any]) -> list[str]:
    lines = ["### Session checks, memory, streaming", ""]
    for burst in checks.get("burst", []):
        lines.append(
            f"- Burst, {burst['workers']} worker(s): {burst['sessions']} fresh sessions × {burst['burst']} "
            f"concurrent requests → userinfo calls per burst: {burst['calls']}."
        )
    for steady in checks.get("steady_state", []):
        lines.append(
            f"- Steady state, {steady['workers']} worker(s): {steady['keys']} (session, IP, UA) keys, "
            f"{steady['requests']:,} requests in {steady['seconds']:g} s at TTL {steady['ttl_s']:g} s → "
            f"{steady['calls_total']} userinfo calls, "
            f"{steady['calls_per_key_min']}–{steady['calls_per_key_max']} per key "
            f"(bound per worker: {steady['bound_per_key']})."
        )
    memory = checks.get("sessions_memory")
    if memory is not None:
        lines.append(
            f"- {memory['sessions']:,} distinct sessions through one worker "
            f"({memory['requests']:,} requests, {memory['seconds']:g} s): "
            f"{memory['cache_entries']:,} cached; RSS {memory['rss_before_mb']:.0f} MB before, "
            f"{memory['rss_after_mb']:.0f} MB after, peak {memory['peak_rss_mb']:.0f} MB."
        )
    stream = checks.get("streaming")
    if stream is not None:
        for direction in ("download", "upload"):
            one = stream[direction]
            lines.append(
                f"- {stream['bytes'] // 2**20:,} MiB {direction} through one worker at "
                f"{one['mib_per_s']:.0f} MiB/s: RSS {one['rss_before_mb']:.0f} MB before, "
                f"peak {one['peak_rss_mb']:.0f} MB (growth {one['growth_mb']:.1f} MB)."
            )
    return lines


def update_readme(path: Path, tables: str) -> None:
    """Replace what lies between the results markers of `path` with `tables`."""
    text = path.read_text()
    head, found, rest = text.partition(START)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"{path} has no {START} ... {END} section")
    path.write_text(f"{head}{START}\n{tables}{END}{tail}")
