# The end of every exchange, from the data plane: request metrics, then the access log line.
#
# Every label child was given its cell at config load (gateway/observability/metrics.py places one
# object per route and per upstream target in node memory), so recording a request is: a dict
# lookup by the Route object, a method and a status looked up in small tables, one atomic add for
# the count, one histogram observation (binary search + two atomic adds) and, when an upstream
# answered, one more observation or one error add. No allocation, no lock, no Python-level call.
#
# With GATEWAY_ACCESS_LOG on, the line is formatted here too, in C, straight into one growing
# buffer (LineBuffer): the route's and target's JSON fragments were encoded at config load, the
# rest are numbers and the few request fields, escaped byte by byte. Measured why: the same line
# built as a dict and encoded with orjson per request cost more CPU than the whole proxied exchange
# (bench/results/observability.md).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
# CLOCK_MONOTONIC, the clock of ctx.start; uvloop's loop.time() would do too but has millisecond
# resolution, too coarse for the 100 us buckets.
from gateway._fast.clock cimport monotonic_now as _now, wall_now

import logging
import time

from gateway.pipeline.context cimport RequestContext

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


_log = logging.getLogger("gateway.access")


cdef class RouteCells:
    """One (route, service)'s cells: counts by (method, code), the request duration histogram,
    and its access-log fragment (`,"route":"..","service":".."`, JSON encoded at config load)."""
    def __init__(self, CounterArray counts, Histogram duration, bytes frag=b""):
        self.counts = counts
        self.duration = duration
        self.frag = frag


cdef class TargetCells:
    """One (service, target)'s cells: upstream duration, upstream errors by kind, when it last
    answered and last failed (CLOCK_MONOTONIC microseconds: the /status page's passive health),
    and its access-log fragment (`,"target":".."`)."""
    def __init__(self, Histogram duration, CounterArray errors, CounterArray marks, bytes frag=b""):
        self.duration = duration
        self.errors = errors
        self.marks = marks
        self.frag = frag


cdef char* _HEX = b"0123456789abcdef"


