"""Tracing (`[tracing]`): the spans a real collector receives, and the trace context the upstream gets.

A small OTLP/HTTP receiver on loopback decodes what the proxy exports with OpenTelemetry's own protobuf
types; the fake CentralAuth, the echo upstream and the proxy are the real ones. Spans are flushed by
the test (from a thread: the receiver runs on this event loop) rather than waited for.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from conftest import CLIENT_ID, CLIENT_SECRET, ProxyFactory
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pytest_aiohttp import AiohttpServer
from support.configs import VALID
from support.echo import received_headers
from support.harness import Browser, Proxy, free_port
from support.logins import signed_in_without_landing

from authproxy.runtime import LIVE

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"routes": {"skip_auth": ["^/public/"]}}
FORGED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FORGED_SPAN = "00f067aa0ba902b7"
FORGED = f"00-{FORGED_TRACE}-{FORGED_SPAN}-01"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # the protobuf's SpanKind values


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]


@dataclass
class Collector:
    """What the receiver got: decoded spans, and the raw bodies (to look for secrets in every byte)."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def clear(self) -> None:
        self.spans.clear()
        self.bodies.clear()

    def one(self, name: str, **attributes: Any) -> Span:
        found = [
            span
            for span in self.spans
            if span.name == name and all(span.attributes.get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (name, attributes, self.spans)
        return found[0]

    def children(self, parent: Span) -> list[Span]:
        return [span for span in self.spans if span.parent == parent.span_id]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


@pytest.fixture
async def collector(aiohttp_server: AiohttpServer) -> Collector:
    got = Collector()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        assert request.content_type == "application/x-protobuf"
        got.bodies.append(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "authproxy-under-test"
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.spans.append(
                        Span(
                            span.name,
                            span.kind,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = await aiohttp_server(app)
    got.url = str(server.make_url("")).rstrip("/")
    return got


def tracing(collector: Collector, **settings: Any) -> dict[str, Any]:
    return {"otlp_endpoint": collector.url, "service_name": "authproxy-under-test", **settings}


async def flush(proxy: Proxy) -> None:
    tracer = proxy.app[LIVE].runtime.tracing
    assert tracer is not None
    assert await asyncio.to_thread(tracer.flush)


async def echoed(http: ClientSession, url: str, **headers: str) -> dict[str, str]:
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        assert response.status == 200, await response.text()
        return received_headers(json.loads(await response.read()))


def traceparent(value: str) -> tuple[str, str, bool]:
    """Trace id, parent id and the sampled flag (the other flags, such as level 2's "random", vary)."""
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent_id) == 16
    return trace_id, parent_id, bool(int(flags, 16) & 1)


# --- the spans ----------------------------------------------------------------------------------------


async def test_a_request_is_a_trace_of_its_session_check_centralauth_call_and_upstream_exchange(
    proxy_factory: ProxyFactory, collector: Collector, browser: Browser
) -> None:
    proxy = await proxy_factory(tracing=tracing(collector))
    signed = await signed_in_without_landing(proxy, browser)
    await flush(proxy)
    # The login callback: its token exchange and first userinfo call, under the callback's request.
    callback = collector.one("GET /oauth2/callback")
    assert callback.kind == SERVER and callback.parent == ""
    assert {span.name for span in collector.children(callback)} >= {"centralauth verify"}
    collector.clear()

    first = await echoed(browser.http, f"{proxy.url}/app/one")
    second = await echoed(browser.http, f"{proxy.url}/app/two")
    await flush(proxy)

    request = collector.one("GET /{tail}", **{"url.path": "/app/one"})
    assert request.kind == SERVER and request.parent == ""
    assert request.attributes["http.request.method"] == "GET"
    assert request.attributes["http.route"] == "/{tail}"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["authproxy.request_id"] == first["x-request-id"]
    check, upstream = sorted(collector.children(request), key=lambda span: span.name)
    assert (check.name, check.kind) == ("session check", INTERNAL)
    assert check.attributes["authproxy.session_check.outcome"] == "miss"
    (call,) = collector.children(check)
    assert (call.name, call.kind) == ("centralauth userinfo", CLIENT)
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["url.full"].endswith("/api/v1/userinfo")
    assert (upstream.name, upstream.kind) == ("upstream GET", CLIENT)
    assert upstream.attributes["http.response.status_code"] == 200
    assert {span.trace_id for span in (request, check, call, upstream)} == {request.trace_id}
    # The upstream's traceparent is the upstream exchange's own context, in the request's trace.
    assert traceparent(first["traceparent"]) == (request.trace_id, upstream.span_id, True)

    again = collector.one("GET /{tail}", **{"url.path": "/app/two"})
    (cached,) = [span for span in collector.children(again) if span.name == "session check"]
    assert cached.attributes["authproxy.session_check.outcome"] == "hit"
    assert collector.children(cached) == []  # no CentralAuth call
    assert traceparent(second["traceparent"])[0] == again.trace_id != request.trace_id

    # Nothing secret in any span, in any byte the collector received.
    for body in collector.bodies:
        for secret in (signed.value, signed.token, CLIENT_SECRET):
            assert secret.encode() not in body
    for span in collector.spans:
        assert not any(
            name in key.lower() for key in span.attributes for name in ("authorization", "cookie", "token")
        )


async def test_an_untrusted_clients_trace_context_is_neither_the_parent_nor_forwarded(
    proxy_factory: ProxyFactory, collector: Collector, http: ClientSession
) -> None:
    proxy = await proxy_factory(tracing=tracing(collector), **PUBLIC)
    got = await echoed(http, f"{proxy.url}/public/x", traceparent=FORGED, tracestate="evil=1")
    await flush(proxy)
    request = collector.one("GET /{tail}")
    assert request.parent == "" and request.trace_id != FORGED_TRACE
    (upstream,) = collector.children(request)
    assert traceparent(got["traceparent"]) == (request.trace_id, upstream.span_id, True)
    assert "tracestate" not in got


async def test_a_trusted_proxys_trace_context_is_the_parent_and_the_upstream_gets_the_proxys_own(
    proxy_factory: ProxyFactory, collector: Collector, http: ClientSession
) -> None:
    proxy = await proxy_factory(
        tracing=tracing(collector), server={"trusted_proxies": ["127.0.0.1/32"]}, **PUBLIC
    )
    got = await echoed(http, f"{proxy.url}/public/x", traceparent=FORGED, tracestate="front=1")
    await flush(proxy)
    request = collector.one("GET /{tail}")
    assert (request.trace_id, request.parent) == (FORGED_TRACE, FORGED_SPAN)
    (upstream,) = collector.children(request)
    assert traceparent(got["traceparent"]) == (FORGED_TRACE, upstream.span_id, True)
    assert got["tracestate"] == "front=1"


async def test_two_traceparent_lines_from_a_trusted_proxy_are_no_parent(
    proxy_factory: ProxyFactory, collector: Collector, http: ClientSession
) -> None:
    proxy = await proxy_factory(
        tracing=tracing(collector), server={"trusted_proxies": ["127.0.0.1/32"]}, **PUBLIC
    )
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    headers = [("traceparent", FORGED), ("traceparent", other)]
    async with http.get(f"{proxy.url}/public/x", headers=headers) as response:
        got = received_headers(json.loads(await response.read()))
    await flush(proxy)
    request = collector.one("GET /{tail}")
    assert request.parent == "" and request.trace_id not in (FORGED_TRACE, "1" * 32)
    assert traceparent(got["traceparent"])[0] == request.trace_id


async def test_with_sample_ratio_0_no_span_is_sent_and_the_upstream_gets_a_not_sampled_traceparent(
    proxy_factory: ProxyFactory, collector: Collector, http: ClientSession
) -> None:
    proxy = await proxy_factory(tracing=tracing(collector, sample_ratio=0), **PUBLIC)
    got = [await echoed(http, f"{proxy.url}/public/{n}", traceparent=FORGED) for n in range(5)]
    await flush(proxy)
    assert collector.spans == [] and collector.bodies == []
    ids = {traceparent(headers["traceparent"]) for headers in got}
    assert len({trace_id for trace_id, _, _ in ids}) == 5
    assert all(not sampled and trace_id != FORGED_TRACE for trace_id, _, sampled in ids)


async def test_an_unreachable_collector_leaves_requests_working_and_shutdown_bounded(
    proxy_factory: ProxyFactory, http: ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await proxy_factory(tracing={"otlp_endpoint": dead}, **PUBLIC)
    started = time.monotonic()
    for n in range(50):
        got = await echoed(http, f"{proxy.url}/public/{n}")
        assert "traceparent" in got
    assert time.monotonic() - started < 5
    tracer = proxy.app[LIVE].runtime.tracing
    assert tracer is not None
    started = time.monotonic()
    await tracer.close(grace=1.0)
    assert time.monotonic() - started < 2


# --- tracing off --------------------------------------------------------------------------------------


async def test_without_tracing_a_clients_trace_context_passes_only_from_a_trusted_proxy(
    proxy_factory: ProxyFactory, http: ClientSession
) -> None:
    untrusted = await proxy_factory(**PUBLIC)
    trusted = await proxy_factory(server={"trusted_proxies": ["127.0.0.1/32"]}, **PUBLIC)
    assert untrusted.app[LIVE].runtime.tracing is None
    headers = {"traceparent": FORGED, "TraceState": "front=1"}
    got = await echoed(http, f"{untrusted.url}/public/x", **headers)
    assert "traceparent" not in got and "tracestate" not in got
    got = await echoed(http, f"{trusted.url}/public/x", **headers)
    assert got["traceparent"] == FORGED and got["tracestate"] == "front=1"


async def test_an_untrusted_clients_trace_context_is_removed_in_every_spelling_and_every_line(
    proxy_factory: ProxyFactory, http: ClientSession
) -> None:
    """Other cases, repeated lines and a split tracestate: none of it reaches the upstream."""
    proxy = await proxy_factory(**PUBLIC)
    sent = CIMultiDict(
        [("TRACEPARENT", FORGED), ("Traceparent", FORGED), ("tracestate", "a=1"), ("TraceState", "b=2")]
    )
    async with http.get(f"{proxy.url}/public/x", headers=sent) as response:
        assert response.status == 200
        payload = json.loads(await response.read())
    names = [str(name).lower() for name, _ in payload["headers"]]
    assert "traceparent" not in names and "tracestate" not in names


def test_without_tracing_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    script = f"""
import asyncio, sys
from aiohttp import web
from authproxy.app import build_app, make_runner
from authproxy.config import Config
import authproxy.cli, authproxy.server

async def main():
    config = Config(
        server={{"listen": "127.0.0.1:4180", "public_url": "http://127.0.0.1"}},
        centralauth={{"client_id": "{CLIENT_ID}", "client_secret": "{CLIENT_SECRET}"}},
        session={{"cookie_secrets": ["{secrets.token_urlsafe(32)}"], "cookie_secure": False}},
        upstreams=[{{"url": "http://127.0.0.1:9"}}],
    )
    runner = make_runner(build_app(config))
    await runner.setup()
    await runner.cleanup()

asyncio.run(main())
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=60)


# --- configuration ------------------------------------------------------------------------------------


def check_config(tmp_path: Path, tracing_table: str, *prelude: str) -> tuple[int, str]:
    path = tmp_path / "config.toml"
    path.write_text(VALID + "\n[tracing]\n" + tracing_table, encoding="utf-8")
    script = "\n".join(
        [
            *prelude,
            "from authproxy.cli import main",
            f"raise SystemExit(main(['check-config', '-c', {str(path)!r}]))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.usefixtures("no_authproxy_env")
@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            'otlp_endpoint = "127.0.0.1:4318"',
            "tracing.otlp_endpoint: must be an absolute http:// or https://",
        ),
        ('otlp_endpoint = "grpc://collector:4317"', "tracing.otlp_endpoint: must be an absolute http://"),
        (
            'otlp_endpoint = "http://user:pw@collector:4318"',
            "tracing.otlp_endpoint: must not contain credentials",
        ),
        ('otlp_endpoint = "http://collector:4318/?x=1"', "tracing.otlp_endpoint: must not carry a query"),
        ("otlp_endpoint = 4318", "tracing.otlp_endpoint: Input should be a valid string"),
        ("sample_ratio = 1.5", "tracing.sample_ratio: Input should be less than or equal to 1"),
        ("sample_ratio = -0.1", "tracing.sample_ratio: Input should be greater than or equal to 0"),
        ('sample_ratio = "most"', "tracing.sample_ratio: Input should be a valid number"),
        ('service_name = ""', "tracing.service_name: String should have at least 1 character"),
        ("sampel_ratio = 0.5", "tracing.sampel_ratio: unknown key; did you mean 'sample_ratio'?"),
    ],
)
def test_a_bad_tracing_value_names_its_key(tmp_path: Path, table: str, expected: str) -> None:
    code, output = check_config(tmp_path, table)
    assert code == 2, output
    assert expected in output and "Traceback" not in output
    assert "pw@" not in output


@pytest.mark.usefixtures("no_authproxy_env")
def test_tracing_without_the_otel_extra_is_one_config_error(tmp_path: Path) -> None:
    # The interpreter as it would be without the packages: importing them fails.
    block = "import sys; sys.modules['opentelemetry'] = None"
    code, output = check_config(tmp_path, 'otlp_endpoint = "http://127.0.0.1:4318"', block)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert lines[0].startswith("tracing.otlp_endpoint: ") and "authproxy[otel]" in lines[0]
    code, output = check_config(tmp_path, 'otlp_endpoint = "http://127.0.0.1:4318/"')
    assert code == 0, output
