"""GET /metrics: the node's metrics in the Prometheus text format, through prometheus-client with a
custom collector that reads node memory at scrape time.

What a scrape returns, all node totals (every worker's counts live in the same cells):
- the request metrics of SPEC §6 (gateway_requests_total, gateway_request_duration_seconds,
  gateway_upstream_duration_seconds; gateway_upstream_errors_total is discovery's), read by metrics.py and
  rendered by textformat.py: these are most of a scrape (19 samples per target, 25,000 for 100
  routes x 10 targets), and prometheus-client's generate_latest spends ~20 us per sample on
  validating and escaping label names we know are valid (0.6 s per scrape, measured); the rest
  (features, process, small counters) goes through a CollectorRegistry as usual;
- every feature's samples from METRIC_SOURCES (gateway/admin/features.py): breakers, health,
  limits, auth, alerts...; a source that raises is logged and skipped, never failing the scrape;
- process metrics: the standard process_* of the process serving /metrics (prometheus-client's
  ProcessCollector), and gateway_node_* summed over it and its children (the workers).

Readable only from GATEWAY_METRICS_ALLOW (403 otherwise): the allow-list is checked on the TCP
peer's address, never on a header.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics import read_request_metrics
from .textformat import render_request_families

if TYPE_CHECKING:
    from gateway.admin.api import AdminRequest, AdminRoutes
    from gateway.admin.features import AdminContext

log = logging.getLogger("gateway.metrics")


class NodeCollector(Collector):
    """Reads node memory and the feature sources at every scrape (no state between scrapes)."""

    def __init__(self, ctx: AdminContext, sources: list[Any]) -> None:
        self.ctx = ctx
        self.sources = sources
        self.last_duration = 0.0
        self.extra: dict[str, list[int]] = {}
        self.started = 0.0

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield from self._small()
        yield from self._features()
        yield from _node_process()
        g = GaugeMetricFamily("gateway_metrics_scrape_duration_seconds",
                              "Time the previous scrape of /metrics took to collect")
        g.add_metric([], self.last_duration)
        yield g
        self.last_duration = time.perf_counter() - (self.started or started)

    def _small(self) -> Iterator[Metric]:
        """The access-log and tracing counters (node memory)."""
        extra = self.extra
        lines = CounterMetricFamily("gateway_access_log_lines", "Access log lines: logged (handed to the "
                                    "writer) or dropped (its backlog full, or a write failed)", labels=["result"])
        logged, dropped = extra.get("access_log", [0, 0])
        lines.add_metric(["logged"], logged)
        lines.add_metric(["dropped"], dropped)
        spans = CounterMetricFamily("gateway_tracing_spans", "Spans handed to the OTLP exporter: exported, "
                                    "or dropped (export failed: collector down or refusing)", labels=["result"])
        exported, lost = extra.get("tracing", [0, 0])
        spans.add_metric(["exported"], exported)
        spans.add_metric(["dropped"], lost)
        yield from (lines, spans)

    def _features(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for source in list(self.sources):
            try:
                samples = list(source(self.ctx))
            except Exception:  # noqa: BLE001 - one feature's bug must not hide every metric
                log.exception("metrics source %s failed", getattr(source, "__qualname__", source))
                continue
            for name, kind, help_text, labels, value in samples:
                base = name[:-6] if kind == "counter" and name.endswith("_total") else name
                fam = families.get(base)
                if fam is None:
                    fam = families[base] = Metric(base, help_text, kind)
                elif fam.type != kind:
                    log.warning("metric %s is reported as %s and %s: the second is dropped", base, fam.type, kind)
                    continue
                fam.add_sample(base + "_total" if kind == "counter" else base, dict(labels), float(value))
        yield from families.values()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096


def _node_process() -> Iterable[Metric]:
    """CPU, memory and fds of this process and its children (the workers), summed: the node's."""
    pids = [os.getpid(), *_children(os.getpid())]
    cpu = rss = fds = 0.0
    alive = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS
            rss += int(fields[21]) * _PAGE
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            alive += 1
        except (OSError, IndexError, ValueError):
            continue
    for name, help_text, value, cls in (
        ("gateway_node_cpu_seconds", "CPU time of the gateway's processes (supervisor and workers)", cpu,
         CounterMetricFamily),
        ("gateway_node_resident_memory_bytes", "Resident memory of the gateway's processes", rss, GaugeMetricFamily),
        ("gateway_node_open_fds", "Open file descriptors of the gateway's processes", fds, GaugeMetricFamily),
        ("gateway_node_processes", "The gateway's processes (supervisor and workers)", alive, GaugeMetricFamily),
    ):
        m = cls(name, help_text)
        m.add_metric([], value)
        yield m


