"""The benchmark run: start the stack, log in, measure every case in interleaved rounds, write results.

Rounds interleave the servers (A B C …, then B C … A, …), so a slow minute on a shared machine
lands on all of them rather than on one. Throughput comes from wrk, latency from the fixed-rate
generator, and the session-check, memory and streaming checks run last, each on an instance of its
own. Everything listens on loopback and every run has a fixed duration, so a run ends by itself;
servers are stopped whatever happens.

    python -m bench                 # full: bench/results/latest.json and the tables in bench/README.md
    python -m bench --mode quick    # bench/results/quick.json and quick.md
    python -m bench --mode smoke --out DIR
    python -m bench --baseline DIR  # also authproxy from the source tree DIR, e.g. `git archive` of a commit
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bench import apache, checks, machine, measure, report, sessions, stack, tables, wrk
from bench.measure import Case
from bench.plan import PLANS, Plan

HERE = Path(__file__).resolve().parent

T = TypeVar("T")

APACHE_LABELS = {
    "apache-cookie": f"Apache + mod_auth_openidc, {apache.PROCESSES} processes, client-cookie session",
    "apache-shm": f"Apache + mod_auth_openidc, {apache.PROCESSES} processes, shm session cache",
}


def throughput_cases(plan: Plan, s: stack.Stack) -> list[Case]:
    upstream = s["nginx-upstream"]
    counts = (1, 2) if plan.two_workers else (1,)
    cases = [Case("1k/upstream", "nginx upstream, direct (no proxy)", f"{upstream.url}/1k", upstream)]
    for workers in counts:
        ngx, bare, ap = s[f"nginx-{workers}w"], s[f"bare-{workers}w"], s[f"authproxy-{workers}w"]
        cases += [
            Case(f"1k/nginx-{workers}w", f"nginx proxy, {workers}w", f"{ngx.url}/1k", ngx, (upstream,)),
            Case(
                f"1k/bare-{workers}w", f"bare aiohttp proxy, {workers}w", f"{bare.url}/1k", bare, (upstream,)
            ),
            Case(
                f"1k/authproxy-{workers}w",
                f"authproxy, {workers}w, cache hit",
                f"{ap.url}/1k",
                ap,
                (upstream,),
            ),
        ]
    for name, label in APACHE_LABELS.items():
        if name in s:
            cases.append(Case(f"1k/{name}", label, f"{s[name].url}/1k", s[name], (upstream,)))
    if "authproxy-baseline-1w" in s:
        base = s["authproxy-baseline-1w"]
        label = "authproxy before (baseline source), 1w, cache hit"
        cases.append(Case("1k/authproxy-baseline-1w", label, f"{base.url}/1k", base, (upstream,)))
    if "authproxy-tracing-1w" in s:
        traced = s["authproxy-tracing-1w"]
        label = "authproxy, 1w, cache hit, tracing on (every span exported)"
        cases.append(
            Case("1k/authproxy-tracing-1w", label, f"{traced.url}/1k", traced, (upstream, s["sink"]))
        )
    cold = s["authproxy-cold-1w"]
    label = "authproxy, 1w, cold (userinfo every request)"
    cases.append(Case("1k/authproxy-cold-1w", label, f"{cold.url}/1k", cold, (upstream, s["devidp"])))
    if plan.large_responses:
        for name in ("nginx-1w", "bare-1w", "authproxy-1w"):
            server = s[name]
            label = next(case.label for case in cases if case.key == f"1k/{name}").replace(", cache hit", "")
            cases.append(Case(f"1m/{name}", f"1 MiB: {label}", f"{server.url}/1m", server, (upstream,), 16))
    return cases


def latency_cases(plan: Plan, s: stack.Stack) -> list[tuple[Case, int, float]]:
    upstream, sink = s["nginx-upstream"], s["sink"]
    one = ["nginx-1w", "bare-1w", "authproxy-1w", "authproxy-cold-1w"]
    loaded = ["nginx-1w", "bare-1w", "authproxy-1w"]
    if "authproxy-baseline-1w" in s:
        one.insert(3, "authproxy-baseline-1w")
    peers = [name for name in APACHE_LABELS if name in s]
    one, loaded = one + peers, loaded + peers
    if plan.mode == "smoke":
        one, loaded = ["authproxy-1w"], ["authproxy-1w"]
    direct = Case("1conn/upstream", "nginx upstream, direct", f"{upstream.url}/1k", upstream)
    alone = Case("1conn/aiohttp", "aiohttp server alone (1 KiB from memory)", f"{sink.url}/1k", sink)
    cases = [(direct, 1, plan.latency_rate), (alone, 1, plan.latency_rate)]
    for name in one:
        cases.append((Case(f"1conn/{name}", name, f"{s[name].url}/1k", s[name]), 1, plan.latency_rate))
    connections, rate = plan.loaded_latency
    for name in loaded:
        cases.append((Case(f"loaded/{name}", name, f"{s[name].url}/1k", s[name]), connections, rate))
    return cases


def _rotated(items: list[T], by: int) -> list[T]:
    by %= len(items)
    return items[by:] + items[:by]


def _cookies_for(case: Case, cookies: Path, count: int, work: Path) -> Path:
    """The run's sessions; for Apache, `count` fresh sign-ins made just now.

    mod_auth_openidc saves a session again (a Set-Cookie with client-cookie sessions) once its last save
    is a minute old, and wrk would keep sending the old cookie: each run gets sessions of its own.
    """
    if case.server.name in apache.VARIANTS:
        return apache.cookie_file(case.server, count, sessions.USER_AGENT, work)
    return cookies


def _throughput(
    case: Case, plan: Plan, headers: dict[str, str], work: Path, cookies: Path, idp_url: str
) -> dict[str, float]:
    fresh = _cookies_for(case, cookies, plan.sessions, work)  # before the metered run starts
    return measure.throughput(case, plan.seconds, headers, work, fresh, idp_url)


def run_throughput(plan: Plan, cases: list[Case], cookies: Path, work: Path, idp_url: str) -> dict[str, Any]:
    headers = {"User-Agent": sessions.USER_AGENT}
    if plan.warmup:
        for case in cases:
            wrk.run(
                case.url,
                seconds=plan.warmup,
                connections=case.connections,
                threads=case.threads,
                headers=headers,
                workdir=work,
                cookies=_cookies_for(case, cookies, plan.sessions, work),
            )
    runs: dict[str, list[dict[str, float]]] = {case.key: [] for case in cases}
    for number in range(plan.rounds):
        for case in _rotated(cases, number):
            sample = measure.repeat_while_disturbed(
                functools.partial(_throughput, case, plan, headers, work, cookies, idp_url)
            )
            runs[case.key].append(sample)
    return {
        case.key: {
            "label": case.label,
            "connections": case.connections,
            "summary": report.summary(runs[case.key]),
            "runs": runs[case.key],
        }
        for case in cases
    }


def _latency(
    case: Case, rate: float, connections: int, plan: Plan, cookie: str, idp_url: str, work: Path
) -> dict[str, float]:
    if case.server.name in apache.VARIANTS:  # a fresh sign-in, as for throughput
        cookie = apache.sign_in(case.server.url, 1, sessions.USER_AGENT, apache.ca_file(work))[0]
    headers = {"User-Agent": sessions.USER_AGENT, "Cookie": cookie}
    return measure.latency(case, rate, connections, plan.latency_seconds, headers, idp_url)


def run_latency(
    plan: Plan, cases: list[tuple[Case, int, float]], cookie: str, idp_url: str, work: Path
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {case.key: [] for case, _, _ in cases}
    for number in range(plan.rounds):
        for case, connections, rate in _rotated(cases, number):
            sample = measure.repeat_while_disturbed(
                functools.partial(_latency, case, rate, connections, plan, cookie, idp_url, work)
            )
            runs[case.key].append(sample)
    return {
        case.key: {
            "label": case.label,
            "load": f"{rate:g} req/s over {connections} connection(s)",
            "summary": report.summary(runs[case.key]),
            "runs": runs[case.key],
        }
        for case, connections, rate in cases
    }


def run_checks(plan: Plan, s: stack.Stack, cookie: str, work: Path) -> dict[str, Any]:
    idp = s["devidp"].url
    login_url = s.identity.public_url
    counts = (1, 2) if plan.two_workers else (1,)
    results: dict[str, Any] = {
        "burst": [
            checks.burst(s[f"authproxy-{w}w"], login_url, idp, plan.burst_sessions, plan.burst_size)
            for w in counts
        ],
        "steady_state": [
            checks.steady_state(
                s[f"authproxy-ttl-{w}w"],
                s.identity,
                idp,
                ttl=plan.steady_ttl,
                seconds=plan.steady_seconds,
                keys=plan.steady_keys,
            )
            for w in counts
        ],
    }
    length = len(sessions.token_of(cookie, s.identity))
    minted = sessions.mint_cookies(work / "minted-cookies.txt", plan.memory_sessions, s.identity, length)
    results["sessions_memory"] = checks.sessions_memory(
        s["authproxy-mem-1w"], s.mem_metrics_url, minted, plan.memory_sessions, work, plan.memory_seconds
    ) | {"token_length": length}
    results["streaming"] = checks.streaming(s["authproxy-1w"], cookie, plan.stream_bytes)
    return results


def run(plan: Plan, work: Path, baseline: Path | None = None, tracing: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    contention = machine.Contention()
    results: dict[str, Any] = {
        "mode": plan.mode,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.describe(),
        "load_average": {"start": machine.load_average()},
        "settings": plan.settings() | {"wrk": "2 threads; 64 connections (1 KiB), 16 (1 MiB)"},
    }
    s = stack.build(plan, work, baseline, tracing)
    if any(name in s for name in apache.VARIANTS):
        results["machine"]["apache"] = apache.version()
    s.start()
    try:
        cookies = sessions.logins(s.identity.public_url, plan.sessions)
        cookie_file = work / "sessions.txt"
        cookie_file.write_text("\n".join(cookies) + "\n")
        idp = s["devidp"].url
        results["throughput"] = run_throughput(plan, throughput_cases(plan, s), cookie_file, work, idp)
        results["latency"] = run_latency(plan, latency_cases(plan, s), cookies[0], idp, work)
        results["checks"] = run_checks(plan, s, cookies[0], work)
    finally:
        s.stop()
    results["load_average"]["end"] = machine.load_average()
    results["duration_s"] = time.monotonic() - started
    results["contention"] = contention.result(results["duration_s"])
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        choices=[*sorted(PLANS), "forward-auth"],
        default="full",
        help="forward-auth: only nginx auth_request with its answer cache (bench/forward_auth.py)",
    )
    parser.add_argument("--out", type=Path, help="directory for the results (default: bench/results)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    parser.add_argument(
        "--baseline", type=Path, help="a source tree (e.g. `git archive` of an older commit) to compare with"
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also authproxy-1w with [tracing] on, exporting to a local sink (the cost of tracing)",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
    work.chmod(0o755)  # nginx's workers (an unprivileged user under root) read the data files
    if args.mode == "forward-auth":
        from bench import forward_auth  # only this mode needs it

        try:
            return forward_auth.main(args.out or HERE / "results", work)
        finally:
            if args.keep:
                print(f"work directory kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    plan = PLANS[args.mode]
    try:
        results = run(plan, work, args.baseline, args.tracing)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or HERE / "results"
    name = "latest" if plan.mode == "full" else plan.mode
    report.write_json(results, out / f"{name}.json")
    markdown = tables.render(results)
    if plan.mode == "full" and args.out is None:
        tables.update_readme(HERE / "README.md", markdown)
    else:
        (out / f"{name}.md").write_text(markdown)
    print(markdown)
    return 0
