# FilterChain compiled: the data plane calls the c_run_* methods directly (a C call, no Python
# frame), and the loops over a route's filters run in C; only the filters themselves are calls.
from gateway.pipeline.context cimport RequestContext


# A filter phase compiled in Cython: bound as a filter's `access`, it is called by the chain as a
# C method (no argument tuple, no Python frame). Python callers call the instance.
cdef class CompiledAccess:
    cdef object c_access(self, RequestContext ctx)


cdef class FilterChain:
    cdef readonly tuple filters
    cdef tuple _access      # (chain index, bound access, compiled?) per filter overriding access
    cdef tuple _response    # (chain index, bound response), already reversed
    cdef tuple _log         # bound log per filter overriding log
    cdef int _n
    cdef bint _timed        # GATEWAY_TRACING=on: each access filter's phase is timed (ctx.vars["phases"])
    # A route policy that needs the whole request body before anything goes upstream (the JSON
    # check): held by the data plane up to body_check.max_bytes (exchange.pyx, _hold). None: none.
    cdef readonly object body_check

    cdef object c_run_access(self, RequestContext ctx)
    cdef object _run_access_timed(self, RequestContext ctx)
    cdef int c_run_response(self, RequestContext ctx, int status, list headers) except -1
    cdef int c_run_log(self, RequestContext ctx) except -1
