"""Tracing: W3C traceparent handling on the wire, and GATEWAY_TRACING=on exporting spans over OTLP
to a local collector stub that decodes what it receives."""
from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import pytest

from gateway.config.env import EnvError, load_settings
from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    free_port,
    gateway,
    routes_toml,
    upstream,
    wait_until,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def upstream_traceparent(port: int, traceparent: str | None) -> str:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/api/x", headers={"traceparent": traceparent} if traceparent is not None else {})
        r = c.getresponse()
        echo = json.loads(r.read())
        assert r.status == 200
    finally:
        c.close()
    got = [v for k, v in echo["headers"] if k.lower() == "traceparent"]
    assert len(got) == 1, echo["headers"]
    return got[0]


@pytest.mark.parametrize("sent", [
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",   # upper case: invalid (W3C: lowercase hex)
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   # all-zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   # version ff is forbidden
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has nothing after flags
    "garbage", "",
])
def test_malformed_traceparent_is_replaced_not_passed_on(gateway, upstream, sent) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/api"]))
    got = upstream_traceparent(gw.port, sent)
    assert got != sent
    version, trace_id, parent, flags = got.split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent) == 16 and len(flags) == 2
    assert trace_id == trace_id.lower() and trace_id != "0" * 32 and parent != "0" * 16
    assert trace_id not in sent.lower()


