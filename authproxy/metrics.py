"""Prometheus metrics, one registry per application, served on `server.metrics_listen`.

Request counts and latency are recorded by the access logger (aiohttp calls it once per request
anyway), so the hot path pays for no extra middleware; in-flight requests are counted by the request
context (`routes/common.in_context`). Label values come from small fixed sets (route names, outcomes),
never from user input.

The per-request series (request counts and latencies, upstream latency, session checks, requests in
flight) are kept in plain numbers and handed to prometheus-client in one batch, before every scrape and
at most a second after an observation. prometheus-client takes a lock for every increment (and, with
several workers, writes a memory-mapped file), which costs more than the rest of a cache-hit request's
bookkeeping together.

With several workers, prometheus-client's multiprocess mode is used: each worker writes its values to
files in `PROMETHEUS_MULTIPROC_DIR`, and the supervisor alone serves the sum of all of them. The
supervisor's figures therefore trail the workers' by up to one second.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 1.0  # seconds an observation may wait before prometheus-client sees it
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUTE_CLASSES = {
    "login": "auth",
    "callback": "auth",
    "sign_in": "auth",
    "sign_out": "auth",
    "sign_out_post": "auth",
    "forward_auth": "forward_auth",
    "forward_auth_path": "forward_auth",
    "userinfo": "userinfo",
    "health": "health",
    "ready": "health",
    "proxy": "proxy",
    "compat_login": "auth",
    "compat_affirm": "auth",
    "compat_callback": "auth",
    "compat_logout": "auth",
    "compat_logout_post": "auth",
    "compat_user": "userinfo",
    "jwks": "auth",
}


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


def serve_aggregated(listen_host: str, port: int, directory: str) -> None:
    """Serve the sum of every worker's metrics from this (supervisor) process, in a thread."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=listen_host, registry=registry)


def forget_process(pid: int, directory: str) -> None:
    multiprocess.mark_process_dead(pid, path=directory)  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "authproxy_requests",
            "Requests answered, by route class and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "authproxy_request_duration_seconds",
            "Time to answer a request, by route class",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "authproxy_requests_in_flight", "Requests being answered", registry=r, multiprocess_mode="livesum"
        )
        self.upstream_latency = Histogram(
            "authproxy_upstream_response_seconds",
            "Time from sending a request upstream to its response headers",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.userinfo_calls = Counter(
            "authproxy_userinfo_calls", "CentralAuth userinfo calls, by outcome", ["outcome"], registry=r
        )
        self.session_checks = Counter(
            "authproxy_session_checks",
            "Session checks by source: hit, miss, shared (another worker or replica asked), "
            "coalesced (waited on another call) or stale",
            ["source"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "authproxy_session_cache_entries",
            "Cached session-check answers",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._cache_size: Callable[[], int] | None = None
        self.revoked = Counter(
            "authproxy_sessions_revoked", "Sessions ended because CentralAuth refused them", registry=r
        )
        self.logins = Counter(
            "authproxy_logins", "Completed login attempts, by outcome", ["outcome"], registry=r
        )
        self.logouts = Counter("authproxy_logouts", "Sign-outs, by outcome", ["outcome"], registry=r)
        # Labelled children, looked up once: `labels()` costs more than the increment itself. Filled on
        # first use, so /metrics lists a series only once it has been observed. Keys come from small
        # fixed sets (route classes, HTTP statuses, check sources).
        self._request_series: dict[tuple[str | None, int], Counter] = {}
        self._latency_series: dict[str | None, Histogram] = {}
        self._check_series: dict[str, Counter] = {}
        # What the hot path observed since the last flush.
        self._requests: dict[tuple[str | None, int], int] = {}
        self._latencies: dict[str | None, _Pending] = {}
        self._upstream = _Pending()
        self._checks: dict[str, int] = {}
        self._in_flight = 0
        # A flush is scheduled (or a loop that stopped before running it left this set: the next scrape,
        # or the application's cleanup, flushes and clears it).
        self._flush_due = False
        if not multiprocess_mode():
            self.in_flight.set_function(lambda: float(self._in_flight))

    def track_cache_size(self, size: Callable[[], int]) -> None:
        if multiprocess_mode():
            self._cache_size = size  # function gauges do not cross processes; refreshed per flush
        else:
            self.cache_entries.set_function(lambda: float(size()))

    def request_started(self) -> None:
        self._in_flight += 1

    def request_finished(self) -> None:
        self._in_flight -= 1

    def observe_request(self, route_name: str | None, status: int, seconds: float) -> None:
        key = (route_name, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        pending = self._latencies.get(route_name)
        if pending is None:
            pending = self._latencies[route_name] = _Pending()
        pending.add(seconds)
        if not self._flush_due:
            self._schedule()

    def observe_upstream(self, seconds: float) -> None:
        self._upstream.add(seconds)

    def count_session_check(self, source: str) -> None:
        self._checks[source] = self._checks.get(source, 0) + 1
        if not self._flush_due:
            self._schedule()

    def flush(self) -> None:
        """Hand every pending observation to prometheus-client."""
        self._flush_due = False
        requests, self._requests = self._requests, {}
        latencies, self._latencies = self._latencies, {}
        checks, self._checks = self._checks, {}
        for (route_name, status), count in requests.items():
            counter = self._request_series.get((route_name, status))
            if counter is None:
                route = ROUTE_CLASSES.get(route_name or "", "other")
                counter = self.requests.labels(route, str(status))
                self._request_series[(route_name, status)] = counter
            counter.inc(count)
        for route_name, pending in latencies.items():
            histogram = self._latency_series.get(route_name)
            if histogram is None:
                route = ROUTE_CLASSES.get(route_name or "", "other")
                histogram = self._latency_series[route_name] = self.latency.labels(route)
            pending.into(histogram)
        self._upstream.into(self.upstream_latency)
        for source, count in checks.items():
            counter = self._check_series.get(source)
            if counter is None:
                counter = self._check_series[source] = self.session_checks.labels(source)
            counter.inc(count)
        if multiprocess_mode():
            self.in_flight.set(self._in_flight)
            if self._cache_size is not None:
                self.cache_entries.set(self._cache_size())

    def _schedule(self) -> None:
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due = True
        loop.call_later(FLUSH_INTERVAL, self.flush)

    def app(self) -> web.Application:
        """The application served on `metrics_listen`."""

        async def scrape(request: web.Request) -> web.Response:
            self.flush()
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        return app


class _Pending:
    """Observations of one histogram since the last flush: a count per bucket, and their sum."""

    __slots__ = ("counts", "empty", "total")

    def __init__(self) -> None:
        # One more than the bounds: prometheus-client's last bucket is +Inf.
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.empty = True

    def add(self, seconds: float) -> None:
        # The first bound not below the value: prometheus-client's `value <= bound` rule.
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.empty = False

    def into(self, histogram: Histogram) -> None:
        """Add these observations to `histogram` (built with LATENCY_BUCKETS) and start again.

        prometheus-client has no call that adds many observations at once; its histogram keeps one
        value per bucket (not cumulative) and one for the sum, which are added to here directly.
        """
        if self.empty:
            return
        buckets = histogram._buckets
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
                self.counts[index] = 0
        histogram._sum.inc(self.total)
        self.total = 0.0
        self.empty = True
