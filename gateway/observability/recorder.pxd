# The Recorder's C interface: the data plane (gateway/http/exchange.pyx, downstream.pyx) calls
# c_observe directly instead of the Python-level observe (a method lookup and an argument parse
# per finished exchange).
from gateway._fast.counters cimport CounterArray, Histogram
from gateway.pipeline.context cimport RequestContext


cdef class RouteCells:
    cdef public CounterArray counts
    cdef public Histogram duration
    cdef public bytes frag


cdef class TargetCells:
    cdef public Histogram duration
    cdef public CounterArray errors
    cdef public CounterArray marks
    cdef public bytes frag


cdef class LineBuffer:
    cdef char* buf
    cdef Py_ssize_t used
    cdef Py_ssize_t cap
    cdef readonly Py_ssize_t lines
    cdef long long _sec
    cdef bytes _sec_text
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef void _raw(self, const char* s, Py_ssize_t n) noexcept
    cdef int _bytes(self, bytes b) except -1
    cdef int _str(self, const char* s, Py_ssize_t n) except -1
    cdef int _obj(self, object v) except -1
    cdef int _secs(self, double v) except -1
    cdef int add(self, RequestContext ctx, bytes route_frag, bytes target_frag, int status) except -1


cdef class Recorder:
    cdef dict routes
    cdef dict targets
    cdef RouteCells unrouted
    cdef Py_ssize_t other_method
    # the methods given to __init__ ({b"GET": row, ...}) as C arrays in their order: _method_row
    cdef char mnames[16][16]
    cdef Py_ssize_t mlens[16]
    cdef Py_ssize_t mrows[16]
    cdef Py_ssize_t nmethods
    cdef Py_ssize_t ncodes
    cdef unsigned short codes[1000]
    cdef dict kinds
    cdef object late
    cdef object _access
    cdef LineBuffer _lines
    cdef Py_ssize_t _flush_bytes
    # GATEWAY_TRACING=on: the process's Tracer (gateway/observability/tracing.py), called last.
    cdef public object tracer
    # The process's ErrorLog (gateway/observability/errorlog.py), or None. Called only for the
    # statuses `fails` marks (400, 408, 413, 414, 431, 499 and 5xx) or an upstream error, so a
    # successful exchange pays one table read for it.
    cdef public object errors
    cdef unsigned char fails[1000]
    cdef int c_observe(self, RequestContext ctx) except -1
    cdef Py_ssize_t _method_row(self, object method) noexcept
    cdef object _late(self, object key, bint is_route)
