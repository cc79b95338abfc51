"""Running the proxy: one worker process, or a supervisor with N workers sharing one listening socket.

The listening socket is bound once, before any worker exists, and every worker serves that same socket
(inherited, as with gunicorn or uvicorn). It is bound without SO_REUSEPORT: with it, any later process
of the same user binding the port joins the group and silently takes a share of the connections. So a
busy port is one line on stderr and exit status 2, for the proxy port and the metrics port alike.

The supervisor restarts a worker that dies, with growing pauses; when one worker slot fails
FAST_FAILURES times within FAILURE_WINDOW seconds it gives up, logs why on one line, stops the other
workers and exits 1. It also runs the check broker the workers share session-check answers through
(`authproxy.provider.broker`), in a thread, on a Unix socket in a private directory removed at exit.
It forwards SIGTERM (graceful stop) and SIGHUP (reload) to all workers. Its signal
handlers only set flags, acted on by its main loop, so a signal at any moment (during start-up, during a
restart's pause, after workers died) stops it cleanly.

SIGTERM: stop accepting, let requests in flight finish for up to `server.shutdown_grace` seconds, exit 0.
SIGHUP: re-read and validate the config file; a valid one is swapped in without dropping connections,
an invalid one is logged key by key and the running config kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from authproxy import app as composition
from authproxy import metrics
from authproxy.config import Config, ConfigError, load, split_host_port
from authproxy.provider.broker import BROKER_ENV, BrokerServer, BrokerThread

log = structlog.get_logger("authproxy.server")

EXIT_CANNOT_LISTEN = 2
EXIT_GAVE_UP = 1
# One accept queue serves every worker; the kernel caps it at net.core.somaxconn.
BACKLOG = 4096
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)
# A slot whose worker dies this many times within FAILURE_WINDOW seconds will not start: give up.
FAST_FAILURES = 5
FAILURE_WINDOW = 30.0
# How often the supervisor looks at its flags when no worker exits meanwhile.
TICK = 0.1
# errno values that mean "this address cannot be listened on" (rather than a fault of the program).
_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


class ListenError(Exception):
    """An address this process cannot listen on, and why, worded for the operator on one line."""

    def __init__(self, address: str, error: OSError) -> None:
        self.address = address
        self.reason = _reason(error)
        super().__init__(f"cannot listen on {address}: {self.reason}")


def _reason(error: OSError) -> str:
    # asyncio and http.server wrap the errno's text in longer messages; the errno alone says it best.
    if isinstance(error, socket.gaierror) or not error.errno or error.errno < 0:
        text = error.strerror or str(error)
    else:
        text = os.strerror(error.errno)
    return text[:1].lower() + text[1:]


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as `loop.create_server` would make them.

    SO_REUSEADDR lets a restart bind over connections left in TIME_WAIT (Linux still refuses a port
    another socket listens on); SO_REUSEPORT is never set, so no other process can share the port. An
    IPv6 socket is IPv6-only, as asyncio makes it, so `[::]` and `0.0.0.0` are separate listeners. Port 0
    picks a free port, the same one for every address.
    """
    address = show_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(address, exc) from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(address, exc) from exc
    return sockets


def run(path: str, config: Config) -> int:
    """Serve until told to stop; the exit code of the process."""
    workers = config.server.workers or os.cpu_count() or 1
    try:
        sockets = bind(*split_host_port(config.server.listen))
        if workers == 1:
            _run_loop(_worker(path, config, sockets))
            return 0
        return Supervisor(path, config, workers, sockets).run()
    except ListenError as exc:
        print(f"authproxy: {exc}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_LISTEN


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional extra: authproxy[fast]

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main)


async def _worker(path: str, config: Config, sockets: list[socket.socket]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed first, so that a stop asked for during start-up is kept, not lost or a traceback.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    app = composition.build_app(config)
    runner = composition.make_runner(app, config.server.shutdown_grace)
    try:
        await _setup(runner, config)
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app, path))
        _tune_gc()
        log.info("worker.ready", pid=os.getpid(), listen=config.server.listen)
        await stop.wait()
        log.info("worker.stopping", pid=os.getpid(), grace=config.server.shutdown_grace)
    finally:
        # Closes the listening socket first, then waits for requests in flight up to shutdown_timeout.
        # After a failed start it closes what the start opened (the client sessions).
        await runner.cleanup()
    log.info("worker.stopped", pid=os.getpid())


