"""Closed-loop throughput with wrk, summarised by a Lua `done` hook as one JSON line.

wrk keeps every connection busy (a new request as soon as the last answer arrives), so it finds the
most a server sustains; its latency numbers suffer from coordinated omission and are not used for
latency (see `loadgen`). Non-2xx answers and socket errors are counted, so a run that "succeeded" by
answering 401s or 503s quickly is visible as such. With `cookies`, each request carries the next
cookie of a file (wrk threads take disjoint slices), which is how many distinct sessions are driven;
`start` skips that many cookies of each thread's slice, so consecutive runs can carry on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK = shutil.which("wrk") or "/usr/bin/wrk"

_SUMMARY = """
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '\\nWRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

# Each thread reads the whole cookie file, keeps every `threads`-th line, and goes through them in
# order from `start` (so that consecutive runs can carry on where the last one stopped).
_COOKIES = """
local threads = {threads}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  cookies = {{}}
  local index = 0
  for line in io.lines("{path}") do
    if index % threads == id then cookies[#cookies + 1] = line end
    index = index + 1
  end
  position = {start} % #cookies
  headers = {{}}
  for name, value in pairs(wrk.headers) do headers[name] = value end
end
function request()
  position = position % #cookies + 1
  headers["Cookie"] = cookies[position]
  return wrk.format(nil, nil, headers)
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    headers: dict[str, str],
    workdir: Path,
    cookies: Path | None = None,
    start: int = 0,
) -> WrkResult:
    script = workdir / f"wrk-{threads}-{cookies.name if cookies else 'plain'}.lua"
    text = _SUMMARY
    if cookies is not None:
        text = _COOKIES.format(threads=threads, path=cookies, start=start) + text
    script.write_text(text)
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    completed = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    for line in completed.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line.removeprefix("WRKJSON "))
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                bytes=data["bytes"],
                non2xx=data["non2xx"],
                socket_errors=data["socket_errors"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no summary:\n{completed.stdout}\n{completed.stderr}")
