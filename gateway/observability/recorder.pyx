# The request metrics' hot path: one call per finished exchange, from the data plane.
#
# Every label child was given its cell at config load (gateway/observability/metrics.py places one
# object per route and per upstream target in node memory), so recording a request is: a dict
# lookup by the Route object, a method and a status looked up in small tables, one atomic add for
# the count, one histogram observation (binary search + two atomic adds) and, when an upstream
# answered, one more observation or one error add. No allocation, no lock, no Python-level call.
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import logging

from gateway._fast.counters cimport CounterArray, Histogram
from gateway.pipeline.context cimport RequestContext


_log = logging.getLogger("gateway.access")


cdef inline double _now() noexcept:
    # CLOCK_MONOTONIC, the clock of time.monotonic() and so of ctx.start (the data plane's l_time);
    # uvloop's loop.time() would do too but has millisecond resolution, too coarse for 100 us buckets.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class RouteCells:
    """One (route, service)'s cells: counts by (method, code) and the request duration histogram."""
    cdef public CounterArray counts
    cdef public Histogram duration

    def __init__(self, CounterArray counts, Histogram duration):
        self.counts = counts
        self.duration = duration


cdef class TargetCells:
    """One (service, target)'s cells: upstream duration and upstream errors by kind."""
    cdef public Histogram duration
    cdef public CounterArray errors

    def __init__(self, Histogram duration, CounterArray errors):
        self.duration = duration
        self.errors = errors


cdef class Recorder:
    """Counts finished requests into node memory.

    routes:  {Route: RouteCells} of the runtime this recorder belongs to
    targets: {Target: TargetCells}
    unrouted: the cells of requests no route matched (404, 405, refused heads)
    methods: {b"GET": row, ...}; any other method counts in row `other_method`
    codes:   the status → column table (len 1000); `ncodes` columns per row
    kinds:   {"connect": 0, ...}: upstream error kinds that are counted
    late:    callable(route_or_target, is_route) → cells or None, for objects the runtime did not
             build (a request still on the previous runtime's route after a reload, a target
             registered at run time); it places them by name, the same bytes every worker finds.
    """
    cdef dict routes
    cdef dict targets
    cdef RouteCells unrouted
    cdef dict methods
    cdef Py_ssize_t other_method
    cdef Py_ssize_t ncodes
    cdef unsigned short codes[1000]
    cdef Py_ssize_t other_code
    cdef dict kinds
    cdef object late
    # The process's access log (gateway/observability/access.py) or None: called with the context
    # after the counts, from the same call, so the data plane has one hook per exchange.
    cdef public object access

    def __init__(self, dict routes, dict targets, RouteCells unrouted, dict methods,
                 Py_ssize_t other_method, list codes, Py_ssize_t ncodes, dict kinds, late=None):
        cdef Py_ssize_t i
        if len(codes) != 1000:
            raise ValueError("codes must map every status 0..999")
        self.routes = routes
        self.targets = targets
        self.unrouted = unrouted
        self.methods = methods
        self.other_method = other_method
        self.ncodes = ncodes
        for i in range(1000):
            self.codes[i] = codes[i]
        self.kinds = kinds
        self.late = late
        self.access = None

    def observe(self, RequestContext ctx not None):
        """One exchange is over (its last byte sent, or the client gone): count it, log it."""
        self._count(ctx)
        if self.access is not None:
            try:
                self.access(ctx)
            except Exception:   # the log must never break an exchange
                _log.exception("access log: a line could not be written")

    cdef int _count(self, RequestContext ctx) except -1:
        cdef RouteCells cells
        cdef TargetCells tcells
        cdef int status = ctx.status
        cdef Py_ssize_t row, col
        cdef double start = ctx.start
        route = ctx.route
        if route is None:
            cells = self.unrouted
        else:
            found = self.routes.get(route)
            if found is None:
                found = self._late(route, True)
                if found is None:
                    return 0
            cells = <RouteCells>found
        m = self.methods.get(ctx.method)
        row = self.other_method if m is None else <Py_ssize_t>m
        # 0: nothing was sent (the client left first): counted as nginx's 499.
        col = self.codes[499 if status == 0 else (status if 0 < status < 1000 else 0)]
        cells.counts.add(row * self.ncodes + col, 1)
        if start > 0.0:
            cells.duration.c_observe(_now() - start)
        target = ctx.upstream_target
        if target is None or ctx.upstream_start == 0.0:
            return 0
        found = self.targets.get(target)
        if found is None:
            found = self._late(target, False)
            if found is None:
                return 0
        tcells = <TargetCells>found
        kind = ctx.upstream_error
        if kind is None:
            if ctx.upstream_end > 0.0 and status != 0:
                tcells.duration.c_observe(ctx.upstream_end - ctx.upstream_start)
        else:
            k = self.kinds.get(kind)
            if k is not None:
                tcells.errors.add(<Py_ssize_t>k, 1)
        return 0

    cdef object _late(self, object key, bint is_route):
        if self.late is None:
            return None
        try:
            return self.late(key, is_route)
        except Exception:   # noqa - metrics never break an exchange
            return None
