"""Soak test: `authproxy serve` under a realistic mix for minutes, with injected CentralAuth faults.

Starts three real processes on loopback — the fake CentralAuth (`authproxy devidp`), the demo "whoami"
upstream and the proxy (`authproxy serve`) — measures what the whole set-up sustains with a short
closed-loop burst, then drives an open-loop load at a fraction of that (70 % by default) for the given
time. The mix: cached session checks, cache misses (a pool of users each seen less often than the check
TTL), complete logins, sign-outs, websocket echoes, 1 MiB downloads, anonymous API calls and liveness
probes. About 1 % of operations also queue a CentralAuth fault (503, 429, 500, a dropped connection or
an answer slower than the proxy's timeout) for the next userinfo call.

Before that, 10 000 one-off logins fill the proxy's bounded per-session caches (the unsealed-cookie
memo holds 10 000 sessions), so that RSS growth during the soak points at a leak, not at a cache
reaching its bound.

Every answer is classified: `ok`; `outage_503` (the proxy's 503 for CentralAuth being down: expected,
at most one per injected fault); `session_lost` (a signed-in user sent to sign in again); `unexpected_5xx`;
`unexpected_status`; `client_error` (the load generator's own connection or timeout failures). The
proxy's RSS is sampled every few seconds; growth is measured from the end of the warm-up.

Pass criteria: no `unexpected_5xx`; no `session_lost`, during the run or when every signed-in user is
checked once more after it; no more failed userinfo calls than faults used (one fault fails one call,
and every request sharing that call gets its 503); no traceback in the proxy's log; RSS growth after
the warm-up under 5 %.

    python soak/soak.py --seconds 600            # what `make soak` runs (SOAK_SECONDS overrides)
    python soak/soak.py --seconds 120 --rate 400 # skip the capacity measurement
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36 soak"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
JSON_ACCEPT = "application/json"
CHECK_TTL = 2.0  # the proxy's session_check_ttl here: short, so that cold users really miss the cache
CENTRALAUTH_TIMEOUT = 1.0
MIX = {  # operation -> share of all operations
    "cached_check": 0.55,
    "cache_miss": 0.15,
    "login": 0.01,
    "sign_out": 0.005,
    "websocket": 0.05,
    "download": 0.04,
    "anonymous": 0.10,
    "ping": 0.08,
}
RNG = random.SystemRandom()
FAULTS: list[dict[str, float]] = [  # bodies for the fake's /_devidp/faults
    {"status": 503},
    {"status": 429},
    {"status": 500},
    {"status": 0},
    {"delay": CENTRALAUTH_TIMEOUT + 0.5},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the processes under test ----------------------------------------------------------------------


def serve_upstream(port: int) -> None:
    """The demo app behind the proxy (identity echo, websocket echo, downloads), in its own process."""
    from authproxy.demo import whoami

    web.run_app(whoami.make_app(), host="127.0.0.1", port=port, access_log=None, print=None)


@dataclass
class Stack:
    proxy_url: str
    idp_url: str
    metrics_url: str
    proxy: asyncio.subprocess.Process
    others: list[asyncio.subprocess.Process]
    directory: Path

    def proxy_pids(self) -> list[int]:
        """The serve process and, with several workers, its children (not multiprocessing helpers)."""
        pids = [self.proxy.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proxy.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                    if b"resource_tracker" not in cmdline:
                        pids.append(int(child))
        return pids

    def rss_mb(self) -> float:
        total = 0
        for pid in self.proxy_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    async def stop(self) -> None:
        for process in [self.proxy, *self.others]:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in [self.proxy, *self.others]:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


async def start_stack(workers: int) -> Stack:
    directory = Path(tempfile.mkdtemp(prefix="authproxy-soak-"))
    idp_port, app_port, proxy_port, metrics_port = (free_port() for _ in range(4))
    client_id, client_secret = str(uuid.uuid4()), secrets.token_hex(32)
    python = sys.executable

    async def spawn(*args: str, log: str) -> asyncio.subprocess.Process:
        with (directory / log).open("wb") as out:
            return await asyncio.create_subprocess_exec(
                python, *args, stdout=out, stderr=out, start_new_session=True
            )

    idp = await spawn(
        "-m", "authproxy", "devidp", "--listen", f"127.0.0.1:{idp_port}",
        "--client-id", client_id, "--client-secret", client_secret, log="devidp.log",
    )  # fmt: skip
    app = await spawn(__file__, "upstream", "--port", str(app_port), log="upstream.log")
    config = directory / "authproxy.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{proxy_port}"
public_url = "http://127.0.0.1:{proxy_port}"
workers = {workers}
metrics_listen = "127.0.0.1:{metrics_port}"

[centralauth]
base_url = "http://127.0.0.1:{idp_port}"
client_id = "{client_id}"
client_secret = "{client_secret}"
session_check_ttl = {CHECK_TTL}
timeout = {CENTRALAUTH_TIMEOUT}

[session]
cookie_secrets = ["{secrets.token_urlsafe(32)}"]
cookie_secure = false

[[upstreams]]
url = "http://127.0.0.1:{app_port}"

[logging]
format = "json"
level = "info"
access_log = false
"""
    )
    proxy = await spawn("-m", "authproxy", "serve", "-c", str(config), log="authproxy.log")
    stack = Stack(
        f"http://127.0.0.1:{proxy_port}",
        f"http://127.0.0.1:{idp_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        proxy,
        [idp, app],
        directory,
    )
    async with aiohttp.ClientSession() as http:
        for url in (
            f"{stack.idp_url}/.well-known/openid-configuration",
            f"http://127.0.0.1:{app_port}/api/whoami",
        ):
            await _wait_for(http, url, stack)
        await _wait_for(http, f"{stack.proxy_url}/ping", stack)
    return stack