def test_valid_traceparent_keeps_trace_id_and_flags_with_a_new_parent(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/api"]))
    got = upstream_traceparent(gw.port, VALID)
    _, trace_id, parent, flags = got.split("-")
    assert trace_id == VALID.split("-")[1] and flags == "01" and parent != VALID.split("-")[2]
    # A request without one starts a trace.
    assert upstream_traceparent(gw.port, None).startswith("00-")


class Collector:
    """An OTLP/HTTP collector stub: POST /v1/traces with protobuf, decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with outer.lock:
                    for rs in req.resource_spans:
                        service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                attrs = {}
                                for a in s.attributes:
                                    v = a.value
                                    attrs[a.key] = getattr(v, v.WhichOneof("value"))
                                outer.spans.append({"name": s.name, "trace_id": s.trace_id.hex(),
                                                    "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                                                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                                                    "attrs": attrs, "service": service})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _request(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """(status, the traceparent the upstream received: "" when nothing was forwarded)."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    if r.status != 200:
        return r.status, ""
    got = [v for k, v in json.loads(body)["headers"] if k.lower() == "traceparent"]
    assert len(got) == 1
    return r.status, got[0]


PHASED_ROUTES = """
[[routes]]
name = "guarded"
path = "/guarded"
service = "up"
auth = ["jwt"]
[[routes.rate_limits]]
key = "user"
limit = 1000
window = 60.0
"""


def test_spans_reach_a_local_otlp_collector(gateway, upstream) -> None:  # noqa: F811
    pytest.importorskip("opentelemetry.sdk.trace")
    from tests.security.tokens import SECRET, claims, raw_token

    collector = Collector()
    try:
        gw = gateway(routes_toml(upstream.url, ["/api"]) + PHASED_ROUTES, env={
            "GATEWAY_WORKERS": "2", "GATEWAY_TRACING": "on", "OTEL_SERVICE_NAME": "edge-gw",
            "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{collector.port}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "100"})
        token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), secret=SECRET)
        unsampled = VALID[:-2] + "00"
        # The client's sampled flag is honoured (parent-based sampler): no span for this one.
        _request(gw.port, "/api/unsampled", {"traceparent": unsampled})
        sent_up = upstream_traceparent(gw.port, VALID)
        _, guarded_up = _request(gw.port, "/guarded/x", {"traceparent": VALID, "Authorization": f"Bearer {token}"})
        refused, _ = _request(gw.port, "/guarded/x", {"traceparent": VALID})
        assert refused == 401
        _, fresh_up = _request(gw.port, "/api/fresh", {"traceparent": VALID.upper()})
        wait_until(lambda: len(collector.spans) >= 4, 15)
        time.sleep(0.5)   # (an unsampled span, were one made, would have been exported by now)
        by_path = {s["attrs"]["url.path"]: s for s in collector.spans if s["attrs"]["http.response.status_code"] == 200}
        assert len(collector.spans) == 4 and "/api/unsampled" not in by_path, collector.spans
        for s in collector.spans:
            assert s["service"] == "edge-gw"
            assert s["start"] < s["end"] and abs(s["end"] / 1e9 - time.time()) < 60

        # A child of the client's span, in its trace; the upstream was told the gateway's span.
        span = by_path["/api/x"]
        assert span["name"] == "GET api"
        assert span["trace_id"] == VALID.split("-")[1] and span["parent"] == VALID.split("-")[2]
        assert span["span_id"] == sent_up.split("-")[2] and sent_up.split("-")[1] == span["trace_id"]
        a = span["attrs"]
        assert a["http.route"] == "api" and a["gateway.service"] == "up" and a["server.address"] == upstream.url
        assert a["http.response.status_code"] == 200 and a["http.request.method"] == "GET"
        duration_ms = (span["end"] - span["start"]) / 1e6
        assert 0 < a["gateway.upstream.duration_ms"] <= duration_ms + 0.01
        assert not any(k in a for k in ("gateway.auth.duration_ms", "gateway.ratelimit.duration_ms"))

        # Auth and rate-limit phases timed, each within the span, with the upstream's.
        g = by_path["/guarded/x"]
        assert g["parent"] == VALID.split("-")[2] and g["span_id"] == guarded_up.split("-")[2]
        ga = g["attrs"]
        assert ga["http.route"] == "guarded" and ga["http.response.status_code"] == 200
        phases = [ga["gateway.auth.duration_ms"], ga["gateway.ratelimit.duration_ms"], ga["gateway.upstream.duration_ms"]]
        assert all(p > 0 for p in phases) and sum(phases) <= (g["end"] - g["start"]) / 1e6 + 0.01, (phases, g)

        # A refusal: the auth phase ran, nothing went upstream.
        r = next(s for s in collector.spans if s["attrs"]["http.response.status_code"] == 401)
        assert r["attrs"]["gateway.auth.duration_ms"] > 0 and "gateway.upstream.duration_ms" not in r["attrs"]
        assert "gateway.ratelimit.duration_ms" not in r["attrs"] and "server.address" not in r["attrs"]

        # An invalid (upper-case) traceparent was replaced: a root span of a new trace.
        f = by_path["/api/fresh"]
        assert f["parent"] == "" and f["trace_id"] == fresh_up.split("-")[1] != VALID.split("-")[1]
        assert f["span_id"] == fresh_up.split("-")[2]
        wait_until(lambda: 'gateway_tracing_spans_total{result="exported"} 4.0'
                   in _get(gw.admin_port, "/metrics"), 10)
    finally:
        collector.close()


def test_a_collector_that_is_down_drops_and_counts_and_never_blocks(gateway, upstream) -> None:  # noqa: F811
    pytest.importorskip("opentelemetry.sdk.trace")
    gw = gateway(routes_toml(upstream.url, ["/api"]), env={
        "GATEWAY_TRACING": "on", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
    for _ in range(10):
        t0 = time.monotonic()
        upstream_traceparent(gw.port, None)
        assert time.monotonic() - t0 < 1.0
    wait_until(lambda: 'gateway_tracing_spans_total{result="dropped"} 10.0' in _get(gw.admin_port, "/metrics"), 20)


def test_tracing_on_without_the_sdk_exits_2_naming_the_variable(monkeypatch) -> None:
    from gateway.observability import tracing

    monkeypatch.setattr(tracing, "sdk_available", lambda: False)
    with pytest.raises(EnvError) as exc:
        load_settings({"GATEWAY_TRACING": "on"})
    assert "GATEWAY_TRACING" in str(exc.value) and "gateway[otel]" in str(exc.value)
    assert load_settings({"GATEWAY_TRACING": "off"}).tracing is False


def _get(port: int, path: str) -> str:
    from tests.support.gateway_proc import http_get

    return http_get(port, path)[2].decode()


@pytest.mark.parametrize("name,arg", [
    ("always_on", None), ("always_off", None), ("traceidratio", "0.25"), ("parentbased_always_on", None),
    ("parentbased_always_off", None), ("parentbased_traceidratio", "0.25"), ("parentbased_traceidratio", "0"),
])
def test_inline_sampling_agrees_with_the_sdk_sampler(monkeypatch, name: str, arg: str | None) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    import random

    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

    from gateway.observability.tracing import _TRACE_ID_LOW, _inline_sampling

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if arg is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    sampler = _get_from_env_or_default()
    parent_based, bound = _inline_sampling(sampler)
    assert bound is not None
    rng = random.Random(7)
    decisions = set()
    for _ in range(2000):
        trace_id = rng.getrandbits(128) or 1
        parent = rng.choice([None, 0, 1])
        context = None
        if parent is not None:
            context = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                trace_id, rng.getrandbits(64) or 1, is_remote=True, trace_flags=trace.TraceFlags(parent))))
        want = sampler.should_sample(context, trace_id, "GET r", trace.SpanKind.SERVER).decision.is_sampled()
        got = parent == 1 if parent is not None and parent_based else (trace_id & _TRACE_ID_LOW) < bound
        assert got == want, (name, arg, trace_id, parent)
        decisions.add(got)
    if name.endswith("traceidratio") and arg == "0.25":
        assert decisions == {True, False}


