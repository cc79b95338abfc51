"""`python -m bench --mode forward-auth`: nginx `auth_request` with nginx caching authproxy's answers.

The nginx measured is `deploy/nginx/authproxy-cached.conf` itself, loaded and templated: only its listen
lines (plain HTTP on loopback, as the reference nginx it is compared with: TLS would cost both the
same and is not what is measured), its two upstream addresses, the cache directory and the certificate
paths (a throwaway certificate, unused without a TLS listener but loaded by nginx) are replaced, each
of which must occur exactly once. Around it, bench's own servers: the fake CentralAuth, one authproxy
worker (`session_check_ttl = AUTHPROXY_TTL`, trusting nginx on loopback), nginx's reference proxy
(`nginx-1w`) and an nginx upstream that serves `/1k` and echoes the identity it received on `/whoami`.

Four numbers, in `DIR/forward-auth.json`:

- `nginx_plain_rps`, `nginx_forward_auth_rps`: wrk on `/1k`, 2 threads, 64 connections, rotating through
  every session's cookie, in interleaved rounds; medians. Target: forward-auth at least 0.6 times plain.
- `cross_user_answers`: wrk on `/whoami` with every session interleaved (a Lua script sends each
  request with the next session's cookie and the e-mail that session belongs to), long enough to span
  a cache expiry; an answer whose echoed `X-Forwarded-Email` is not that e-mail is counted.
- `revocation_lag_s`: one session in use (a request every 50 ms), its user logged out at the fake
  CentralAuth; the time from the logout until the last request with that session that still passed.
  Its bound is AUTHPROXY_TTL + the file's cache lifetime.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import nginx, servers, sessions, wrk
from bench.servers import Server
from bench.upstream import prepare_data

SITE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "authproxy-cached.conf"
AUTHPROXY_TTL = 10  # = the file's proxy_cache_valid, as its comments ask (lifetime ≤ session_check_ttl)
USERS, SESSIONS_PER_USER = 16, 4
ROUNDS, SECONDS, WARMUP = 3, 5, 1
CROSS_USER_SECONDS = 12  # more than the cache lifetime: misses, hits and expiries, interleaved
CONNECTIONS, THREADS = 64, 2
TARGET = 0.6
REVOKED = "revoked@example.com"

_UPSTREAM = """\
    sendfile on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {data};
        location = /whoami {{
            default_type text/plain;
            return 200 "$http_x_bench_expect|$http_x_forwarded_email";
        }}
        location / {{ }}
    }}
