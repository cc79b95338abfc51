"""Starting and stopping the servers under test, each a process tree of its own on a loopback port.

Every server runs in its own session (process group), so stopping it reaches its workers too and
nothing outlives the run. A server is ready when its port accepts connections and, for multi-worker
servers, when each worker has printed its ready line: load must not start while one worker is still
importing. Output goes to a log file per server in the run's work directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import nginx

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    log: Path
    ready_line: str | None = None  # printed once per worker when it serves
    workers: int = 1
    env: dict[str, str] | None = None  # added to the harness's environment
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
                cwd=self.cwd,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up; see {self.log}")
            if self._accepts() and self._workers_ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _workers_ready(self) -> bool:
        if self.ready_line is None:
            return True
        return self.log.read_text(errors="replace").count(self.ready_line) >= self.workers


def start_all(servers: list[Server]) -> None:
    """Start every server at once, then wait for each; on any failure stop them all."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: list[Server]) -> None:
    for server in reversed(servers):
        server.stop()


def nginx_upstream(work: Path, data: Path) -> Server:
    port = free_port()
    config = nginx.upstream_config(work / "nginx-upstream", port, data)
    return Server("nginx-upstream", nginx.command(config), port, work / "nginx-upstream.log")


def nginx_reference(work: Path, upstream_port: int, workers: int) -> Server:
    port = free_port()
    config = nginx.reference_config(work / f"nginx-{workers}w", port, upstream_port, workers)
    return Server(f"nginx-{workers}w", nginx.command(config), port, work / f"nginx-{workers}w.log")


def python_module(name: str, module: str, work: Path, *args: str, workers: int = 1, ready: str) -> Server:
    port = free_port()
    command = [PYTHON, "-m", module, "--listen", f"127.0.0.1:{port}", *args]
    return Server(name, command, port, work / f"{name}.log", ready_line=ready, workers=workers)


def authproxy(
    name: str, work: Path, config_text: str, port: int, workers: int, source: Path | None = None
) -> Server:
    """`authproxy serve`, from the source tree `source` (an older commit, say) when given."""
    config = work / f"{name}.toml"
    config.write_text(config_text)
    command = [PYTHON, "-m", "authproxy", "serve", "-c", str(config)]
    server = Server(name, command, port, work / f"{name}.log", ready_line='"worker.ready"', workers=workers)
    if source is not None:
        # `python -m` looks in the working directory first: run from the source tree itself.
        server.env, server.cwd = {"PYTHONPATH": str(source)}, source
    return server


def devidp(work: Path, client_id: str, client_secret: str, email: str) -> Server:
    port = free_port()
    command = [
        PYTHON, "-m", "authproxy", "devidp", "--listen", f"127.0.0.1:{port}",
        "--client-id", client_id, "--client-secret", client_secret,
        "--no-hijack-protection", "--auto-approve", email,
    ]  # fmt: skip
    return Server("devidp", command, port, work / "devidp.log", ready_line="listening on")
