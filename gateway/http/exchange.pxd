# The active exchange's steps as cdef methods of a class between _ReaderBase (the connection's
# state, reader.pxd) and _DownstreamBase (downstream.pxd), so each is a vtable call.
from gateway.http.reader cimport _ReaderBase
from gateway.http.upstream cimport _UpstreamBase
from gateway.pipeline.context cimport RequestContext


cdef class _ExchangeBase(_ReaderBase):
    # A route's body check (FilterChain.body_check: json_check), read with the route's plan; the
    # body held for it (None unless holding) and its cap. See _hold in exchange.pyx.
    cdef object c_body
    cdef bytearray a_hold
    cdef Py_ssize_t a_hold_max

    cdef int _route_plan(self, object route) except -1
    cdef int _activate(self, RequestContext ctx, list body, bint done, bint expect) except -1
    cdef int _proxy(self, RequestContext ctx) except -1
    cdef int _send(self, _UpstreamBase up) except -1
    cdef int _body_out(self, bytes data) except -1
    cdef bint _again(self, RequestContext ctx, str kind, bint stale) except -1
    cdef int _attempt_end(self, RequestContext ctx, object kind) except -1
    cdef int _local(self, object reply) except -1
    cdef bint _hold(self, RequestContext ctx) except -1
    cdef int _hold_more(self, RequestContext ctx, bytes data, bint done) except -1
    cdef int _log(self, RequestContext ctx) except -1
