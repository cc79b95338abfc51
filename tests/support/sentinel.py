"""Real Redis processes for the high-availability tests: a master, its replica and Redis Sentinels.

`RedisNode` runs Debian's redis-server (or redis-sentinel) on a free loopback port with the arguments a
test gives (a replica, an ACL user, TLS); `SentinelGroup` starts a master, one replica of it and three
sentinels watching it as `MASTER` with a short `down-after-milliseconds`, so that killing the master
gets the replica promoted within a few seconds. Nothing persists to disk and the system Redis on 6379
is never touched. Every wait here is a bounded poll.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from support.harness import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
MASTER = "mymaster"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 3000


def _require(binary: str, package: str) -> None:
    if not Path(binary).exists():
        raise RuntimeError(f"{package} is missing: run `make system-deps` (apt-get install {package})")


class RedisNode:
    """One redis-server (or, with `sentinel_config`, redis-sentinel) of the test's own."""

    def __init__(
        self,
        directory: Path,
        *args: str,
        port: int | None = None,
        sentinel_config: str = "",
        password: str = "",
    ) -> None:
        _require(
            REDIS_SENTINEL if sentinel_config else REDIS_SERVER,
            "redis-sentinel" if sentinel_config else "redis-server",
        )
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.args = args
        self.sentinel_config = sentinel_config
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.sentinel_config:
            config = self.directory / "sentinel.conf"  # the sentinel rewrites it: its own copy
            config.write_text(self.sentinel_config, encoding="utf-8")
            command = [REDIS_SENTINEL, str(config)]
        else:
            command = [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--daemonize", "no",
                *self.args,
            ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        tcp_port = self._listening_port()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis exited at start: {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", tcp_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis did not start on port {tcp_port}: {self.log()[-2000:]}")

    def _listening_port(self) -> int:
        if "--tls-port" in self.args:
            return int(self.args[self.args.index("--tls-port") + 1])
        return self.port

    def kill(self) -> None:
        """SIGKILL: the node dies the way a crashed host does, without a word to its clients."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            password=self.password or None,
            socket_timeout=2,
            socket_connect_timeout=2,
        )


class SentinelGroup:
    """A master, one replica and three sentinels (quorum 2, so a failover needs a majority of them, as
    in production), all on loopback; with `password`, the data nodes require it (`requirepass`, and
    `masterauth` to replicate) and the sentinels know it."""

    def __init__(self, directory: Path, password: str = "", sentinels: int = 3) -> None:
        auth = ("--requirepass", password, "--masterauth", password) if password else ()
        self.password = password
        self.master = RedisNode(directory / "master", *auth, password=password)
        self.replica = RedisNode(
            directory / "replica", *auth, "--replicaof", "127.0.0.1", str(self.master.port), password=password
        )
        quorum = sentinels // 2 + 1
        self.watchers: list[RedisNode] = []
        for number in range(sentinels):
            port = free_port()
            home = directory / f"sentinel-{number}"
            config = (
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {home}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"logfile {home / 'redis.log'}\n"
            )
            if password:
                config += f"sentinel auth-pass {MASTER} {password}\n"
            self.watchers.append(RedisNode(home, port=port, sentinel_config=config))
        self.sentinel = self.watchers[0]

    @property
    def sentinels(self) -> list[str]:
        return [watcher.address for watcher in self.watchers]

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for watcher in self.watchers:
            watcher.start()
        # Ready once the replica is in sync and every sentinel knows it and the other sentinels (they
        # learn replicas from the master's INFO, and each other from its hello channel): only then can
        # they agree to promote one.
        self.wait_for(self._ready, "the replica to sync and the sentinels to know it and each other")

    def stop(self) -> None:
        for node in (*self.watchers, self.replica, self.master):
            node.stop()

    def _ready(self) -> bool:
        with self.replica.client() as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for watcher in self.watchers:
            with watcher.client() as sentinel:
                replicas = sentinel.execute_command("SENTINEL", "REPLICAS", MASTER)
                others = sentinel.execute_command("SENTINEL", "SENTINELS", MASTER)
            if not replicas or len(others) < len(self.watchers) - 1:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the sentinel reports it now."""
        with self.sentinel.client() as sentinel:
            _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)

    def promoted(self) -> bool:
        """The failover is over: the sentinel names the replica as a healthy master (not just promoted,
        which redis-py's master lookup still refuses while the failover is in progress), and the replica
        knows it is one."""
        try:
            with self.sentinel.client() as sentinel:
                state = sentinel.sentinel_master(MASTER)
            if int(state["port"]) != self.replica.port or state["flags"] != "master":
                return False
            with self.replica.client() as replica:
                return bool(replica.execute_command("ROLE")[0] == b"master")
        except redis.RedisError:
            return False

    @staticmethod
    def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
