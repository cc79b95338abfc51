"""Fixed-rate load for latency, without coordinated omission (what wrk2 does; Debian has no wrk2).

Every request has an intended send time on a fixed schedule (`rate` per second, spread round-robin
over `connections` keep-alive connections, one thread each), and its latency is measured from that
intended time, not from when it was actually sent. A server that stalls therefore cannot hide the
requests that queued behind the stall: they count with the time they waited. Threads sleep with
`clock_nanosleep` and a 1 ns timer slack, so the generator adds little jitter of its own; what it adds
is the same for every server measured, and the targets compare servers with each other.

Responses must carry Content-Length (the benchmark's endpoints all do). Run as a separate process so
its CPU never counts against the servers:

    python -m bench.loadgen URL --rate 200 --connections 1 --seconds 5 -H 'Cookie: ...'
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import socket
import threading
import time
from urllib.parse import urlsplit

PR_SET_TIMERSLACK = 29


def _tight_timers() -> None:
    # Off Linux the call fails and the default slack (50 us) only adds a little jitter.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


def _request(url: str, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", *headers, "", ""]
    return host, port, "\r\n".join(lines).encode()


def _read_response(sock: socket.socket, pending: bytes) -> tuple[int, bytes]:
    """Read one response; its status and whatever bytes followed it."""
    buffer = pending
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response head")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = sock.recv(max(65536, length - len(rest)))
        if not data:
            raise ConnectionError("closed mid-body")
        rest += data
    return status, rest[length:]


class _Worker(threading.Thread):
    def __init__(
        self, index: int, args: argparse.Namespace, start_at: float, request: tuple[str, int, bytes]
    ):
        super().__init__(daemon=True)
        self.index = index
        self.args = args
        self.start_at = start_at
        self.request = request
        self.latencies: list[float] = []
        self.errors = 0
        self.non2xx = 0

    def run(self) -> None:
        host, port, payload = self.request
        interval = self.args.connections / self.args.rate
        first = self.start_at + self.index / self.args.rate
        end = self.start_at + self.args.seconds
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        number = 0
        while True:
            intended = first + number * interval
            if intended >= end:
                break
            number += 1
            delay = intended - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                sock.sendall(payload)
                status, pending = _read_response(sock, pending)
            except OSError:
                self.errors += 1
                sock.close()
                sock = socket.create_connection((host, port))
                pending = b""
                continue
            self.latencies.append(time.perf_counter() - intended)
            if not 200 <= status < 300:
                self.non2xx += 1
        sock.close()


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(url: str, rate: float, connections: int, seconds: float, headers: list[str]) -> dict[str, float]:
    _tight_timers()
    args = argparse.Namespace(rate=rate, connections=connections, seconds=seconds)
    request = _request(url, headers)
    start_at = time.perf_counter() + 0.2
    workers = [_Worker(index, args, start_at, request) for index in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ordered = sorted(latency for worker in workers for latency in worker.latencies)
    return {
        "requests": len(ordered),
        "rate": rate,
        "connections": connections,
        "seconds": seconds,
        "errors": sum(worker.errors for worker in workers),
        "non2xx": sum(worker.non2xx for worker in workers),
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p90_ms": _percentile(ordered, 0.90) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "p999_ms": _percentile(ordered, 0.999) * 1000,
        "max_ms": (ordered[-1] if ordered else float("nan")) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, all connections")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.rate, args.connections, args.seconds, args.header)))


if __name__ == "__main__":
    main()
