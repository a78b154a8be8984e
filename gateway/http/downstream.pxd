# The client side as a cdef class: the connection's state is _ReaderBase's (reader.pxd); this
# class adds what a parsed request becomes (routing, the exchange with an upstream, local replies,
# timers) as cdef methods (vtable calls), so the hot path never looks an attribute up by name.
from gateway.http.reader cimport _ReaderBase
from gateway.http.upstream cimport _UpstreamBase
from gateway.pipeline.context cimport RequestContext


cdef class _DownstreamBase(_ReaderBase):
    cdef int _reset_parse(self) except -1
    cdef int _route_plan(self, object route) except -1
    cdef int _upgrade_head(self, RequestContext ctx) except -1
    cdef int _activate(self, RequestContext ctx, list body, bint done, bint expect) except -1
    cdef int _proxy(self, RequestContext ctx) except -1
    cdef int _send(self, _UpstreamBase up) except -1
    cdef int _body_out(self, bytes data) except -1
    cdef bint _again(self, RequestContext ctx, str kind, bint stale) except -1
    cdef int _attempt_end(self, RequestContext ctx, object kind) except -1
    cdef int _local(self, object reply) except -1
    cdef int _log(self, RequestContext ctx) except -1
