"""The batched per-request metrics: what a scrape shows is what direct prometheus-client calls show.

The hot path counts in plain numbers and hands them over in one batch (before a scrape, and at most
`FLUSH_INTERVAL` after an observation); these tests compare the exposition with a registry fed the
same observations one by one, bucket boundaries included.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from authproxy import metrics
from authproxy.metrics import LATENCY_BUCKETS, Metrics

# Every bound itself (a value equal to a bound belongs to that bucket), values between, and beyond the last.
SAMPLES = [*LATENCY_BUCKETS, 0.0, 0.0007, 0.003, 0.2, 7.0, 31.0, 120.0]


def _lines(registry: CollectorRegistry, prefix: str) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line.startswith(prefix) and "_created" not in line)


def test_batched_histograms_equal_direct_observations() -> None:
    batched = Metrics()
    for value in SAMPLES:
        batched.observe_request("proxy", 200, value)
        batched.observe_upstream(value)
    batched.flush()

    direct = CollectorRegistry()
    latency = Histogram(
        "authproxy_request_duration_seconds", "", ["route"], buckets=LATENCY_BUCKETS, registry=direct
    )
    upstream = Histogram("authproxy_upstream_response_seconds", "", buckets=LATENCY_BUCKETS, registry=direct)
    for value in SAMPLES:
        latency.labels("proxy").observe(value)
        upstream.observe(value)
    for prefix in ("authproxy_request_duration_seconds", "authproxy_upstream_response_seconds"):
        assert _lines(batched.registry, prefix) == _lines(direct, prefix)


def test_counts_add_up_over_several_flushes_and_nothing_is_counted_twice() -> None:
    batched = Metrics()
    for _ in range(3):
        batched.observe_request("proxy", 200, 0.001)
        batched.observe_request("proxy", 502, 0.001)
        batched.observe_request(None, 404, 0.001)
        batched.count_session_check("hit")
        batched.flush()
    batched.flush()  # nothing pending: adds nothing
    value = batched.registry.get_sample_value
    assert value("authproxy_requests_total", {"route": "proxy", "status": "200"}) == 3
    assert value("authproxy_requests_total", {"route": "proxy", "status": "502"}) == 3
    assert value("authproxy_requests_total", {"route": "other", "status": "404"}) == 3
    assert value("authproxy_request_duration_seconds_count", {"route": "proxy"}) == 6
    assert value("authproxy_session_checks_total", {"source": "hit"}) == 3
    # A series appears once observed, and no other: no zero-valued (proxy, 404) from the batching.
    assert value("authproxy_requests_total", {"route": "proxy", "status": "404"}) is None


def test_in_flight_is_current_without_a_flush() -> None:
    batched = Metrics()
    batched.request_started()
    batched.request_started()
    batched.request_finished()
    assert batched.registry.get_sample_value("authproxy_requests_in_flight") == 1


async def test_observations_reach_prometheus_within_the_flush_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "FLUSH_INTERVAL", 0.05)
    batched = Metrics()
    batched.observe_request("proxy", 200, 0.001)
    assert (
        batched.registry.get_sample_value("authproxy_requests_total", {"route": "proxy", "status": "200"})
        is None
    )
    await asyncio.sleep(0.2)
    assert (
        batched.registry.get_sample_value("authproxy_requests_total", {"route": "proxy", "status": "200"})
        == 1
    )
    # A later observation schedules the next flush: the loop's flush is not a one-off.
    batched.observe_request("proxy", 200, 0.001)
    await asyncio.sleep(0.2)
    assert (
        batched.registry.get_sample_value("authproxy_requests_total", {"route": "proxy", "status": "200"})
        == 2
    )