"""

# Each request carries the next session's cookie and, in X-Bench-Expect, the e-mail it belongs to;
# the upstream echoes both, and an answer where they differ carried another session's identity.
_CROSS_USER = """
local threads = {threads}
local counter = 0
local all = {{}}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(all, thread)
end
function init(args)
  pairs_ = {{}}
  local index = 0
  for line in io.lines("{path}") do
    if index % threads == id then pairs_[#pairs_ + 1] = line end
    index = index + 1
  end
  position = 0
  wrong = 0
  refused = 0
  answered = 0
end
function request()
  position = position % #pairs_ + 1
  local email, cookie = pairs_[position]:match("^(%S+) (.+)$")
  return wrk.format("GET", "/whoami", {{["Cookie"] = cookie, ["X-Bench-Expect"] = email,
                                        ["User-Agent"] = "{agent}"}})
end
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    refused = refused + 1
  else
    local expected, got = body:match("^([^|]*)|(.*)$")
    if expected == nil or expected ~= got then wrong = wrong + 1 end
  end
end
function done(summary, latency, requests)
  local w, r, a = 0, 0, 0
  for _, thread in ipairs(all) do
    w = w + thread:get("wrong")
    r = r + thread:get("refused")
    a = a + thread:get("answered")
  end
  io.write(string.format('\\nCROSSJSON {{"answered": %d, "wrong": %d, "refused": %d, '
    .. '"duration_us": %d}}\\n', a, w, r, summary.duration))
end
"""


def render_site(text: str, edits: dict[str, str]) -> str:
    """The deploy file with `edits` applied; each replaced text must occur exactly once."""
    for old, new in edits.items():
        if text.count(old) != 1:
            raise RuntimeError(
                f"{SITE}: {old!r} must occur exactly once to be replaced; update bench/forward_auth.py"
            )
        text = text.replace(old, new)
    return text


def cache_lifetime(text: str) -> int:
    found = re.search(r"proxy_cache_valid\s+200 202 (\d+)s;", text)
    if found is None:
        raise RuntimeError(f"{SITE}: no `proxy_cache_valid 200 202 <N>s;` line")
    return int(found.group(1))


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "site.crt", directory / "site.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=127.0.0.1", "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o644)  # nginx's workers run unprivileged when started as root
    return cert, key


def forward_auth_nginx(work: Path, authproxy_port: int, app_port: int) -> Server:
    directory = work / "nginx-forward-auth"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    cert, key = _certificate(directory)
    port = servers.free_port()
    edits = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} backlog=4096;",
        "listen 80;": f"listen 127.0.0.1:{servers.free_port()};",
        "server 127.0.0.1:4180;": f"server 127.0.0.1:{authproxy_port};",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{app_port};",
        "/var/cache/nginx-authproxy": str(directory / "auth-cache"),
        "/etc/ssl/certs/app.example.com.pem": str(cert),
        "/etc/ssl/private/app.example.com.key": str(key),
    }
    site = render_site(SITE.read_text(), edits)
    config = nginx._write(directory, 1, site)
    return Server("nginx-forward-auth", nginx.command(config), port, work / "nginx-forward-auth.log")


def upstream(work: Path, data: Path) -> Server:
    port = servers.free_port()
    config = nginx._write(work / "nginx-echo-upstream", 1, _UPSTREAM.format(port=port, data=data))
    return Server("nginx-echo-upstream", nginx.command(config), port, work / "nginx-echo-upstream.log")


def _control(idp: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{idp}/_devidp{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def logins(idp: str, authproxy_url: str, emails: list[str]) -> list[str]:
    """One real login per entry (through authproxy and the fake, which approves it as that e-mail)."""
    cookies = []
    for email in emails:
        _control(idp, "PATCH", "/settings", {"autoApproveEmail": email})
        cookies.append(sessions.logins(authproxy_url, 1)[0])
    return cookies


def _status(url: str, cookie: str) -> int:
    request = urllib.request.Request(url, headers={"Cookie": cookie, "User-Agent": sessions.USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def revocation_lag(url: str, idp: str, cookie: str, bound: float) -> dict[str, float]:
    """Seconds from the logout at the fake until the last request with the session that passed."""
    while _status(url, cookie) != 200:  # in use, and in both caches
        time.sleep(0.05)
    for _ in range(20):
        _status(url, cookie)
        time.sleep(0.05)
    _control(idp, "POST", f"/users/{REVOKED}/logout")
    revoked = time.monotonic()
    last_pass = revoked
    refused_at = None
    while time.monotonic() - revoked < bound + 10:
        status, now = _status(url, cookie), time.monotonic()
        if status == 200:
            last_pass, refused_at = now, None
        elif refused_at is None:
            refused_at = now
        if refused_at is not None and now - refused_at > 2:  # refused for 2 s: it stays refused
            break
        time.sleep(0.05)
    return {
        "lag_s": last_pass - revoked,
        "first_refused_after_s": (refused_at - revoked) if refused_at is not None else -1.0,
    }


def cross_user(url: str, pairs: Path, work: Path, seconds: float) -> dict[str, float]:
    script = work / "wrk-cross-user.lua"
    script.write_text(_CROSS_USER.format(threads=THREADS, path=pairs, agent=sessions.USER_AGENT))
    command = [wrk.WRK, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "10s"]
    command += ["-s", str(script), url]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in completed.stdout.splitlines():
        if line.startswith("CROSSJSON "):
            data = json.loads(line.removeprefix("CROSSJSON "))
            return {key: float(value) for key, value in data.items()}
    raise RuntimeError(f"wrk printed no summary:\n{completed.stdout}\n{completed.stderr}")


def run(work: Path) -> dict[str, Any]:
    started = time.monotonic()
    data = prepare_data(work / "data")
    authproxy_port = servers.free_port()
    identity = sessions.Identity(public_url=f"http://127.0.0.1:{authproxy_port}")
    app = upstream(work, data)
    idp = servers.devidp(work, identity.client_id, identity.client_secret, sessions.EMAIL)
    config = sessions.config_text(
        identity,
        port=authproxy_port,
        idp_url=idp.url,
        upstream_url=app.url,
        sink_url=app.url,
        workers=1,
        ttl=AUTHPROXY_TTL,
        trusted_proxies=("127.0.0.1/32",),
    )
    authproxy = servers.authproxy("authproxy-1w", work, config, authproxy_port, 1)
    plain = servers.nginx_reference(work, app.port, 1)
    site_text = SITE.read_text()
    guarded = forward_auth_nginx(work, authproxy_port, app.port)
    everything = [app, idp, authproxy, plain, guarded]
    servers.start_all(everything)
    try:
        emails = [f"user-{number}@example.com" for number in range(USERS)] * SESSIONS_PER_USER
        cookies = logins(idp.url, authproxy.url, emails)
        revoked_cookie = logins(idp.url, authproxy.url, [REVOKED])[0]
        cookie_file = work / "forward-auth-sessions.txt"
        cookie_file.write_text("\n".join(cookies) + "\n")
        pairs = work / "forward-auth-pairs.txt"
        pairs.write_text(
            "".join(f"{email} {cookie}\n" for email, cookie in zip(emails, cookies, strict=True))
        )

        headers = {"User-Agent": sessions.USER_AGENT}
        cases = {"plain": f"{plain.url}/1k", "forward_auth": f"{guarded.url}/1k"}

        def load(url: str, seconds: float) -> wrk.WrkResult:
            return wrk.run(
                url, seconds=seconds, connections=CONNECTIONS, threads=THREADS, headers=headers,
                workdir=work, cookies=cookie_file,
            )  # fmt: skip

        for url in cases.values():
            load(url, WARMUP)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for number in range(ROUNDS):
            order = list(cases) if number % 2 == 0 else list(reversed(cases))
            for name in order:
                result = load(cases[name], SECONDS)
                runs[name].append(
                    {"rps": result.rps, "non2xx": float(result.non2xx), "errors": float(result.socket_errors)}
                )
        crossed = cross_user(f"{guarded.url}/whoami", pairs, work, CROSS_USER_SECONDS)
        lifetime = cache_lifetime(site_text)
        revocation = revocation_lag(
            f"{guarded.url}/whoami", idp.url, revoked_cookie, AUTHPROXY_TTL + lifetime
        )
        userinfo = int(_control(idp.url, "GET", "/stats")["userinfo"])
    finally:
        servers.stop_all(everything)

    plain_rps = statistics.median(run["rps"] for run in runs["plain"])
    guarded_rps = statistics.median(run["rps"] for run in runs["forward_auth"])
    ratio = guarded_rps / plain_rps if plain_rps else 0.0
    return {
        "nginx_plain_rps": plain_rps,
        "nginx_forward_auth_rps": guarded_rps,
        "revocation_lag_s": revocation["lag_s"],
        "cross_user_answers": int(crossed["wrong"]),
        "ratio": ratio,
        "target": {"goal": f"nginx_forward_auth_rps ≥ {TARGET}× nginx_plain_rps", "met": ratio >= TARGET},
        "details": {
            "site": str(SITE.relative_to(SITE.parents[2])),
            "cache_lifetime_s": lifetime,
            "authproxy_session_check_ttl_s": AUTHPROXY_TTL,
            "revocation_bound_s": AUTHPROXY_TTL + lifetime,
            "revocation_first_refused_after_s": revocation["first_refused_after_s"],
            "sessions": len(cookies),
            "users": USERS,
            "wrk": f"{THREADS} threads, {CONNECTIONS} connections, {SECONDS} s runs × {ROUNDS} rounds, /1k",
            "runs": runs,
            "cross_user": crossed | {"seconds": CROSS_USER_SECONDS},
            "userinfo_calls_total": userinfo,
            "duration_s": time.monotonic() - started,
        },
    }


def main(out: Path, work: Path) -> int:
    results = run(work)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "forward-auth.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({key: results[key] for key in list(results)[:6]}, indent=2))
    print(f"written: {path}")
    return 0
