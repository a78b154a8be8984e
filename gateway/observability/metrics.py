"""Request metrics: build a runtime's Recorder (its cells placed in node memory) and read every
worker's counts back at scrape time, from any process that maps node memory.

The write side runs in every worker (build_recorder, called by build_runtime); the read side
(read_request_metrics) in the process that owns the admin listener, which in a multi-worker node
is the supervisor: it has no runtime, so it walks node memory's directory for the objects named
in layout.py and reads their cells. Both sides agree on the layout through layout.py alone.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from gateway._fast.counters import CounterArray, Histogram

from .layout import (
    ACCESS_LOG_NAME,
    BUCKETS,
    CODES,
    ERROR_KINDS,
    ERROR_LOG_NAME,
    METHODS,
    OTHER_METHOD,
    REQUESTS_COUNTS,
    REQUESTS_PREFIX,
    REQUESTS_SIZE,
    TRACING_NAME,
    UPSTREAM_PREFIX,
    UPSTREAM_SIZE,
    code_table,
    requests_name,
    split_name,
    upstream_name,
)
from .recorder import Recorder, RouteCells, TargetCells

if TYPE_CHECKING:
    from gateway.state.memory import NodeMemory
    from gateway.state.node import Placer

# Cells placed after the build (routes of the previous runtime still in flight after a reload,
# targets registered at run time) are cached up to this many per runtime; past it such requests
# are not counted rather than growing a table without bound.
LATE_MAX = 10_000

_HIST_BYTES = 8 * (len(BUCKETS) + 2)
_KINDS = {k: i for i, k in enumerate(ERROR_KINDS)}
_METHODS = {m.encode(): i for i, m in enumerate(METHODS[:OTHER_METHOD])}
_CODES = code_table()


def _route_cells(buf: Any, route: str | None, service: str | None) -> RouteCells:
    # The access log's part for this route, JSON-encoded once here (recorder.pyx copies it).
    frag = b',"route":' + orjson.dumps(route) + b',"service":' + orjson.dumps(service)
    if buf is None:
        return RouteCells(CounterArray(REQUESTS_COUNTS), Histogram(BUCKETS), frag)
    return RouteCells(CounterArray(REQUESTS_COUNTS, buf, 0), Histogram(BUCKETS, buf, 8 * REQUESTS_COUNTS), frag)


_MARKS = _HIST_BYTES + 8 * len(ERROR_KINDS)


def _target_cells(buf: Any, url: str) -> TargetCells:
    frag = b',"target":' + orjson.dumps(url)
    if buf is None:
        return TargetCells(Histogram(BUCKETS), CounterArray(len(ERROR_KINDS)), CounterArray(2), frag)
    return TargetCells(Histogram(BUCKETS, buf, 0), CounterArray(len(ERROR_KINDS), buf, _HIST_BYTES),
                       CounterArray(2, buf, _MARKS), frag)


def build_recorder(routes: Iterable[Any], services: Iterable[Any], placer: Placer | None,
                   access_log: str = "off", loop: Any = None, tracing: bool = False) -> Recorder:
    """The Recorder of one runtime: every route's and target's cells, placed through `placer`
    (private cells without node memory: a runtime built by a test), and the process's access log
    when GATEWAY_ACCESS_LOG is not off. Raises SharedMemoryFull, so a config whose metrics do not
    fit is refused at load, never mid-request; AccessLogError when the log file cannot be opened."""
    def place(name: str, size: int) -> Any:
        return placer.place(name, size, kind="metrics") if placer is not None else None

    route_cells: dict[Any, RouteCells] = {}
    target_cells: dict[Any, TargetCells] = {}
    for route in routes:
        route_cells[route] = _route_cells(place(requests_name(route.name, route.service.name), REQUESTS_SIZE),
                                          route.name, route.service.name)
    for service in services:
        for target in service.targets:
            target_cells[target] = _target_cells(place(upstream_name(service.name, target.url), UPSTREAM_SIZE),
                                                 target.url)
    unrouted = _route_cells(place(requests_name("", ""), REQUESTS_SIZE), None, None)

    def late(key: Any, is_route: bool) -> Any:
        # Rare: once per object, then found in the dict. Placing revives a quarantined name with
        # its counts intact, and the name joins this runtime's placed set (placer.names), so the
        # worker keeps holding it until a later runtime drops it.
        table: dict[Any, Any] = route_cells if is_route else target_cells
        if len(table) >= LATE_MAX:
            return None
        if is_route:
            cells: Any = _route_cells(place(requests_name(key.name, key.service.name), REQUESTS_SIZE),
                                      key.name, key.service.name)
        else:
            owner = _service_of(key, services)
            if owner is None:
                return None
            cells = _target_cells(place(upstream_name(owner, key.url), UPSTREAM_SIZE), key.url)
        table[key] = cells
        return cells

    recorder = Recorder(route_cells, target_cells, unrouted, _METHODS, OTHER_METHOD, _CODES, len(CODES),
                        _KINDS, late)
    from .access import process_access_log

    access = process_access_log(access_log, loop)
    if access is not None:
        buf = place(ACCESS_LOG_NAME, 16)
        access.counters = CounterArray(2, buf, 0) if buf is not None else CounterArray(2)
        recorder.access = access
    from .tracing import process_tracer

    tracer = process_tracer(tracing)
    if tracer is not None:
        buf = place(TRACING_NAME, 16)
        tracer.counters = CounterArray(2, buf, 0) if buf is not None else CounterArray(2)
        recorder.tracer = tracer
    from .errorlog import process_error_log

    errors = process_error_log(loop)
    buf = place(ERROR_LOG_NAME, 16)
    errors.counters = CounterArray(2, buf, 0) if buf is not None else CounterArray(2)
    recorder.errors = errors
    from .node_metrics import bind_process_cells

    bind_process_cells(place, placer.holder if placer is not None else -1)
    return recorder


def _service_of(target: Any, services: Iterable[Any]) -> str | None:
    for service in services:
        if any(t is target for t in service.targets):
            return service.name
    return None


# --- read side (the exporter) ---------------------------------------------------------------------

class HistogramValue:
    """A histogram's cumulative buckets [(le, count)], its count and its sum (seconds)."""
    __slots__ = ("buckets", "count", "sum")

    def __init__(self, cells: memoryview) -> None:
        raw = cells.cast("Q").tolist()
        acc, buckets = 0, []
        for le, n in zip((*BUCKETS, float("inf")), raw[:len(BUCKETS) + 1], strict=True):
            acc += n
            buckets.append((le, acc))
        self.buckets = buckets
        self.count = acc
        sum_raw = raw[len(BUCKETS) + 1]
        self.sum = (sum_raw - (1 << 64) if sum_raw >= 1 << 63 else sum_raw) * 1e-6


