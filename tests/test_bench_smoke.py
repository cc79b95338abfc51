"""The benchmark harness in its smoke mode: every server started, a few hundred requests, results written.

Nothing here asserts speed: a test machine's timing proves nothing about the code. What is asserted is
that `python -m bench --mode smoke` runs end to end and writes well-formed results: every case measured
in every round without errors, the cost columns filled in, every target reported (met, missed, or not
measured at smoke sizes), and the Markdown tables. wrk and nginx come from Debian (`make system-deps`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING_WRK = "the benchmark needs wrk: `apt-get install -y wrk` (make system-deps does it)"


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_smoke_mode_writes_well_formed_results(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.fail(MISSING_WRK, pytrace=False)
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--mode", "smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    results = json.loads((tmp_path / "smoke.json").read_text())

    assert results["mode"] == "smoke"
    assert {"cpu", "cores", "kernel", "python", "packages"} <= set(results["machine"])
    rounds = results["settings"]["rounds"]
    expected = {"1k/upstream", "1k/bare-1w", "1k/authproxy-1w", "1k/authproxy-cold-1w"}
    assert expected <= set(results["throughput"])
    for key, case in results["throughput"].items():
        assert len(case["runs"]) == rounds, key
        for run in case["runs"]:
            assert run["errors"] == 0 and run["non2xx"] == 0, (key, run)
            assert run["rps"] > 0 and _finite(run["cpu_us_per_request"]), (key, run)
        assert set(case["summary"]["rps"]) == {"median", "min", "max"}
    # The cold path really asks CentralAuth; the cached one asks no more than once per session.
    assert results["throughput"]["1k/authproxy-cold-1w"]["summary"]["userinfo_calls_per_request"]["max"] > 0
    assert "devidp_cpu_us_per_request" in results["throughput"]["1k/authproxy-cold-1w"]["summary"]

    assert {"1conn/upstream", "1conn/authproxy-1w"} <= set(results["latency"])
    for key, case in results["latency"].items():
        for run in case["runs"]:
            assert run["errors"] == 0 and run["non2xx"] == 0, (key, run)
            assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], (key, run)

    checks = results["checks"]
    assert all(calls >= 0 for burst in checks["burst"] for calls in burst["calls"])
    assert all(steady["calls_total"] > 0 for steady in checks["steady_state"])
    memory = checks["sessions_memory"]
    assert memory["cache_entries"] >= memory["sessions"] and memory["rss_after_mb"] > 0
    for direction in ("download", "upload"):
        assert _finite(checks["streaming"][direction]["growth_mb"])

    targets = results["targets"]
    assert len(targets) >= 8
    assert all(row["met"] in (True, False, None) and row["measured"] for row in targets)

    tables = (tmp_path / "smoke.md").read_text()
    assert "### Targets" in tables and "### Throughput" in tables and "### Latency" in tables