async def _setup(runner: web.AppRunner, config: Config) -> None:
    """Start the application; a single worker's metrics listener is bound here (by the application)."""
    try:
        await runner.setup()
    except OSError as exc:
        # The proxy's own port is bound already, so a bind error here is the metrics listener's.
        listen = config.server.metrics_listen
        if listen and not metrics.multiprocess_mode() and exc.errno in _BIND_ERRNOS:
            raise ListenError(listen, exc) from exc
        raise


def _tune_gc() -> None:
    """Run the cycle collector less often, and never again over what start-up built.

    Every request allocates a few hundred container objects, so the default young-generation
    threshold (700) started a collection every couple of requests: measured at about 8 us of CPU per
    request under load, against 2 us with a threshold of 10,000. Freezing moves the imported modules,
    the config and the application out of the collector's sight for good. Reference cycles, which
    request handling seldom makes, are still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _reload(app: web.Application, path: str) -> None:
    try:
        config = load(path)
    except ConfigError as exc:
        log.error("config.reload_rejected", problems=exc.problems, kept="running configuration")
        return
    try:
        kept = composition.reload(app, config)
    except (ValueError, RuntimeError) as exc:
        log.error("config.reload_rejected", problems=[str(exc)], kept="running configuration")
        return
    log.info("config.reloaded", pid=os.getpid(), needs_restart=kept)


def _worker_process(
    path: str, sockets: list[socket.socket], report: Connection, log_format: str, log_level: str
) -> None:
    """Entry point of a supervised worker (a fresh interpreter under the spawn start method).

    The config file is read again here, so a worker started after an edit runs the edited file. A
    worker that cannot start sends the reason to the supervisor on `report`, logs it, and exits 1.
    """
    from authproxy import logs

    logs.configure(log_format, log_level)
    try:
        try:
            config = load(path)
        except ConfigError as exc:
            raise _StartFailure("invalid configuration: " + "; ".join(exc.problems)) from exc
        logs.configure(config.logging.format, config.logging.level)
        _run_loop(_worker(path, config, sockets))
    except (_StartFailure, ListenError) as exc:
        _report(report, str(exc))
        log.error("worker.failed", pid=os.getpid(), cause=str(exc))
        raise SystemExit(1) from None
    except Exception as exc:
        # Unexpected: the supervisor gets one line, the log gets the traceback.
        _report(report, f"{type(exc).__name__}: {exc}")
        log.exception("worker.failed", pid=os.getpid(), cause=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    finally:
        report.close()


class _StartFailure(Exception):
    """A worker cannot start, for a reason its message states fully."""


def _report(report: Connection, cause: str) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone; the log line still tells
        report.send(cause)


@dataclass
class _Worker:
    process: BaseProcess
    report: Connection  # the worker's reason, if it fails to start


class Supervisor:
    def __init__(self, path: str, config: Config, workers: int, sockets: list[socket.socket]) -> None:
        self._path = path
        self._config = config
        self._count = workers
        self._sockets = sockets
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._due: dict[int, float] = {}  # slots waiting to be (re)started, and when
        self._deaths: dict[int, list[float]] = {}
        self._metrics_dir: str | None = None
        self._broker: BrokerThread | None = None
        self._broker_dir: str | None = None
        self._stop_requested = False
        self._reload_requested = False

    def run(self) -> int:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        try:
            self._serve_metrics()
            self._start_broker()
            self._due = dict.fromkeys(range(self._count), 0.0)
            self._start_due()
            log.info("supervisor.ready", workers=self._count, listen=self._config.server.listen)
            code = self._supervise()
        finally:
            self._shutdown()
        log.info("supervisor.stopped", exitcode=code)
        return code

    def _supervise(self) -> int:
        """Keep the workers running until asked to stop (0) or a slot keeps failing (EXIT_GAVE_UP)."""
        while not self._stop_requested:
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
            for slot, worker in list(self._workers.items()):
                if worker.process.is_alive():
                    continue
                del self._workers[slot]
                if not self._record_death(slot, worker):
                    return EXIT_GAVE_UP
            self._start_due()
            sentinels = [worker.process.sentinel for worker in self._workers.values()]
            timeout = min([TICK, *(due - time.monotonic() for due in self._due.values())])
            wait(sentinels, max(0.0, timeout))
        return 0

    def _record_death(self, slot: int, worker: _Worker) -> bool:
        """Log a dead worker and schedule its restart; False if the slot has failed too often."""
        process = worker.process
        cause = _received(worker.report) or _exit_cause(process.exitcode)
        log.error("worker.died", slot=slot, pid=process.pid, exitcode=process.exitcode, cause=cause)
        if self._metrics_dir is not None and process.pid is not None:
            metrics.forget_process(process.pid, self._metrics_dir)
        now = time.monotonic()
        deaths = [*(t for t in self._deaths.get(slot, []) if now - t < FAILURE_WINDOW), now]
        self._deaths[slot] = deaths
        if len(deaths) >= FAST_FAILURES:
            log.error(
                "supervisor.giving_up",
                reason=f"a worker died {len(deaths)} times within {FAILURE_WINDOW:g} s",
                cause=cause,
            )
            return False
        # A worker that keeps dying is restarted with growing pauses, not in a tight loop.
        self._due[slot] = now + RESTART_BACKOFF[min(len(deaths), len(RESTART_BACKOFF)) - 1]
        return True

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._due.items()):
            if due <= now and not self._stop_requested:
                del self._due[slot]
                self._workers[slot] = self._start()

    def _start(self) -> _Worker:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_process,
            args=(self._path, self._sockets, writer, self._config.logging.format, self._config.logging.level),
            daemon=False,
        )
        try:
            process.start()
        finally:
            writer.close()  # the worker has its own copy; reading then ends when the worker does
        return _Worker(process, reader)

    def _serve_metrics(self) -> None:
        """With a metrics listener, the workers write to files here and this process serves the sum."""
        listen = self._config.server.metrics_listen
        if not listen:
            return
        self._metrics_dir = tempfile.mkdtemp(prefix="authproxy-metrics-")
        os.environ[metrics.MULTIPROCESS_ENV] = self._metrics_dir  # inherited by every worker started
        host, port = split_host_port(listen)
        try:
            metrics.serve_aggregated(host, port, self._metrics_dir)
        except OSError as exc:
            raise ListenError(listen, exc) from exc

    def _start_broker(self) -> None:
        """The check broker the workers share session-check answers through (`provider.broker`), on a
        Unix socket in a directory of this process's own; the workers find it in their environment."""
        self._broker_dir = tempfile.mkdtemp(prefix="authproxy-broker-")  # mode 0700
        path = str(Path(self._broker_dir) / "checks.sock")
        centralauth = self._config.centralauth
        # The holder of a key gets as long as a CentralAuth call may take, and a little more.
        server = BrokerServer(max_entries=centralauth.cache_max_entries, lease=centralauth.timeout + 1.0)
        self._broker = BrokerThread(path, server)
        self._broker.start()
        os.environ[BROKER_ENV] = path  # inherited by every worker started

    def _shutdown(self) -> None:
        """Stop every worker (gracefully, then by force after the grace) and release what was held."""
        # The supervisor's copy of the listening socket would keep connections queued that no worker
        # will accept any more; closed, the queue goes away with the last worker's listener.
        for sock in self._sockets:
            sock.close()
        workers = list(self._workers.values())
        for worker in workers:
            _send(worker.process, signal.SIGTERM)
        deadline = time.monotonic() + self._config.server.shutdown_grace + 5
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.report.close()
        self._workers.clear()
        if self._broker is not None:
            self._broker.stop()
        if self._broker_dir is not None:
            shutil.rmtree(self._broker_dir, ignore_errors=True)
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _reload(self) -> None:
        try:
            self._config = load(self._path)
        except ConfigError as exc:
            log.error("config.reload_rejected", problems=exc.problems, kept="running configuration")
            return
        for worker in self._workers.values():
            _send(worker.process, signal.SIGHUP)

    # Signal handlers run between any two bytecodes of the main loop: they only set flags.

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop_requested = True

    def _on_reload(self, signum: int, frame: object) -> None:
        self._reload_requested = True


def _send(process: BaseProcess, signum: int) -> None:
    """Signal a worker unless it has already exited (and been reaped, so its pid may be reused)."""
    if process.pid is None or process.exitcode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


def _received(report: Connection) -> str | None:
    try:
        if report.poll():
            message = report.recv()
            return str(message)
    except (EOFError, OSError):
        pass
    finally:
        report.close()
    return None


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"
