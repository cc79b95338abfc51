"""`authproxy serve` as a real child process with its output in a file, for tests about what it logs.

In-process proxies share the test's logging set-up; only a served process shows exactly what an operator
would see on stderr (`logs.configure` as the CLI runs it, Python's last-resort handler for everything
else). It is also how the process itself is tested: its workers (`children`), its config file rewritten
for a SIGHUP (`configure`), a start-up that must fail (`run_to_exit`), and a process group that must
leave nothing behind (`group_gone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from support.harness import COOKIE_SECRET, deep_merge, free_port


def to_toml(tables: dict[str, Any]) -> str:
    """A config file from nested dicts: tables of scalars and lists, and one array of tables (upstreams)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(element) for element in item) + "]"
        return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for name, table in tables.items():
        for entry in table if isinstance(table, list) else [table]:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{key} = {value(item)}" for key, item in entry.items()]
            lines.append("")
    return "\n".join(lines)


class ServedProxy:
    """One `authproxy serve` process and its config file, written from nested dicts (`to_toml`).

    The config is the base below deep-merged with the overrides given to `start` or `configure`; each
    call merges into what was last written, so a test can change one value and send SIGHUP. `name` tells
    apart the files of several processes in one directory (on one port, say).
    """

    def __init__(
        self,
        directory: Path,
        *,
        idp_url: str,
        client_id: str,
        client_secret: str,
        upstream_url: str,
        port: int | None = None,
        name: str = "served",
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / f"{name}-{self.port}.toml"
        self.log_path = directory / f"{name}-{self.port}.log"
        self.tables: dict[str, Any] = {
            "server": {"listen": f"127.0.0.1:{self.port}", "public_url": self.url, "workers": 1},
            "centralauth": {"base_url": idp_url, "client_id": client_id, "client_secret": client_secret},
            "session": {"cookie_secrets": [COOKIE_SECRET], "cookie_secure": False},
            "upstreams": [{"path": "/", "url": upstream_url, "timeout": 5}],
            "logging": {"format": "json", "level": "info"},
        }
        self.process: asyncio.subprocess.Process | None = None

    def configure(self, **changes: Any) -> ServedProxy:
        """Merge `changes` (config tables) into the config and write the file; a running process reads it
        on SIGHUP."""
        self.tables = deep_merge(self.tables, changes)
        self.config_path.write_text(to_toml(self.tables))
        return self

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "authproxy", "serve", "-c", str(self.config_path)]

    async def start(self, *, wait: bool = True, **overrides: Any) -> ServedProxy:
        """Start serving with `overrides` merged into the config; with `wait`, until `/ping` answers."""
        self.configure(**overrides)
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self._command(), stdout=log, stderr=log, start_new_session=True
            )
        if wait:
            await self.wait_until_up()
        return self

    async def wait_until_up(self) -> None:
        assert self.process is not None
        async with ClientSession() as http:
            for _ in range(200):
                if self.process.returncode is not None:
                    raise AssertionError(f"serve exited with {self.process.returncode}: {self.log()}")
                with contextlib.suppress(OSError):
                    async with http.get(f"{self.url}/ping") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"serve did not come up: {self.log()}")

    async def run_to_exit(self, within: float = 60, **overrides: Any) -> tuple[int, list[str]]:
        """Run `authproxy serve` with this config to its exit (a start-up expected to fail): its status
        and the lines of its stderr. Nothing of it outlives the call."""
        self.configure(**overrides)
        process = await asyncio.create_subprocess_exec(
            *self._command(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), within)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode is not None
        return process.returncode, stderr.decode().splitlines()

    def log(self) -> str:
        """Everything the process wrote, stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (`logging.format = "json"`), parsed."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def children(self) -> list[int]:
        """The pids of the live worker processes (not multiprocessing's resource tracker, nor zombies)."""
        assert self.process is not None
        found = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if (
                        b"resource_tracker" not in cmdline
                        and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
                    ):
                        found.append(int(pid))
        return found

    async def group_gone(self, within: float = 5) -> bool:
        """Whether every process of the group has ended (workers and multiprocessing's resource tracker
        finish just after the supervisor)."""
        assert self.process is not None
        for _ in range(int(within / 0.05)):
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; and the whole process group, so that no worker outlives the
        test even when the supervisor has already gone."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
