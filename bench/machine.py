"""The machine a run happened on, for the record: CPU, memory, kernel, software versions, and how
much of it the run had to itself.

Numbers from a machine busy with something else are not comparable with numbers from an idle one, so
`Contention` compares the CPU time the whole machine spent during the run (/proc/stat) with what the
benchmark's own processes spent (this process and every child it waited for, servers included), and
records the hypervisor's steal time.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import resource
import subprocess
from pathlib import Path
from typing import Any

from bench import nginx, wrk

PACKAGES = ("aiohttp", "uvloop", "httptools", "multidict", "yarl")


def _first(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tool_version(command: list[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    return (completed.stdout + completed.stderr).strip().splitlines()[0]


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy, and stolen by the hypervisor, since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def own_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Contention:
    """CPU spent during the run by processes that are not the benchmark's."""

    def __init__(self) -> None:
        self._busy, self._steal = machine_seconds()
        self._own = own_seconds()

    def result(self, seconds: float) -> dict[str, float]:
        busy, steal = machine_seconds()
        others = max(0.0, (busy - self._busy) - (own_seconds() - self._own))
        return {
            "other_cpu_seconds": round(others, 1),
            "other_cores_average": round(others / seconds, 2) if seconds else 0.0,
            "steal_seconds": round(steal - self._steal, 1),
        }


def describe() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    return {
        "cpu": _first(r"^model name\s*:(.*)$", cpuinfo),
        "cores": os.cpu_count(),
        "virtualised": "hypervisor" in _first(r"^flags\s*:(.*)$", cpuinfo).split(),
        "memory_gib": round(int(_first(r"^MemTotal:\s*(\d+)", meminfo)) / 2**20, 1),
        "os": _first(r'^PRETTY_NAME="?([^"\n]*)', os_release),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {
            name: _version(name) for name in ("aiohttp", "uvloop", "httptools", "multidict", "yarl")
        },
        "nginx": _tool_version([nginx.NGINX, "-v"]),
        "wrk": _tool_version([wrk.WRK, "--version"]),
    }
