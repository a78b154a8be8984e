"""FilterChain: a route's filters, split by phase once at config load.

Only filters that override a phase are called in it, so a route with no policies costs three
empty-tuple checks per request. The chain is immutable and shared by every request of its route.

Compiled (chain.pxd): the loops over the filters were ~1.3 us of interpreted code per exchange
next to a compiled data plane, which calls c_run_access/c_run_response/c_run_log directly.

Timed (GATEWAY_TRACING=on, `timed=True` at config load): the access phase of each filter is timed,
a (filter name, start, end) tuple per filter in ctx.vars["phases"] (CLOCK_MONOTONIC seconds, the
clock of ctx.start), including the wait of a filter that waits on I/O; the span carries them
(gateway/observability/tracing.py). The filters themselves know nothing of it, and an untimed chain
(tracing off) pays one C flag test per request.
"""
import inspect
import logging

from gateway._fast.clock cimport monotonic_now as _now

from gateway.pipeline.context cimport RequestContext

from .filter import Filter
from .reply import LocalReply

log = logging.getLogger("gateway.pipeline")


def _overrides(f, phase):
    return getattr(type(f), phase) is not getattr(Filter, phase)


async def _continue_async(FilterChain chain, RequestContext ctx, pending, Py_ssize_t pos,
                          list phases=None, double t0=0.0):
    # phases (a timed chain): the waiting filter's phase ends when its awaitable does.
    result = await pending
    if phases is not None:
        phases.append((chain.filters[chain._access[pos][0]].name, t0, _now()))
    if result is not None:
        return result
    for i, access, _ in chain._access[pos + 1:]:
        if phases is not None:
            t0 = _now()
        step = access(ctx)
        ctx.filters_ran = i + 1
        reply = await step if inspect.isawaitable(step) else step
        if phases is not None:
            phases.append((chain.filters[i].name, t0, _now()))
        if reply is not None:
            return reply
    ctx.filters_ran = chain._n
    return None


cdef class CompiledAccess:

    def __call__(self, RequestContext ctx):
        return self.c_access(ctx)

    cdef object c_access(self, RequestContext ctx):
        raise NotImplementedError


cdef class FilterChain:

    def __init__(self, filters=(), *, timed=False, body_check=None):
        self.filters = tuple(filters)
        self._n = len(self.filters)
        self._timed = bool(timed)
        self.body_check = body_check
        # Access filters keep their chain index so the response phase can run exactly the filters
        # whose access phase ran (ctx.filters_ran counts chain positions, not access filters).
        self._access = tuple((i, f.access, isinstance(f.access, CompiledAccess))
                             for i, f in enumerate(self.filters) if _overrides(f, "access"))
        self._response = tuple(reversed(
            [(i, f.response) for i, f in enumerate(self.filters) if _overrides(f, "response")]))
        self._log = tuple(f.log for f in self.filters if _overrides(f, "log"))

    @property
    def has_response(self):
        """Some filter overrides response (the data plane builds the list of response fields for
        it to edit only then; it reads _response directly)."""
        return bool(self._response)

    @property
    def empty(self):
        return not self.filters

    def run_access(self, RequestContext ctx):
        """Run the access phase; see Filter.access for the result: None, a LocalReply, or an
        awaitable resolving to either (only when a filter waits on I/O)."""
        return self.c_run_access(ctx)

    def run_response(self, RequestContext ctx, int status, list headers):
        self.c_run_response(ctx, status, headers)

    def run_log(self, RequestContext ctx):
        self.c_run_log(ctx)

    cdef object c_run_access(self, RequestContext ctx):
        cdef Py_ssize_t pos = 0
        cdef tuple entry
        if not self._access:
            ctx.filters_ran = self._n
            return None
        if self._timed:
            return self._run_access_timed(ctx)
        ctx.filters_ran = 0
        for entry in self._access:
            if entry[2]:
                result = (<CompiledAccess>entry[1]).c_access(ctx)   # a C call
            else:
                result = entry[1](ctx)
            ctx.filters_ran = <int>entry[0] + 1
            if result is not None:
                if type(result) is LocalReply or not inspect.isawaitable(result):
                    return result  # a LocalReply: the chain stops here
                return _continue_async(self, ctx, result, pos)
            pos += 1
        ctx.filters_ran = self._n
        return None

    cdef object _run_access_timed(self, RequestContext ctx):
        """c_run_access, each filter's phase timed into ctx.vars["phases"] (see the module doc)."""
        cdef Py_ssize_t pos = 0
        cdef tuple entry
        cdef double t0
        cdef list phases = []
        if ctx.vars is None:
            ctx.vars = {"phases": phases}
        else:
            ctx.vars["phases"] = phases
        ctx.filters_ran = 0
        for entry in self._access:
            t0 = _now()
            if entry[2]:
                result = (<CompiledAccess>entry[1]).c_access(ctx)
            else:
                result = entry[1](ctx)
            ctx.filters_ran = <int>entry[0] + 1
            if result is not None and type(result) is not LocalReply and inspect.isawaitable(result):
                return _continue_async(self, ctx, result, pos, phases, t0)
            phases.append((self.filters[<int>entry[0]].name, t0, _now()))
            if result is not None:
                return result
            pos += 1
        ctx.filters_ran = self._n
        return None

    cdef int c_run_response(self, RequestContext ctx, int status, list headers) except -1:
        cdef int ran = ctx.filters_ran
        cdef tuple entry
        for entry in self._response:
            if <int>entry[0] < ran:
                entry[1](ctx, status, headers)
        return 0

    cdef int c_run_log(self, RequestContext ctx) except -1:
        for f in self._log:
            try:
                f(ctx)
            except Exception:  # noqa: BLE001 - a log filter must never break the connection
                log.exception("log filter failed")
        return 0


EMPTY_CHAIN = FilterChain(())
