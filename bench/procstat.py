"""What the kernel says a server process tree costs: CPU time and resident memory, read from /proc.

CPU is `utime + stime` of /proc/<pid>/stat in clock ticks, so a delta over a run divided by the
requests served is the server's CPU per request, independent of what else shares the machine. A
server is a tree (a supervisor and its workers, nginx's master and workers), so every reading covers
the whole tree. Peak RSS is `VmHWM`, which the harness resets through `clear_refs` before a phase it
wants the peak of (that needs root or the process's owner; where it fails, the lifetime peak is kept).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is parenthesised and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """`root` and every live descendant, found by scanning parent ids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds consumed so far by these processes (dead ones count as zero)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / TICKS_PER_SECOND


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pids: list[int]) -> None:
    """Start a fresh VmHWM (writing 5 to clear_refs, Linux ≥ 4.0)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass(frozen=True)
class Usage:
    """One server tree's CPU seconds and per-process peak RSS over a measured interval."""

    cpu_seconds: float
    peak_rss_mb: float  # the largest single process of the tree (a worker, for a multi-worker server)
    processes: int


class Meter:
    """Measures a server tree between `start()` and `stop()`."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._pids: list[int] = []
        self._cpu = 0.0

    def start(self) -> None:
        self._pids = tree(self.root)
        reset_peak(self._pids)
        self._cpu = cpu_seconds(self._pids)

    def stop(self) -> Usage:
        pids = tree(self.root)
        # Processes that appeared mid-run started at zero; ones that vanished are lost (none should).
        cpu = cpu_seconds(pids) - self._cpu
        return Usage(cpu, max((peak_rss_mb(pid) for pid in pids), default=0.0), len(pids))