async def _wait_for(http: aiohttp.ClientSession, url: str, stack: Stack) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    await stack.stop()
    raise SystemExit(f"{url} did not come up; logs in {stack.directory}")


# --- the load ----------------------------------------------------------------------------------------


@dataclass
class User:
    email: str
    cookie: str  # "name=value"


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    faults: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    shed: int = 0  # operations not started because too many were in flight (the load was too high)

    def record(self, operation: str, outcome: str, seconds: float, detail: str = "") -> None:
        self.outcomes[(operation, outcome)] += 1
        self.latencies[operation].append(seconds)
        if outcome not in ("ok", "outage_503") and detail and len(self.details) < 50:
            self.details.append(f"{operation}: {outcome}: {detail}")


def classify(status: int, body: str, expected: int) -> str:
    if status == expected:
        return "ok"
    if status == 503 and ("centralauth_unavailable" in body or "sign-in service is not answering" in body):
        return "outage_503"
    if status >= 500:
        return "unexpected_5xx"
    if expected == 200 and (status == 401 or (status == 302 and "/oauth2/start" in body)):
        return "session_lost"
    return "unexpected_status"


class Load:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession, tally: Tally) -> None:
        self.stack = stack
        self.http = http  # no cookie jar: every request carries exactly the cookie it is given
        self.tally = tally
        self.hot: list[User] = []
        self.cold: list[User] = []
        self._cold_next = 0

    async def login(self, email: str) -> tuple[str, User | None, str]:
        """A complete browser login; the outcome and the signed-in user."""
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(
            cookie_jar=jar, headers={"User-Agent": UA, "Accept": HTML}
        ) as browser:
            async with browser.get(f"{self.stack.proxy_url}/") as response:
                form = response.url
                await response.read()
            if "/login" not in form.path:
                return "unexpected_status", None, f"landed on {form}"
            async with browser.post(form, data={"email": email}) as response:
                body = await response.text()
                outcome = classify(response.status, body, 200)
                if outcome != "ok":
                    return outcome, None, f"{response.status} at {response.url.path}"
            for cookie in jar:
                if cookie.key.endswith("_authproxy"):
                    return "ok", User(email, f"{cookie.key}={cookie.value}"), ""
        return "unexpected_status", None, "no session cookie after login"

    async def get(self, path: str, user: User | None, expected: int = 200) -> tuple[str, str]:
        headers = {"User-Agent": UA, "Accept": JSON_ACCEPT}
        if user is not None:
            headers["Cookie"] = user.cookie
        async with self.http.get(
            f"{self.stack.proxy_url}{path}", headers=headers, allow_redirects=False
        ) as r:
            body = await r.read()
            text = body[:2000].decode("utf-8", "replace")
            outcome = classify(r.status, text, expected)
            checked = r.status == 200 and path.startswith("/api/whoami")
            if checked and user is not None and json.loads(body).get("X-Forwarded-Email") != user.email:
                return "unexpected_status", "the upstream saw another identity"
            return outcome, f"{r.status} {text[:120]}"

    # One coroutine per kind of operation; each returns (outcome, detail).

    async def cached_check(self) -> tuple[str, str]:
        return await self.get("/api/whoami", RNG.choice(self.hot))

    async def cache_miss(self) -> tuple[str, str]:
        user = self.cold[
            self._cold_next % len(self.cold)
        ]  # round robin: each is seen less often than the TTL
        self._cold_next += 1
        return await self.get("/api/whoami?cold", user)

    async def login_op(self) -> tuple[str, str]:
        outcome, _, detail = await self.login(f"new-{uuid.uuid4().hex[:12]}@example.com")
        return outcome, detail

    async def sign_out(self) -> tuple[str, str]:
        outcome, user, detail = await self.login(f"leaver-{uuid.uuid4().hex[:12]}@example.com")
        if user is None:
            return outcome, detail
        headers = {"User-Agent": UA, "Cookie": user.cookie, "Origin": self.stack.proxy_url}
        url = f"{self.stack.proxy_url}/oauth2/sign_out"
        async with self.http.post(url, headers=headers, allow_redirects=False) as response:
            await response.read()
            if response.status not in (200, 302):  # 200: signed out here, CentralAuth faulted (says so)
                return classify(response.status, "", 302), f"sign_out answered {response.status}"
        outcome, detail = await self.get("/api/whoami", user, expected=401)
        return outcome, detail

    async def websocket(self) -> tuple[str, str]:
        user = RNG.choice(self.hot)
        headers = {"User-Agent": UA, "Cookie": user.cookie}
        try:
            async with self.http.ws_connect(f"{self.stack.proxy_url}/ws", headers=headers) as ws:
                for index in range(5):
                    await ws.send_str(f"message {index}")
                    reply = await ws.receive(timeout=10)
                    if reply.data != f"message {index}":
                        return "unexpected_status", f"websocket echoed {reply.data!r}"
        except aiohttp.WSServerHandshakeError as exc:
            return classify(exc.status, "centralauth_unavailable" if exc.status == 503 else "", 101), str(exc)
        return "ok", ""

    async def download(self) -> tuple[str, str]:
        user = RNG.choice(self.hot)
        headers = {"User-Agent": UA, "Cookie": user.cookie}
        async with self.http.get(f"{self.stack.proxy_url}/download?mb=1", headers=headers) as response:
            if response.status != 200:
                return classify(response.status, await response.text(), 200), str(response.status)
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
        return ("ok", "") if size == 1 << 20 else ("unexpected_status", f"{size} bytes")

    async def anonymous(self) -> tuple[str, str]:
        return await self.get("/api/whoami", None, expected=401)

    async def ping(self) -> tuple[str, str]:
        return await self.get("/ping", None)

    def operations(self) -> dict[str, Callable[[], Awaitable[tuple[str, str]]]]:
        return {
            "cached_check": self.cached_check,
            "cache_miss": self.cache_miss,
            "login": self.login_op,
            "sign_out": self.sign_out,
            "websocket": self.websocket,
            "download": self.download,
            "anonymous": self.anonymous,
            "ping": self.ping,
        }

    async def run_one(self, operation: str) -> None:
        started = time.monotonic()
        try:
            outcome, detail = await asyncio.wait_for(self.operations()[operation](), 30)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome, detail = "client_error", f"{type(exc).__name__}: {exc}"
        self.tally.record(operation, outcome, time.monotonic() - started, detail)

    async def inject_fault(self) -> None:
        fault = RNG.choice(FAULTS)
        kind = f"status {fault['status']}" if "status" in fault else "slow"
        try:
            async with self.http.post(
                f"{self.stack.idp_url}/_devidp/faults", json={"endpoint": "userinfo", "count": 1, **fault}
            ) as response:
                if response.status == 201:
                    self.tally.faults[kind] += 1
        except (aiohttp.ClientError, OSError):
            self.tally.faults["not injected"] += 1


