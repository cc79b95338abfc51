"""`authproxy serve` as a real child process with its output in a file, for tests about what it logs.

In-process proxies share the test's logging set-up; only a served process shows exactly what an operator
would see on stderr (`logs.configure` as the CLI runs it, Python's last-resort handler for everything
else).
"""

from __future__ import annotations

import asyncio
import contextlib
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
    def __init__(
        self, directory: Path, *, idp_url: str, client_id: str, client_secret: str, upstream_url: str
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / f"served-{self.port}.toml"
        self.log_path = directory / f"served-{self.port}.log"
        self.base: dict[str, Any] = {
            "server": {"listen": f"127.0.0.1:{self.port}", "public_url": self.url, "workers": 1},
            "centralauth": {"base_url": idp_url, "client_id": client_id, "client_secret": client_secret},
            "session": {"cookie_secrets": [COOKIE_SECRET], "cookie_secure": False},
            "upstreams": [{"path": "/", "url": upstream_url, "timeout": 5}],
            "logging": {"format": "json", "level": "info"},
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, **overrides: Any) -> ServedProxy:
        self.config_path.write_text(to_toml(deep_merge(self.base, overrides)))
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "authproxy", "serve", "-c", str(self.config_path),
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        async with ClientSession() as http:
            for _ in range(200):
                if self.process.returncode is not None:
                    raise AssertionError(f"serve exited: {self.log()}")
                with contextlib.suppress(OSError):
                    async with http.get(f"{self.url}/ping") as response:
                        if response.status == 200:
                            return self
                await asyncio.sleep(0.05)
        raise AssertionError(f"serve did not come up: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
