"""RateLimitFilter's common case compiled (gateway/filters/ratelimit.py): a request checked
against in-memory policies only (embedded mode) and, when `[quotas]` exist, a request without a
user. It runs the same steps as RateLimitFilter.access in the same order, calling the keyed
table's C check directly and building the RateLimit-* headers without Python frames; anything
else (a quota to count, a refusal, a clock reading the tables would refuse) goes to the Python
code, which stays the one place those are decided.
"""
from cpython.bytes cimport PyBytes_FromFormat
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite

from gateway._fast.counters cimport CounterArray
from gateway._fast.keyed_table cimport KeyedLimiterTable
from gateway.pipeline.context cimport RequestContext

cdef enum:
    K_IP = 0
    K_USER = 1
    K_ORG = 2
    K_API_KEY = 3
    K_ROUTE = 4
    K_HEADER = 5

_KINDS = {"ip": K_IP, "user": K_USER, "org": K_ORG, "api_key": K_API_KEY, "route": K_ROUTE}
ROUTE_KEY = "route"

# Header values of small numbers, made once (as ratelimit.py's _NUMBERS).
cdef tuple _NUMBERS = tuple(b"%d" % i for i in range(4096))
cdef bytes H_REMAINING = b"RateLimit-Remaining"
cdef bytes H_RESET = b"RateLimit-Reset"


cdef inline bytes _number(long long n):
    if 0 <= n < 4096:
        return <bytes>_NUMBERS[n]
    return PyBytes_FromFormat("%lld", n)


cdef class _Compiled:
    """One policy as the compiled path reads it (ratelimit.Policy holds the same, in Python)."""
    cdef object policy          # the ratelimit.Policy (for the refusal path)
    cdef KeyedLimiterTable table
    cdef int kind
    cdef bytes header           # K_HEADER: the lower-case field name
    cdef tuple limit_header
    cdef bint bucket
    cdef double rate, capacity
    cdef Py_ssize_t cell


def eligible(policies, counters):
    """Whether fast_access can stand for the filter: embedded tables of a known key kind."""
    if type(counters) is not CounterArray:
        return False
    for p in policies:
        if type(p.table) is not KeyedLimiterTable or getattr(p, "leases", None) is not None:
            return False
        key = p.config.key
        if key not in _KINDS and not key.startswith("header:"):
            return False
    return True


cdef class FastAccess:
    """Bound as the filter's `access` (see RateLimitFilter.__init__)."""
    cdef object filter          # the RateLimitFilter: its Python access/_reject for the rest
    cdef tuple pols
    cdef CounterArray counters
    cdef object clock

    def __init__(self, filter, policies, CounterArray counters, clock):
        cdef _Compiled c
        out = []
        for p in policies:
            c = _Compiled()
            c.policy = p
            c.table = p.table
            key = p.config.key
            if key.startswith("header:"):
                c.kind = K_HEADER
                c.header = key[7:].encode("latin-1")
            else:
                c.kind = _KINDS[key]
            c.limit_header = p.limit_header
            c.bucket = p.bucket
            c.rate = p.rate
            c.capacity = p.capacity
            c.cell = p.cell
            out.append(c)
        self.filter = filter
        self.pols = tuple(out)
        self.counters = counters
        self.clock = clock

    def __call__(self, RequestContext ctx, may_wait=True):
        cdef _Compiled c
        cdef _Compiled best = None
        cdef long long best_rem = 0, rem
        cdef double best_reset = 0.0, reset, left, a, b, nxt, now_d
        cdef Py_ssize_t n, i, npol
        cdef const char* data
        cdef int ok
        cdef long long r
        f = self.filter
        if f.quotas is not None and ctx.consumer_id:
            return f.python_access(ctx, may_wait)
        now = self.clock()
        now_d = now
        if not (now_d >= 0.0) or not isfinite(now_d):
            return f.python_access(ctx, may_wait)   # the table's own error, from the Python path
        npol = len(self.pols)
        keys = [None] * npol
        for i in range(npol):
            c = <_Compiled>self.pols[i]
            key = _key(c, ctx)
            keys[i] = key
            data = PyUnicode_AsUTF8AndSize(key, &n)
            ok = c.table.c_check(data, <size_t>n, now_d, 1.0, &a, &b)
            if c.bucket:
                # Policy._bucket_check: tokens left -> remaining hits, and when one more comes.
                left = a
                rem = <long long>left
                reset = b
                if ok:
                    nxt = rem + 1
                    reset = 0.0 if nxt > c.capacity else (nxt - left) / c.rate
            else:
                rem = <long long>a
                reset = b
            if not ok:
                taken = [((<_Compiled>self.pols[j]).policy, keys[j]) for j in range(i)]
                return f._reject(ctx, c.policy, rem, reset, taken, now, "rate_limited", c.cell + 1, key)
            if best is None or rem < best_rem:
                best, best_rem, best_reset = c, rem, reset
        if best is not None:
            if not isfinite(best_reset):
                f._add_headers(ctx, best.policy, best_rem, best_reset)
            else:
                r = <long long>best_reset
                if best_reset > r:
                    r += 1                  # ceil, for the finite positive resets of an allowed request
                ctx.response_headers.extend([best.limit_header, (H_REMAINING, _number(best_rem)),
                                             (H_RESET, _number(r))])
            for i in range(npol):
                self.counters.add((<_Compiled>self.pols[i]).cell, 1)
        return None


cdef inline str _key(_Compiled c, RequestContext ctx):
    # ratelimit.py's key functions, in the same words (the tables hash these strings).
    cdef int kind = c.kind
    if kind == K_IP:
        return "ip:" + ctx.client_ip
    if kind == K_USER:
        u = ctx.consumer_id
        return "u:" + u if u else "ip:" + ctx.client_ip
    if kind == K_ORG:
        o = ctx.consumer_org
        return "o:" + o if o else "ip:" + ctx.client_ip
    if kind == K_API_KEY:
        k = ctx.api_key_id
        return "k:" + k if k else "ip:" + ctx.client_ip
    if kind == K_ROUTE:
        return ROUTE_KEY
    for name, value in ctx.headers:
        if name == c.header:
            return "h:" + value.decode("latin-1")
    return "ip:" + ctx.client_ip