def client_allowed(allow: tuple[Any, ...], client_ip: str | None) -> bool:
    """Whether the TCP peer is in GATEWAY_METRICS_ALLOW (an IPv4-mapped IPv6 peer as its IPv4)."""
    if client_ip is None:
        return False
    try:
        addr = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped     # an IPv4 client of a dual-stack listener
    return any(addr.version == net.version and addr in net for net in allow)


class MetricsEndpoint:
    """The /metrics handler: the allow-list, then one collection."""

    def __init__(self, ctx: AdminContext, sources: list[Any]) -> None:
        self.allow = tuple(ctx.settings.metrics_allow)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = NodeCollector(ctx, sources)
        self.registry.register(self.collector)
        self.registry.register(ProcessCollector(registry=None))

    def allowed(self, client_ip: str | None) -> bool:
        return client_allowed(self.allow, client_ip)

    def render(self) -> bytes:
        """The request families straight from node memory (requests.py's renderer), then the
        registry's collectors: features, process, the small counters."""
        c = self.collector
        c.started = time.perf_counter()
        memory = c.ctx.state.memory if c.ctx.state is not None else None
        requests, upstream, c.extra = read_request_metrics(memory) if memory is not None else ([], [], {})
        head = render_request_families(requests, upstream)
        return head + generate_latest(self.registry)

    def __call__(self, req: AdminRequest) -> Any:
        from gateway.admin.api import AdminResponse, error_response

        if not self.allowed(req.client_ip):
            return error_response(403, "forbidden", "GATEWAY_METRICS_ALLOW does not include this client")
        return AdminResponse(200, self.render(), CONTENT_TYPE_LATEST)


def install(routes: AdminRoutes, ctx: AdminContext) -> None:
    """GET /metrics, GET /status and GET /dashboard."""
    from gateway.admin.features import METRIC_SOURCES

    routes.add("GET", "/metrics", MetricsEndpoint(ctx, METRIC_SOURCES), tag="observability",
               summary="Prometheus metrics of the whole node (GATEWAY_METRICS_ALLOW only)",
               responses={"200": {"description": "Prometheus text format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "403": {"description": "the client is not in GATEWAY_METRICS_ALLOW"}})
    install_status(routes, ctx)


def install_status(routes: AdminRoutes, ctx: AdminContext) -> None:
    """GET /status (JSON) and GET /dashboard (the page that renders it), behind the same
    allow-list as /metrics: they show the same numbers."""
    from importlib.resources import files

    from gateway.admin.api import AdminResponse, error_response, json_response
    from gateway.admin.features import METRIC_SOURCES

    from .status import build_status

    allow = tuple(ctx.settings.metrics_allow)
    page = files("gateway.observability").joinpath("assets/dashboard.html").read_bytes()
    # The page is self-contained (no CDN, no external fetch): the policy says so to the browser.
    csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")

    def status(req: AdminRequest) -> Any:
        if not client_allowed(allow, req.client_ip):
            return error_response(403, "forbidden", "GATEWAY_METRICS_ALLOW does not include this client")
        return json_response(build_status(ctx, METRIC_SOURCES), headers=[("Cache-Control", "no-store")])

    def dashboard(req: AdminRequest) -> Any:
        if not client_allowed(allow, req.client_ip):
            return error_response(403, "forbidden", "GATEWAY_METRICS_ALLOW does not include this client")
        return AdminResponse(200, page, "text/html; charset=utf-8",
                             [("Content-Security-Policy", csp), ("Cache-Control", "no-store")])

    routes.add("GET", "/status", status, tag="observability",
               summary="Services, targets (health, circuit), routes and limits as JSON (the dashboard's data)")
    routes.add("GET", "/dashboard", dashboard, tag="observability",
               summary="Live HTML health dashboard (self-contained, refreshed from /status)",
               responses={"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}})

