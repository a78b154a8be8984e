# The client side's last layer: the connection's life, the parser's callbacks, refusals and timers,
# on top of _ExchangeBase (exchange.pxd: what a parsed request becomes) and _ReaderBase (reader.pxd:
# the connection's state and its reads), all cdef methods (vtable calls).
from gateway.http.exchange cimport _ExchangeBase
from gateway.pipeline.context cimport RequestContext


cdef class _DownstreamBase(_ExchangeBase):
    cdef int _reset_parse(self) except -1
    cdef int _upgrade_head(self, RequestContext ctx) except -1
    cdef int _refused(self, RequestContext ctx, object reply, bytes rid, double head_start) except -1
