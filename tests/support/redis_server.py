"""A real redis-server on a free loopback port, owned by one test, that can be stopped and restarted.

It keeps an append-only file in its own temp directory, so a restart brings the data back the way a
production Redis with persistence would; the system Redis on 6379 is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from support.harness import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: Path) -> None:
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError(
                "redis-server is missing: run `make system-deps` (apt-get install redis-server)"
            )
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


async def forget_shared_answers(url: str) -> None:
    """Drop the session-check answers the replicas share in the Redis at `url`, as when their TTL has
    run out (a test's stand-in for waiting that long; each replica's own cache is evicted apart)."""
    import redis.asyncio as aioredis

    from authproxy.session.redis_checks import ANSWER_PREFIX

    client = aioredis.Redis.from_url(url)
    try:
        for key in await client.keys(ANSWER_PREFIX + "*"):
            await client.delete(key)
    finally:
        await client.aclose()
