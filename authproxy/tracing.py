"""Tracing with OpenTelemetry, on when `[tracing] otlp_endpoint` is set (the optional `authproxy[otel]`).

Why a module of its own: a proxy that does not trace must pay nothing for it. OpenTelemetry is imported
here only, and only by `start()`, once a configuration asks for tracing; without it `runtime.tracing` is
None and each place that makes a span costs one `is None` test, with no tracer, no context and no call.

What is traced, and where the spans are made:

- the request: a server span, opened and closed by the request context (`routes/common.in_context`);
- the session check: around the checker call (`gate.py`), with the cache's answer as
  `authproxy.session_check.outcome` ("hit", "miss", "coalesced", "stale", "dead", "rejected",
  "unavailable");
- each CentralAuth call: a client span (`provider/client.py`), under the session check when there is
  one, under the request at the login callback. The client has no runtime of its own to ask, so the
  request context of a traced request sets `ACTIVE`, which the checker's fetch task inherits;
- the upstream exchange: a client span around the forwarder (`routes/proxy.py`), whose context the
  upstream receives as W3C `traceparent` / `tracestate`.

Trace context from the client is believed only from a trusted proxy (`[server] trusted_proxies`), like
its `X-Forwarded-For` and `X-Request-Id`: from a trusted peer it is the request span's parent; from
anyone else it is ignored. Either way the upstream never receives it as sent: it gets the proxy's own
context (the upstream exchange span), never a client's (`core.headers.UpstreamHeaders` strips the
incoming one). A trace the ratio sampler leaves out is still propagated, flagged not sampled, so the
upstream's tracer makes the same decision.

No span attribute holds a token, a cookie, an `Authorization` header or a query string. Spans leave in
batches from a background thread: a bounded queue (spans beyond it are dropped, never waited for), a
timeout on each export and on the flush at shutdown. A collector that is slow or gone costs requests
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["ACTIVE", "OUTCOME", "REQUEST_ID", "Step", "Tracing", "lifetime", "start"]

# The tracing of the request being answered; None (the default) when it is not traced.
ACTIVE: ContextVar[Tracing | None] = ContextVar("authproxy_tracing", default=None)

OUTCOME = "authproxy.session_check.outcome"
REQUEST_ID = "authproxy.request_id"

# The span queue, in spans: when the collector falls behind, new spans are dropped rather than held.
QUEUE_SIZE = 2048
BATCH_SIZE = 512
SCHEDULE_DELAY = 1.0  # seconds between exports when the queue is not filling up
EXPORT_TIMEOUT = 5.0  # seconds per export request, retries included
SHUTDOWN_TIMEOUT = 5.0  # seconds the app's cleanup waits for the last spans to leave


class Step:
    """One open span, as the code that makes it sees it: attributes and an outcome, nothing more."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def set(self, key: str, value: str | int | float | bool) -> None:
        self.span.set_attribute(key, value)

    def failed(self, description: str) -> None:
        from opentelemetry.trace import StatusCode

        self.span.set_status(StatusCode.ERROR, description)


class RequestSpan:
    """A request's server span while the request is answered, and the context it made current."""

    __slots__ = ("_active", "_token", "span")

    def __init__(self, span: Span, token: object, active: object) -> None:
        self.span = span
        self._token = token
        self._active = active

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            Step(self.span).failed(str(status))
        self._end()

    def failed(self, exc: BaseException) -> None:
        """The handler raised instead of answering: an HTTP exception is an answer, anything else not."""
        if isinstance(exc, web.HTTPException):
            self.answered(exc.status)
            return
        Step(self.span).failed(type(exc).__name__)
        self._end()

    def _end(self) -> None:
        from opentelemetry import context

        context.detach(self._token)  # type: ignore[arg-type]
        ACTIVE.reset(self._active)  # type: ignore[arg-type]
        self.span.end()