cdef class LineBuffer:
    """Access-log lines (JSON, one per request) appended into one C buffer; `take()` hands the
    bytes over (the writer thread writes them). Grows as needed; the owner bounds it by taking."""
    def __cinit__(self, Py_ssize_t cap=1 << 17):
        self.buf = <char*>malloc(cap)
        if self.buf == NULL:
            raise MemoryError()
        self.cap = cap
        self.used = 0
        self.lines = 0
        self._sec = -1
        self._sec_text = b""

    def __dealloc__(self):
        free(self.buf)

    @property
    def size(self) -> int:
        return self.used

    def take(self) -> bytes:
        out = PyBytes_FromStringAndSize(self.buf, self.used)
        self.used = 0
        self.lines = 0
        return out

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t want = self.used + n
        cdef char* p
        if want <= self.cap:
            return 0
        while self.cap < want:
            self.cap *= 2
        p = <char*>realloc(self.buf, self.cap)
        if p == NULL:
            raise MemoryError()
        self.buf = p
        return 0

    cdef inline void _raw(self, const char* s, Py_ssize_t n) noexcept:
        memcpy(self.buf + self.used, s, n)
        self.used += n

    cdef int _bytes(self, bytes b) except -1:
        self._reserve(PyBytes_GET_SIZE(b))
        self._raw(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        return 0

    cdef int _str(self, const char* s, Py_ssize_t n) except -1:
        """A JSON string: quotes, backslashes and control bytes escaped, and bytes >= 0x80 written
        \\u00XX (a request path need not be UTF-8; the line must stay valid JSON)."""
        cdef Py_ssize_t i
        cdef unsigned char c
        cdef char* out
        self._reserve(6 * n + 2)
        out = self.buf + self.used
        out[0] = b'"'
        out += 1
        for i in range(n):
            c = <unsigned char>s[i]
            if c == 34 or c == 92:          # " and \
                out[0] = b'\\'
                out[1] = <char>c
                out += 2
            elif c < 0x20 or c >= 0x7f:
                out[0] = b'\\'
                out[1] = b'u'
                out[2] = b'0'
                out[3] = b'0'
                out[4] = _HEX[c >> 4]
                out[5] = _HEX[c & 15]
                out += 6
            else:
                out[0] = <char>c
                out += 1
        out[0] = b'"'
        self.used = out + 1 - self.buf
        return 0

    cdef int _obj(self, object v) except -1:
        """bytes or str as a JSON string, anything else as null."""
        cdef Py_ssize_t n
        cdef const char* p
        if type(v) is bytes:
            return self._str(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
        if type(v) is str:
            p = PyUnicode_AsUTF8AndSize(v, &n)
            return self._str(p, n)
        self._reserve(4)
        self._raw(b"null", 4)
        return 0

    cdef int _secs(self, double v) except -1:
        """Seconds with 6 decimals, through integers (a %f conversion costs several times more)."""
        cdef long long us = <long long>(v * 1e6 + 0.5) if v > 0.0 else 0
        self._reserve(48)
        self.used += snprintf(self.buf + self.used, 48, "%lld.%06lld", us // 1000000, us % 1000000)
        return 0

    cdef int add(self, RequestContext ctx, bytes route_frag, bytes target_frag, int status) except -1:
        cdef double wall = wall_now()
        cdef long long sec = <long long>wall
        cdef int ms = <int>((wall - sec) * 1000.0)
        cdef double start = ctx.start
        tp = ctx.traceparent
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        self._reserve(64)
        self._raw(b'{"time":"', 9)
        self._raw(PyBytes_AS_STRING(self._sec_text), PyBytes_GET_SIZE(self._sec_text))
        self.used += snprintf(self.buf + self.used, 16, ".%03dZ\"", ms)
        self._reserve(16)
        self._raw(b',"request_id":', 14)
        self._obj(ctx.request_id)
        self._reserve(16)
        self._raw(b',"trace_id":', 12)
        if type(tp) is bytes and PyBytes_GET_SIZE(tp) >= 35:
            self._str(PyBytes_AS_STRING(tp) + 3, 32)
        else:
            self._obj(None)
        self._reserve(16)
        self._raw(b',"client_ip":', 13)
        self._obj(ctx.client_ip)
        self._reserve(16)
        self._raw(b',"method":', 10)
        self._obj(ctx.method)
        self._reserve(16)
        self._raw(b',"path":', 8)
        self._obj(ctx.path)
        self._bytes(route_frag)
        self._bytes(target_frag)
        self._reserve(96)
        self.used += snprintf(self.buf + self.used, 96, ',"status":%d,"bytes_in":%lld,"bytes_out":%lld',
                              status, ctx.bytes_in, ctx.bytes_out)
        self._reserve(16)
        self._raw(b',"duration":', 12)
        if start > 0.0:
            self._secs(_now() - start)
        else:
            self._raw(b"null", 4)
        self._reserve(24)
        self._raw(b',"upstream_duration":', 21)
        if ctx.upstream_start > 0.0 and ctx.upstream_end > 0.0:
            self._secs(ctx.upstream_end - ctx.upstream_start)
        else:
            self._raw(b"null", 4)
        if ctx.upstream_error is not None:
            self._reserve(20)
            self._raw(b',"upstream_error":', 18)
            self._obj(ctx.upstream_error)
        self._reserve(2)
        self._raw(b"}\n", 2)
        self.lines += 1
        return 0


cdef class Recorder:
    """Counts finished requests into node memory, and writes their access-log lines.

    routes:  {Route: RouteCells} of the runtime this recorder belongs to
    targets: {Target: TargetCells}
    unrouted: the cells of requests no route matched (404, 405, refused heads)
    methods: {b"GET": row, ...}; any other method counts in row `other_method`
    codes:   the status → column table (len 1000); `ncodes` columns per row
    kinds:   {"connect": 0, ...}: upstream error kinds that are counted
    late:    callable(route_or_target, is_route) → cells or None, for objects the runtime did not
             build (a request still on the previous runtime's route after a reload, a target
             registered at run time); it places them by name, the same bytes every worker finds.
    access:  the process's AccessLog (gateway/observability/access.py) or None; its `lines`
             (a LineBuffer) get one line per request and `flush()` is called past `flush_bytes`.
    """
    def __init__(self, dict routes, dict targets, RouteCells unrouted, dict methods,
                 Py_ssize_t other_method, list codes, Py_ssize_t ncodes, dict kinds, late=None):
        cdef Py_ssize_t i
        if len(codes) != 1000:
            raise ValueError("codes must map every status 0..999")
        self.routes = routes
        self.targets = targets
        self.unrouted = unrouted
        self.other_method = other_method
        if len(methods) > 16 or any(type(m) is not bytes or not 0 < len(m) <= 16 for m in methods):
            raise ValueError("methods: at most 16, each 1-16 bytes")
        self.nmethods = 0
        for m, r in methods.items():
            memcpy(self.mnames[self.nmethods], PyBytes_AS_STRING(m), len(m))
            self.mlens[self.nmethods] = len(m)
            self.mrows[self.nmethods] = r
            self.nmethods += 1
        self.ncodes = ncodes
        for i in range(1000):
            self.codes[i] = codes[i]
        self.kinds = kinds
        self.late = late
        self._access = None
        self._lines = None
        self.tracer = None
        self.errors = None
        for i in range(1000):
            self.fails[i] = 1 if i >= 500 and i < 600 else 0
        for i in (400, 408, 413, 414, 431, 499):
            self.fails[i] = 1

    @property
    def access(self):
        return self._access

    @access.setter
    def access(self, log):
        self._access = log
        self._lines = log.lines if log is not None else None
        self._flush_bytes = log.flush_bytes if log is not None else 0

    def observe(self, RequestContext ctx not None):
        """One exchange is over (its last byte sent, or the client gone): count it, log it."""
        self.c_observe(ctx)

    cdef int c_observe(self, RequestContext ctx) except -1:
        cdef RouteCells cells
        cdef TargetCells tcells = None
        cdef int status = ctx.status
        cdef Py_ssize_t row, col
        cdef double start = ctx.start
        cdef PyObject* p
        if status == 0:
            status = 499    # nothing was sent (the client left first): nginx's 499
        route = ctx.route
        # PyDict_GetItemWithError (a borrowed reference) rather than dict.get's call: the keys
        # are the runtime's Route and Target objects, hashed by identity.
        if route is None:
            cells = self.unrouted
        else:
            p = PyDict_GetItemWithError(self.routes, route)
            if p != NULL:
                cells = <RouteCells>p
            else:
                found = self._late(route, True)
                if found is None:
                    return 0
                cells = <RouteCells>found
        row = self._method_row(ctx.method)
        col = self.codes[status if status < 1000 else 0]
        cells.counts.add(row * self.ncodes + col, 1)
        if start > 0.0:
            cells.duration.c_observe(_now() - start)
        target = ctx.upstream_target
        if target is not None and ctx.upstream_start != 0.0:
            p = PyDict_GetItemWithError(self.targets, target)
            found = <object>p if p != NULL else self._late(target, False)
            if found is not None:
                tcells = <TargetCells>found
                kind = ctx.upstream_error
                if kind is None:
                    if ctx.upstream_end > 0.0 and ctx.status != 0:
                        tcells.duration.c_observe(ctx.upstream_end - ctx.upstream_start)
                        # A plain aligned 8-byte store: the latest writer wins, which is the point.
                        tcells.marks._p[0] = <uint64_t>(ctx.upstream_end * 1e6)
                else:
                    k = self.kinds.get(kind)
                    if k is not None:
                        tcells.errors.add(<Py_ssize_t>k, 1)
                        tcells.marks._p[1] = <uint64_t>(_now() * 1e6)
        if self._lines is not None:
            try:
                self._lines.add(ctx, cells.frag, tcells.frag if tcells is not None else b',"target":null', status)
                if self._lines.used >= self._flush_bytes:
                    self._access.flush()
            except Exception:   # the log must never break an exchange
                _log.exception("access log: a line could not be written")
        if self.tracer is not None:
            try:
                self.tracer(ctx)
            except Exception:   # nor may tracing
                _log.exception("tracing: a span could not be recorded")
        if self.errors is not None and (self.fails[status if status < 1000 else 0] or ctx.upstream_error is not None):
            try:
                self.errors.report(ctx, status)
            except Exception:   # nor may the error log
                _log.exception("error log: a line could not be written")
        return 0

    cdef Py_ssize_t _method_row(self, object method) noexcept:
        """`methods`' row for the method, or other_method: a scan of the C copy (a length check
        and a memcmp; GET first). A dict lookup would compare the bytes anyway, the request's
        method being another object than the dict's key (~135 instructions more)."""
        cdef Py_ssize_t i, n
        cdef const char* s
        if type(method) is not bytes:
            return self.other_method
        n = PyBytes_GET_SIZE(method)
        s = PyBytes_AS_STRING(method)
        for i in range(self.nmethods):
            if self.mlens[i] == n and memcmp(self.mnames[i], s, n) == 0:
                return self.mrows[i]
        return self.other_method

    cdef object _late(self, object key, bint is_route):
        if self.late is None:
            return None
        try:
            return self.late(key, is_route)
        except Exception:   # metrics never break an exchange
            return None