def test_another_sampler_is_asked_per_request() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from gateway.observability.tracing import _inline_sampling

    assert _inline_sampling(ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)) == (False, None)
    assert _inline_sampling(ParentBased(TraceIdRatioBased(0.5)))[1] == TraceIdRatioBased(0.5).bound


@pytest.mark.parametrize("inline", [True, False])
def test_the_tracer_makes_a_child_of_the_clients_span(inline: bool) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    from gateway.observability.tracing import Tracer
    from gateway.pipeline import RequestContext

    # Not inline: a ParentBased sampler whose unsampled-parent branch is not the default.
    sampler = ParentBased(ALWAYS_ON) if inline else ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_OFF,
                                                                 remote_parent_sampled=ParentBased(ALWAYS_ON))
    exporter = InMemorySpanExporter()
    tracer = Tracer(provider=TracerProvider(sampler=sampler), exporter=exporter)
    assert (tracer._bound is not None) == inline
    try:
        for flags in ("01", "00"):
            ctx = RequestContext()
            ctx.method, ctx.path, ctx.status = b"POST", b"/p", 502
            ctx.traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-" + flags.encode()
            ctx.parent_span_id = b"00f067aa0ba902b7"
            ctx.start = time.monotonic() - 0.01
            ctx.upstream_start, ctx.upstream_end = ctx.start + 0.002, ctx.start + 0.008
            ctx.vars = {"phases": [("auth", ctx.start, ctx.start + 0.001)]}
            tracer(ctx)
        tracer.processor.force_flush()
        spans = exporter.get_finished_spans()
        assert len(spans) == 1                          # the unsampled parent ("00") made none
        span = spans[0]
        assert span.context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736 and span.context.span_id == 0x1111111111111111
        assert span.parent.span_id == 0x00f067aa0ba902b7 and span.parent.is_remote
        assert span.name == "POST (no route)" and span.status.status_code.name == "ERROR"
        assert span.attributes["gateway.auth.duration_ms"] == 1.0
        assert span.attributes["gateway.upstream.duration_ms"] == 6.0
        assert 9e6 <= span.end_time - span.start_time <= 60e9
    finally:
        tracer.close()


def test_a_full_queue_drops_and_counts_without_a_log_line_per_span(caplog) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from gateway.observability.tracing import Tracer
    from gateway.pipeline import RequestContext

    release = threading.Event()

    class Stuck(SpanExporter):
        """A collector that does not answer until released."""

        def export(self, spans: Any) -> SpanExportResult:
            release.wait(10)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    tracer = Tracer(provider=TracerProvider(), exporter=Stuck())
    tracer.max_queued = 10
    try:
        t0 = time.monotonic()
        for i in range(50):
            ctx = RequestContext()
            ctx.method, ctx.status = b"GET", 200
            ctx.traceparent = b"00-%032x-%016x-01" % (i + 1, i + 1)
            tracer(ctx)
        assert time.monotonic() - t0 < 1.0                     # never waits for the collector
        assert tracer.dropped == 40 and tracer.queued == 10
        assert not [r for r in caplog.records if "Queue full" in r.getMessage()]
        release.set()
        wait_until(lambda: tracer.exported == 10, 10)
        assert tracer.settled == 10 and tracer.dropped == 40
    finally:
        release.set()
        tracer.close()