class Tracing:
    """One worker's tracer: makes the proxy's spans and hands them to the batching exporter."""

    def __init__(self, provider: TracerProvider, tracer: Tracer, propagator: TraceContextTextMapPropagator):
        self._provider = provider
        self._tracer = tracer
        self._propagator = propagator

    # --- the request ---------------------------------------------------------------------------------

    def begin_request(self, request: web.Request, rid: str, client_ip: str, trusted: bool) -> RequestSpan:
        """Open the request's server span and make it current; `trusted`: the peer is a trusted proxy,
        whose trace context is the parent. The caller ends it with `answered` or `failed`."""
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        parent = self._parent(request.headers) if trusted else None
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        span = self._tracer.start_span(
            f"{request.method} {route}" if route else request.method,
            # An explicit empty context when no trusted parent: nothing earlier in this task can leak in.
            context=parent if parent is not None else context.Context(),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "url.scheme": request.scheme,
                "client.address": client_ip,
                REQUEST_ID: rid,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        return RequestSpan(span, token, ACTIVE.set(self))

    def _parent(self, headers: CIMultiDictProxy[str]) -> Context | None:
        """A trusted proxy's trace context: one well-formed `traceparent` line, with its `tracestate`."""
        from opentelemetry import trace

        lines = headers.getall("traceparent", ())
        if len(lines) != 1:
            return None  # none, or two that could each be meant: no parent
        carrier = {"traceparent": lines[0]}
        states = headers.getall("tracestate", ())
        if states:
            carrier["tracestate"] = ",".join(states)
        found = self._propagator.extract(carrier)
        return found if trace.get_current_span(found).get_span_context().is_valid else None

    # --- spans inside a request ----------------------------------------------------------------------

    @contextlib.contextmanager
    def session_check(self) -> Iterator[Step]:
        """The session check's span, current while the checker runs (its CentralAuth call is a child)."""
        with self._span("session check", "INTERNAL", {}) as step:
            yield step

    @contextlib.contextmanager
    def centralauth_call(self, name: str, url: str) -> Iterator[Step]:
        """A back-channel call to CentralAuth (`url` without its query)."""
        parts = urlsplit(url)
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "url.full": url,
            "server.address": parts.hostname or "",
            "peer.service": "centralauth",
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        with self._span(f"centralauth {name}", "CLIENT", attributes) as step:
            yield step

    async def upstream_exchange(
        self,
        exchange: Awaitable[web.StreamResponse],
        method: str,
        url: str,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """Await `exchange` (the forwarder, not started yet) in the upstream exchange's span, whose
        context goes into `headers`, which the forwarder reads only once it runs."""
        parts = urlsplit(url)
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.full": url.split("?", 1)[0],
            "server.address": parts.hostname or parts.path,
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        with self._span(f"upstream {method}", "CLIENT", attributes) as step:
            self._propagator.inject(headers)
            response = await exchange
            step.set("http.response.status_code", response.status)
            if response.status >= 500:
                step.failed(str(response.status))
            return response

    def inject(self, headers: CIMultiDict[str]) -> None:
        """The current span's context into `headers` (a websocket handshake carries the request's)."""
        self._propagator.inject(headers)

    @contextlib.contextmanager
    def _span(self, name: str, kind: str, attributes: dict[str, str | int]) -> Iterator[Step]:
        from opentelemetry.trace import SpanKind

        # Exceptions are marked by their type only: a recorded exception carries its message and
        # traceback, which are not ours to vouch for.
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind[kind],
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            step = Step(span)
            try:
                yield step
            except BaseException as exc:
                step.failed(type(exc).__name__)
                raise

    # --- export --------------------------------------------------------------------------------------

    def flush(self, timeout: float = EXPORT_TIMEOUT) -> bool:
        """Export the spans ended so far; blocks, so call it from a thread when the collector is served
        by this event loop (as in the tests)."""
        return self._provider.force_flush(int(timeout * 1000))

    async def close(self, grace: float = SHUTDOWN_TIMEOUT) -> None:
        """Flush the last spans and stop the exporter, waiting at most `grace` seconds.

        The SDK's shutdown blocks (and its own limit is 30 s), so it runs in a daemon thread of its own
        that the event loop waits for this long at most, and a process exit never waits for.
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut_down() -> None:
            try:
                self._provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shut_down, name="authproxy-tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, grace)


def start(
    settings: TracingConfig,
    *,
    schedule_delay: float = SCHEDULE_DELAY,
    export_timeout: float = EXPORT_TIMEOUT,
) -> Tracing:
    """A worker's tracing for `settings` (whose `otlp_endpoint` is set): a tracer provider of its own
    (the global one is left alone), the ratio sampler behind the parent's decision, and a batching
    OTLP/HTTP exporter to `<otlp_endpoint>/v1/traces`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=f"{settings.otlp_endpoint}/v1/traces", timeout=export_timeout)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=QUEUE_SIZE,
            schedule_delay_millis=schedule_delay * 1000,
            max_export_batch_size=BATCH_SIZE,
            export_timeout_millis=export_timeout * 1000,
        )
    )
    return Tracing(provider, provider.get_tracer("authproxy"), TraceContextTextMapPropagator())


def lifetime(
    settings: TracingConfig, attach: Callable[[Tracing], None]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context for tracing: started once the worker runs (after any fork), handed to
    the runtime with `attach`, flushed and stopped at cleanup."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        tracing = start(settings)
        attach(tracing)
        yield
        await tracing.close()

    return run