class RequestSeries:
    """One (route, service)'s counts {(method, code): n} and duration histogram."""
    __slots__ = ("route", "service", "counts", "duration")

    def __init__(self, route: str, service: str, counts: dict[tuple[str, str], int], duration: HistogramValue):
        self.route, self.service, self.counts, self.duration = route, service, counts, duration


class UpstreamSeries:
    """One (service, target): duration histogram, errors by kind, and when it last answered and
    last failed (CLOCK_MONOTONIC seconds, 0.0 = never)."""
    __slots__ = ("service", "target", "duration", "errors", "last_ok", "last_error")

    def __init__(self, service: str, target: str, duration: HistogramValue, errors: dict[str, int],
                 last_ok: float = 0.0, last_error: float = 0.0):
        self.service, self.target, self.duration, self.errors = service, target, duration, errors
        self.last_ok, self.last_error = last_ok, last_error


_ROW = len(CODES)


def read_request_metrics(memory: NodeMemory) -> tuple[list[RequestSeries], list[UpstreamSeries], dict[str, list[int]]]:
    """Every worker's request and upstream counts, summed by construction (one set of cells per
    label child in node memory), and {"access_log": [logged, dropped], "tracing": [exported,
    dropped]}. Quarantined objects (dropped by a reload) are left out."""
    requests: list[RequestSeries] = []
    upstream: list[UpstreamSeries] = []
    extra = {"access_log": [0, 0], "tracing": [0, 0]}
    for info in memory.objects():
        if info.quarantined:
            continue
        if info.name in (ACCESS_LOG_NAME, TRACING_NAME) and info.size == 16:
            extra[info.name.split("/")[1]] = memory.view_of(info).cast("Q").tolist()
        elif info.name.startswith(REQUESTS_PREFIX) and info.size == REQUESTS_SIZE:
            labels = split_name(info.name, REQUESTS_PREFIX)
            if labels is None:
                continue
            view = memory.view_of(info)
            counts: dict[tuple[str, str], int] = {}
            cells = view[:8 * REQUESTS_COUNTS].cast("Q").tolist()
            for row, method in enumerate(METHODS):
                base = row * _ROW
                for col in range(_ROW):
                    n = cells[base + col]
                    if n:
                        counts[(method, CODES[col])] = n
            requests.append(RequestSeries(*labels, counts, HistogramValue(view[8 * REQUESTS_COUNTS:])))
        elif info.name.startswith(UPSTREAM_PREFIX) and info.size == UPSTREAM_SIZE:
            labels = split_name(info.name, UPSTREAM_PREFIX)
            if labels is None:
                continue
            view = memory.view_of(info)
            errors = dict(zip(ERROR_KINDS, view[_HIST_BYTES:_MARKS].cast("Q").tolist(), strict=True))
            ok, failed = view[_MARKS:].cast("Q").tolist()
            upstream.append(UpstreamSeries(*labels, HistogramValue(view[:_HIST_BYTES]), errors, ok / 1e6, failed / 1e6))
    return requests, upstream, extra
