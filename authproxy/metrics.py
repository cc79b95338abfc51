"""Prometheus metrics, one registry per application, served on `server.metrics_listen`.

Request counts and latency are recorded by the access logger (aiohttp calls it once per request
anyway), so the hot path pays for no extra middleware; in-flight requests are counted by the request
middleware. Label values come from small fixed sets (route names, outcomes), never from user input.

With several workers, prometheus-client's multiprocess mode is used: each worker writes its values to
files in `PROMETHEUS_MULTIPROC_DIR`, and the supervisor alone serves the sum of all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUTE_CLASSES = {
    "login": "auth",
    "callback": "auth",
    "sign_in": "auth",
    "sign_out": "auth",
    "sign_out_post": "auth",
    "forward_auth": "forward_auth",
    "userinfo": "userinfo",
    "health": "health",
    "ready": "health",
    "proxy": "proxy",
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
            "Session checks by source: hit, miss, coalesced (waited on another call) or stale",
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
        self._request_series: dict[tuple[str | None, int], tuple[Counter, Histogram]] = {}
        self._check_series: dict[str, Counter] = {}

    def track_cache_size(self, size: Callable[[], int]) -> None:
        if multiprocess_mode():
            self._cache_size = size  # function gauges do not cross processes; refreshed per request
        else:
            self.cache_entries.set_function(lambda: float(size()))

    def observe_request(self, route_name: str | None, status: int, seconds: float) -> None:
        series = self._request_series.get((route_name, status))
        if series is None:
            route = ROUTE_CLASSES.get(route_name or "", "other")
            series = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._request_series[(route_name, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        if self._cache_size is not None:
            self.cache_entries.set(self._cache_size())

    def count_session_check(self, source: str) -> None:
        counter = self._check_series.get(source)
        if counter is None:
            counter = self._check_series[source] = self.session_checks.labels(source)
        counter.inc()

    def app(self) -> web.Application:
        """The application served on `metrics_listen`."""

        async def scrape(request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        return app
