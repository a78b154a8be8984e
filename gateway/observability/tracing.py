"""GATEWAY_TRACING=on: one span per request exported with the OpenTelemetry SDK (an optional extra:
`pip install 'gateway[otel]'`), configured by the standard OTEL_* variables (endpoint, headers,
service name, sampler: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG).

The span is made at the end of the exchange, from the same Recorder call as the metrics and the
access log, with the request's own start and end times:
- a SERVER span continuing the client's trace: its parent is the span the client named in a valid
  `traceparent` (ctx.parent_span_id; the sampler's parent-based decision honours the client's
  sampled flag), its trace id the client's; its span id is the one the data plane already sent
  upstream as the parent in `traceparent`, so the upstream's spans are its children. A request
  without a valid traceparent (absent, malformed, upper-case, all-zero: replaced by the data plane,
  never passed on) starts a trace: a root span with the trace id the upstream was sent;
- attributes: http.request.method, url.path, http.response.status_code, http.route,
  gateway.service, server.address (the target URL), gateway.request_id, error.type (the upstream
  failure kind), bytes in and out;
- phase timings as attributes of that one span, not child spans (decided so: a child span per
  phase would triple the spans a gateway exports per request, and an "upstream" child would sit
  beside the upstream's own server span covering the same interval):
  `gateway.<phase>.duration_ms` for each access filter the chain timed (`auth`, `ratelimit`,
  `content_types`...: pipeline/chain.pyx, on when tracing is, including a wait on Redis or JWKS) and
  for `upstream` (target picked to the attempt's last byte: ctx.upstream_start..upstream_end; the
  last attempt when there were retries).

Export never blocks the loop: a BatchSpanProcessor queues finished spans (bounded,
OTEL_BSP_MAX_QUEUE_SIZE, default 2048, a bound this module keeps itself) for its own thread; spans
that do not fit (a slow collector), or whose export fails (collector down), are dropped and counted
(`gateway_tracing_spans_total{result}` is kept per worker process in node memory).

The sampling decision is taken when the span is made, at the end of the exchange: the flags the
upstream was sent are the client's (or "01", sampled, for a trace the gateway started), so with a
ratio sampler the upstream may record a trace whose gateway span was not sampled.

Cost (bench/results/observability.md): the OTEL_TRACES_SAMPLER samplers are decided inline
(_inline_sampling), so an unsampled request costs ~0.5 us here; a sampled one is built as a
finished ReadableSpan (~7 us) and the OTLP encoding in the processor's thread costs ~30 us more,
so a ratio sampler (parentbased_traceidratio) is the setting for busy gateways.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("gateway.tracing")

INSTALL_HINT = "GATEWAY_TRACING=on needs the OpenTelemetry SDK: pip install 'gateway[otel]'"


def sdk_available() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


class Tracer:
    """One per process; `__call__(ctx)` after each exchange (loop thread)."""

    def __init__(self, provider: Any = None, exporter: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        if provider is None:
            # Resource.create() reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; the sampler comes
            # from OTEL_TRACES_SAMPLER (the SDK's default: parentbased_always_on).
            resource = Resource.create()
            if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
                resource = resource.merge(Resource({"service.name": "gateway"}))   # unless OTEL_* name one
            provider = TracerProvider(resource=resource)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()       # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, ...
        self.exporter = _counting(exporter, self)
        # The queue's bound is ours too: a span that would not fit is dropped and counted here,
        # never handed to the SDK (which would log a warning per span while a collector is slow).
        self.max_queued = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.processor = BatchSpanProcessor(self.exporter, max_queue_size=self.max_queued)
        self.queued = 0         # spans handed to the processor (loop thread) ...
        self.settled = 0        # ... of which the exporter reported (exported or failed)
        provider.add_span_processor(self.processor)
        self.provider = provider
        self.sampler = provider.sampler
        # The OTEL_TRACES_SAMPLER samplers decided inline (_inline_sampling), else the SDK is asked.
        self._parent_based, self._bound = _inline_sampling(self.sampler)
        self.resource = provider.resource
        self.scope = InstrumentationScope("gateway")
        self._api = trace
        self._readable = ReadableSpan
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._server = trace.SpanKind.SERVER
        self._ok = trace.Status(trace.StatusCode.UNSET)
        self._error = trace.Status(trace.StatusCode.ERROR)
        self.counters: Any = None       # CounterArray [exported, dropped] in node memory
        self.exported = 0
        self.dropped = 0
        self._lock = threading.Lock()
        # Monotonic → wall clock (span times are epoch nanoseconds), fixed at start.
        self._offset = time.time() - time.monotonic()

    def count(self, exported: int, dropped: int, settled: bool = True) -> None:
        with self._lock:        # the processor's thread reports exports
            if settled:
                self.settled += exported + dropped
            self.exported += exported
            self.dropped += dropped
            c = self.counters
            if c is not None:
                if exported:
                    c.inc(0, exported)
                if dropped:
                    c.inc(1, dropped)

    def _ns(self, mono: float) -> int:
        return int((mono + self._offset) * 1e9)

    def __call__(self, ctx: Any) -> None:
        trace = self._api
        ReadableSpan = self._readable  # noqa: N806

        tp = ctx.traceparent
        if not tp or len(tp) < 55:
            return
        trace_id = int(tp[3:35], 16)
        parent_id = ctx.parent_span_id
        flags = int(tp[53:55], 16) & 1
        # Sampled first, so that an unsampled request costs this and nothing more.
        if self._bound is not None:
            if parent_id is not None and self._parent_based:
                sampled = flags == 1            # the client's decision (its sampled flag)
            else:
                sampled = (trace_id & _TRACE_ID_LOW) < self._bound
            if not sampled:
                return
            trace_state = None
            extra = None
        route = ctx.route
        method = ctx.method.decode("latin-1") if ctx.method else ""
        name = f"{method} {route.name if route is not None else '(no route)'}"
        parent = None
        if parent_id is not None:
            # The client's span, as a remote parent: the span continues the client's trace.
            parent = trace.SpanContext(trace_id, int(parent_id, 16), is_remote=True, trace_flags=trace.TraceFlags(flags))
        if self._bound is None:
            # Another sampler: the SDK decides. (Samplers see no attributes: none of the
            # OTEL_TRACES_SAMPLER ones reads them.)
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
            sampling = self.sampler.should_sample(context, trace_id, name, self._server)
            if not sampling.decision.is_sampled():
                return
            trace_state = sampling.trace_state
            extra = sampling.attributes
        start = ctx.start or time.monotonic()
        end = time.monotonic()
        target = ctx.upstream_target
        status = ctx.status or 499
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.path": ctx.path.decode("utf-8", "replace") if ctx.path else "",
            "http.response.status_code": status,
            "gateway.request_id": ctx.request_id.decode("ascii", "replace") if ctx.request_id else "",
            "http.request.body.size": ctx.bytes_in,
            "gateway.response.bytes": ctx.bytes_out,
        }
        if route is not None:
            attrs["http.route"] = route.name
        if ctx.service is not None:
            attrs["gateway.service"] = ctx.service.name
        if target is not None:
            attrs["server.address"] = target.url
        if ctx.upstream_error is not None:
            attrs["error.type"] = ctx.upstream_error
        phases = ctx.vars.get("phases") if isinstance(ctx.vars, dict) else None
        for phase in phases or ():
            try:
                pname, pstart, pend = phase
                attrs[f"gateway.{pname}.duration_ms"] = round((pend - pstart) * 1e3, 3)
            except (TypeError, ValueError):
                continue
        if ctx.upstream_start > 0.0:
            attrs["gateway.upstream.duration_ms"] = round(((ctx.upstream_end or end) - ctx.upstream_start) * 1e3, 3)
        if extra:
            attrs.update(extra)
        # The span is complete when it is made (both times are known): a ReadableSpan handed to the
        # processor, as the SDK's own Span.end() does, without the live-span machinery (locks,
        # attribute re-validation, start hooks) that cost ~3x as much per span. The span id is the
        # one the upstream was sent as its parent.
        span = ReadableSpan(
            name, context=trace.SpanContext(trace_id, int(tp[36:52], 16), is_remote=False,
                                            trace_flags=self._sampled, trace_state=trace_state),
            parent=parent, resource=self.resource, attributes=attrs, kind=self._server,
            status=self._error if status >= 500 else self._ok, start_time=self._ns(start),
            end_time=self._ns(end), instrumentation_scope=self.scope)
        if self.queued - self.settled >= self.max_queued:
            self.count(0, 1, settled=False)      # the queue is full (a slow collector): dropped
            return
        self.queued += 1
        self.processor.on_end(span)

    def close(self) -> None:
        try:
            self.provider.shutdown()
        except Exception:  # noqa: BLE001
            log.exception("tracing: shutdown failed")


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


_TRACE_ID_LOW = (1 << 64) - 1      # TraceIdRatioBased decides on the trace id's low 64 bits


def _inline_sampling(sampler: Any) -> tuple[bool, int | None]:
    """(parent_based, bound) for the samplers OTEL_TRACES_SAMPLER names (always_on, always_off,
    traceidratio and their parentbased_ forms): sampled when a remote parent is sampled (parent
    based), else when trace_id's low 64 bits < bound. The SDK's sampler costs ~2.4 us a call
    (contexts, a result object) where this is a compare; tests/observability/test_tracing.py checks
    the two agree. bound None: another sampler, asked per request."""
    from opentelemetry.sdk.trace import sampling as s

    def root_bound(root: Any) -> int | None:
        if root is s.ALWAYS_ON:
            return _TRACE_ID_LOW + 1
        if root is s.ALWAYS_OFF:
            return 0
        if type(root) is s.TraceIdRatioBased:
            return int(root.bound)
        return None

    if isinstance(sampler, s.ParentBased):
        # (The parent is always remote here: the gateway's span is the first of its process.)
        if (getattr(sampler, "_remote_parent_sampled", None) is not s.ALWAYS_ON
                or getattr(sampler, "_remote_parent_not_sampled", None) is not s.ALWAYS_OFF):
            return False, None
        return True, root_bound(getattr(sampler, "_root", None))
    return False, root_bound(sampler)


def _counting(inner: Any, owner: Tracer) -> Any:
    """The exporter wrapped to count what it exported and what was lost (collector down...)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            try:
                result = inner.export(spans)
            except Exception as exc:  # noqa: BLE001 - a broken exporter loses spans, never the worker
                log.warning("tracing: export failed: %s", exc)
                result = SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                owner.count(len(spans), 0)
            else:
                owner.count(0, len(spans))
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(getattr(inner, "force_flush", lambda *_: True)(timeout_millis))

    return Counting()


_process_tracer: Tracer | None = None


def process_tracer(enabled: bool) -> Tracer | None:
    global _process_tracer
    if not enabled:
        return None
    if _process_tracer is None:
        if not sdk_available():
            raise RuntimeError(INSTALL_HINT)
        _process_tracer = Tracer()
    return _process_tracer


def close_process_tracer() -> None:
    global _process_tracer
    if _process_tracer is not None:
        _process_tracer.close()
        _process_tracer = None