async def sign_in_pools(load: Load, hot: int, cold: int) -> None:
    async def one(email: str, pool: list[User]) -> None:
        outcome, user, detail = await load.login(email)
        if user is None:
            raise SystemExit(f"could not sign in {email}: {outcome} {detail}")
        pool.append(user)

    emails = [(f"hot-{i}@example.com", load.hot) for i in range(hot)]
    emails += [(f"cold-{i}@example.com", load.cold) for i in range(cold)]
    for start in range(0, len(emails), 32):
        await asyncio.gather(*(one(email, pool) for email, pool in emails[start : start + 32]))


def pick() -> str:
    return RNG.choices(list(MIX), weights=list(MIX.values()))[0]


async def measure_capacity(load: Load, seconds: float, concurrency: int) -> float:
    """Operations per second the whole set-up sustains on this mix, closed loop, no faults."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await load.run_one(pick())
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def drive(load: Load, rate: float, seconds: float, fault_rate: float, max_in_flight: int) -> None:
    """Open loop: operations start on schedule whether or not earlier ones have finished."""
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    launched = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) - launched
        for _ in range(due):
            launched += 1
            if len(tasks) >= max_in_flight:
                load.tally.shed += 1
                continue
            task = asyncio.ensure_future(load.run_one(pick()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if RNG.random() < fault_rate:
                fault = asyncio.ensure_future(load.inject_fault())
                tasks.add(fault)
                fault.add_done_callback(tasks.discard)
        await asyncio.sleep(0.01)
    if tasks:
        await asyncio.wait(tasks, timeout=60)


async def sample_rss(
    stack: Stack, samples: list[tuple[float, float]], every: float, stop: asyncio.Event
) -> None:
    started = time.monotonic()
    while not stop.is_set():
        samples.append((round(time.monotonic() - started, 1), round(stack.rss_mb(), 2)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def proxy_metrics(stack: Stack, http: aiohttp.ClientSession) -> dict[str, float]:
    wanted = re.compile(r'^(authproxy_(session_checks|userinfo_calls)_total)\{\w+="(\w+)"\} (\S+)$')
    found: dict[str, float] = {}
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with http.get(stack.metrics_url) as response:
            for line in (await response.text()).splitlines():
                match = wanted.match(line)
                if match:
                    found[f"{match.group(2)}.{match.group(3)}"] = float(match.group(4))
                elif line.startswith("authproxy_session_cache_entries "):
                    found["session_cache_entries"] = float(line.split()[1])
    return found


def rss_growth(samples: list[tuple[float, float]], warmup: float) -> tuple[float, float, float]:
    """(baseline after warm-up, final level, growth in %), medians over a few samples to smooth noise."""
    after = [rss for t, rss in samples if t >= warmup]
    if len(after) < 4:
        return 0.0, 0.0, 0.0
    window = max(3, len(after) // 10)
    baseline = statistics.median(after[:window])
    final = statistics.median(after[-window:])
    return baseline, final, 100 * (final - baseline) / baseline


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def soak(args: argparse.Namespace) -> int:
    stack = await start_stack(args.workers)
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    http = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    rss: list[tuple[float, float]] = []
    stop = asyncio.Event()
    try:
        load = Load(stack, http, tally)
        rate_per_cold_user = args.rate or 1000
        cold = max(200, int(MIX["cache_miss"] * rate_per_cold_user * CHECK_TTL * 3))
        print(f"signing in {args.hot_users} hot and {cold} cold users ...", flush=True)
        await sign_in_pools(load, args.hot_users, cold)
        if args.prefill:
            # Fill the proxy's bounded per-session caches (the unsealed-cookie memo holds 10 000) before
            # measuring, so that RSS growth afterwards means a leak, not a cache reaching its bound.
            print(f"prefilling with {args.prefill} one-off logins ...", flush=True)
            for start in range(0, args.prefill, 64):
                await asyncio.gather(
                    *(
                        load.login(f"prefill-{i}@example.com")
                        for i in range(start, min(start + 64, args.prefill))
                    )
                )
        rate = args.rate
        if not rate:
            capacity = await measure_capacity(load, args.measure_seconds, args.concurrency)
            rate = capacity * args.load
            print(f"capacity on this mix: {capacity:.0f} ops/s; soaking at {rate:.0f} ops/s", flush=True)
            needed = max(200, int(MIX["cache_miss"] * rate * CHECK_TTL * 3))
            if needed > len(load.cold):
                await sign_in_pools(load, 0, needed - len(load.cold))
            load.tally = tally = Tally()
        sampler = asyncio.ensure_future(sample_rss(stack, rss, args.rss_every, stop))
        print(f"soaking for {args.seconds:.0f} s ...", flush=True)
        started = time.monotonic()
        await drive(load, rate, args.seconds, args.fault_rate, args.max_in_flight)
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        # Faults cleared, every long-lived session must still be good: no outage may have cost one.
        async with http.get(f"{stack.idp_url}/_devidp/faults") as response:
            tally.faults["never used"] = len(await response.json())
        async with http.delete(f"{stack.idp_url}/_devidp/faults"):
            pass
        metrics = await proxy_metrics(stack, http)
        await asyncio.sleep(CHECK_TTL)
        lost = 0
        for user in load.hot + load.cold:
            outcome, detail = await load.get("/api/whoami", user)
            if outcome != "ok":
                lost += 1
                tally.details.append(f"after the run: {user.email}: {outcome}: {detail}")
    finally:
        await http.close()
        await stack.stop()
    log_text = (stack.directory / "authproxy.log").read_text(errors="replace")
    tracebacks = sum(log_text.count(marker) for marker in ("Traceback", "Error handling request"))
    return report(args, rate, elapsed, tally, rss, metrics, lost, tracebacks, stack.directory)


def report(
    args: argparse.Namespace,
    rate: float,
    elapsed: float,
    tally: Tally,
    rss: list[tuple[float, float]],
    metrics: dict[str, float],
    lost_after: int,
    tracebacks: int,
    directory: Path,
) -> int:
    by_class: Counter[str] = Counter()
    for (_, outcome), count in tally.outcomes.items():
        by_class[outcome] += count
    total = sum(by_class.values())
    warmup = min(args.warmup, elapsed / 3)
    baseline, final, growth = rss_growth(rss, warmup)
    injected = sum(
        count for kind, count in tally.faults.items() if kind not in ("not injected", "never used")
    )
    consumed = injected - tally.faults["never used"]
    lines = [
        f"duration {elapsed:.0f} s, target {rate:.0f} ops/s, achieved {total / elapsed:.0f} ops/s, "
        f"shed {tally.shed}",
        "outcomes: " + ", ".join(f"{name} {count}" for name, count in by_class.most_common()),
        f"faults injected: {injected} ({', '.join(f'{k} {v}' for k, v in sorted(tally.faults.items()))})",
        "per operation (count, p50 ms, p99 ms, not ok):",
    ]
    for operation in MIX:
        times = tally.latencies.get(operation, [])
        bad = sum(c for (op, outcome), c in tally.outcomes.items() if op == operation and outcome != "ok")
        lines.append(
            f"  {operation:<13} {len(times):>8} {percentile(times, 0.5) * 1000:>8.1f} "
            f"{percentile(times, 0.99) * 1000:>8.1f} {bad:>6}"
        )
    lines.append("proxy metrics: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(metrics.items())))
    lines.append(
        f"RSS: {rss[0][1] if rss else 0:.1f} MB at start, {baseline:.1f} MB after {warmup:.0f} s warm-up, "
        f"{final:.1f} MB at the end: {growth:+.1f} %"
    )
    step = max(1, len(rss) // 20)
    lines.append("RSS over time (s: MB): " + ", ".join(f"{t:.0f}: {mb:.1f}" for t, mb in rss[::step]))
    lines.append(
        f"userinfo calls failed: {metrics.get('userinfo_calls.unavailable', 0):.0f} "
        f"for {consumed} faults used; "
        f"sessions lost after the run: {lost_after}; tracebacks in the proxy log: {tracebacks}"
    )
    verdicts = {
        "no unexpected 5xx": by_class["unexpected_5xx"] == 0,
        "no session lost": by_class["session_lost"] == 0 and lost_after == 0,
        # One fault fails one userinfo call; concurrent requests sharing that call all see its 503.
        "every outage is an injected fault": metrics.get("userinfo_calls.unavailable", 0) <= consumed,
        "no traceback in the proxy log": tracebacks == 0,
        "RSS growth after warm-up < 5 %": growth < 5,
    }
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in verdicts.items()]
    if tally.details:
        lines.append("first problems:")
        lines += [f"  {detail}" for detail in tally.details[:15]]
    lines.append(f"process logs: {directory}")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rate": rate,
                    "elapsed": elapsed,
                    "outcomes": {f"{op}/{outcome}": c for (op, outcome), c in tally.outcomes.items()},
                    "faults": dict(tally.faults),
                    "rss": rss,
                    "metrics": metrics,
                    "verdicts": verdicts,
                },
                indent=1,
            )
        )
    return 0 if all(verdicts.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="role")
    upstream = sub.add_parser("upstream", help="(internal) serve the demo upstream")
    upstream.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument(
        "--rate", type=float, default=0.0, help="ops/s; 0 = measure capacity and use --load of it"
    )
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity (default 0.7)")
    parser.add_argument("--measure-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=48, help="closed-loop clients while measuring")
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument("--hot-users", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="proxy workers (RSS is summed)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth is measured")
    parser.add_argument("--prefill", type=int, default=10_000, help="one-off logins before the soak")
    parser.add_argument("--rss-every", type=float, default=5.0)
    parser.add_argument("--max-in-flight", type=int, default=512)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if args.role == "upstream":
        serve_upstream(args.port)
        return 0
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional: the `fast` extra
    except ImportError:
        return asyncio.run(soak(args))
    status: int = uvloop.run(soak(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
