"""RateLimitFilter's common case compiled (gateway/filters/ratelimit.py): a request checked
against in-memory policies only (embedded mode), or against Redis-mode policies whose keys all
have leased tokens in hand (ratelimit_redis.py), and, when `[quotas]` exist, a request without a
user. It runs the same steps as RateLimitFilter.access in the same order, calling the keyed
table's C check directly and building the RateLimit-* headers without Python frames; anything
else (a quota to count, a refusal, a clock reading the tables would refuse) goes to the Python
code, which stays the one place those are decided.
"""
import time

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite
from libc.string cimport memcpy
from libc.math cimport floor, fmod
from gateway._fast.clock cimport monotonic_now, wall_now as _wall

from gateway._fast.counters cimport CounterArray
from gateway._fast.keyed_table cimport KeyedLimiterTable
from gateway.http.head cimport HeaderView
from gateway.pipeline.chain cimport CompiledAccess
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

# Header fields of small numbers, made once (ratelimit.py's _NUMBERS, as whole fields).
cdef bytes H_REMAINING = b"RateLimit-Remaining"
cdef bytes H_RESET = b"RateLimit-Reset"
cdef tuple _REMAINING = tuple((H_REMAINING, b"%d" % i) for i in range(4096))
cdef tuple _RESET = tuple((H_RESET, b"%d" % i) for i in range(4096))
DEF KEY_BUF = 256


cdef bytes _digits(long long n):
    # b"%d" % n for n >= 0, without the format machinery.
    cdef char buf[24]
    cdef int i = 24
    if n == 0:
        return b"0"
    while n > 0 and i > 0:
        i -= 1
        buf[i] = <char>(48 + n % 10)
        n //= 10
    return PyBytes_FromStringAndSize(buf + i, 24 - i)


cdef inline tuple _field(tuple small, bytes name, long long n):
    if 0 <= n < 4096:
        return <tuple>small[n]
    return (name, _digits(n)) if n > 0 else (name, b"%d" % n)


cdef inline double _floordiv(double x, double y) noexcept:
    # Python's float `x // y` (floatobject.c), so both paths agree on a window's index.
    cdef double mod = fmod(x, y)
    cdef double div = (x - mod) / y
    cdef double fd
    if mod and ((y < 0) != (mod < 0)):
        div -= 1.0
    if div:
        fd = floor(div)
        if div - fd > 0.5:
            fd += 1.0
    else:
        fd = 0.0
    return fd


cdef class Lease:
    """One key's lease in one process (ratelimit_redis.RedisLeases uses it as a plain object)."""
    cdef public long long window        # fixed-window index the tokens belong to
    cdef public long long tokens
    cdef public long long grant         # size of the last grant (refill threshold: a quarter)
    cdef public object pending          # the refill's future while one is in flight, else None
    cdef public int waiters
    cdef public long long remaining     # the limit's room after the last grant (RateLimit-Remaining)
    cdef public double denied_until     # Redis had no room: refused locally until then (wall clock)
    cdef public bint failed             # the last lease call failed (Redis unreachable or too slow)

    def __cinit__(self):
        self.window = -1
        self.pending = None


cdef class _Compiled:
    """One policy as the compiled path reads it (ratelimit.Policy holds the same, in Python)."""
    cdef object policy          # the ratelimit.Policy (for the refusal path)
    cdef KeyedLimiterTable table
    cdef object leases          # Redis mode: the RedisLeases (table is then None)
    cdef dict lease_map         # its key -> Lease
    cdef object link            # its RedisLink (`up`)
    cdef double window
    cdef int kind
    cdef bytes header           # K_HEADER: the lower-case field name
    cdef tuple limit_header
    cdef bint bucket
    cdef double rate, capacity
    cdef Py_ssize_t cell


def eligible(policies, counters):
    """Whether fast_access can stand for the filter: embedded tables of a known key kind, or
    (Redis mode) leases on the wall clock, all of one kind."""
    if type(counters) is not CounterArray:
        return False
    leased = 0
    for p in policies:
        leases = getattr(p, "leases", None)
        if leases is not None:
            if leases.clock is not time.time or type(leases.leases) is not dict:
                return False
            leased += 1
        elif type(p.table) is not KeyedLimiterTable:
            return False
        key = p.config.key
        if key not in _KINDS and not key.startswith("header:"):
            return False
    return leased == 0 or leased == len(policies)


cdef class FastAccess(CompiledAccess):
    """Bound as the filter's `access` (see RateLimitFilter.__init__)."""
    cdef object filter          # the RateLimitFilter: its Python access/_reject for the rest
    cdef tuple pols
    cdef CounterArray counters
    cdef object clock
    cdef bint monotonic         # clock is time.monotonic: read CLOCK_MONOTONIC directly
    cdef object quotas
    cdef bint leased            # Redis mode: every policy spends leased tokens

    def __init__(self, filter, policies, CounterArray counters, clock):
        cdef _Compiled c
        out = []
        self.leased = False
        for p in policies:
            c = _Compiled()
            c.policy = p
            leases = getattr(p, "leases", None)
            if leases is not None:
                self.leased = True
                c.leases = leases
                c.lease_map = leases.leases
                c.link = leases.link
                c.window = leases.window
            else:
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
        self.monotonic = clock is time.monotonic
        self.quotas = filter.quotas

    def __call__(self, RequestContext ctx, may_wait=True):
        return self.c_access(ctx)

    cdef object c_access(self, RequestContext ctx):
        cdef _Compiled c
        cdef _Compiled best = None
        cdef long long best_rem = 0, rem
        cdef double best_reset = 0.0, reset, left, a, b, nxt, now_d
        cdef Py_ssize_t n, i, npol
        cdef const char* data
        cdef char buf[KEY_BUF]
        cdef int ok
        cdef long long r
        if self.quotas is not None and ctx.consumer_id:
            return self.filter.python_access(ctx)
        if self.leased:
            return self.leased_access(ctx)
        if self.monotonic:
            now_d = monotonic_now()   # time.monotonic()'s clock, without the Python call
        else:
            now = self.clock()
            now_d = now
            if not (now_d >= 0.0) or not isfinite(now_d):
                return self.filter.python_access(ctx)   # the table's own error, from the Python path
        npol = len(self.pols)
        for i in range(npol):
            c = <_Compiled>self.pols[i]
            if _key_bytes(c, ctx, buf, &n):
                ok = c.table.c_check(buf, <size_t>n, now_d, 1.0, &a, &b)
            else:
                key = _key(c, ctx)
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
                taken = [((<_Compiled>self.pols[j]).policy, _key(<_Compiled>self.pols[j], ctx)) for j in range(i)]
                return self.filter._reject(ctx, c.policy, rem, reset, taken, now_d, "rate_limited", c.cell + 1,
                                           _key(c, ctx))
            if best is None or rem < best_rem:
                best, best_rem, best_reset = c, rem, reset
        if best is not None:
            headers = ctx.response_headers
            if not isfinite(best_reset) or type(headers) is not list:
                self.filter._add_headers(ctx, best.policy, best_rem, best_reset)
            else:
                r = <long long>best_reset
                if best_reset > r:
                    r += 1                  # ceil, for the finite positive resets of an allowed request
                PyList_Append(headers, best.limit_header)
                PyList_Append(headers, _field(_REMAINING, H_REMAINING, best_rem))
                PyList_Append(headers, _field(_RESET, H_RESET, r))
            for i in range(npol):
                self.counters.add((<_Compiled>self.pols[i]).cell, 1)
        return None


    cdef object leased_access(self, RequestContext ctx):
        # RedisLeases.check's common case: every policy's key holds a token of the current
        # window and Redis is up. Checked for all policies first, then spent: nothing is taken
        # when any of them needs the Python path (a lease to wait for, a refusal, the fallback).
        cdef _Compiled c
        cdef Lease lease
        cdef Py_ssize_t i, npol = len(self.pols)
        cdef double wall = _wall()
        cdef long long w, rem, best_rem = 0, r
        cdef double reset, best_reset = 0.0
        cdef _Compiled best = None
        keys = []
        for i in range(npol):
            c = <_Compiled>self.pols[i]
            if not c.link.up:
                return self.filter.python_access(ctx)
            key = _key(c, ctx)
            found = c.lease_map.get(key)
            if found is None:
                return self.filter.python_access(ctx)
            lease = <Lease>found
            if lease.window != <long long>_floordiv(wall, c.window) or lease.tokens <= 0:
                return self.filter.python_access(ctx)
            keys.append(key)
        for i in range(npol):
            c = <_Compiled>self.pols[i]
            lease = <Lease>c.lease_map[keys[i]]
            w = lease.window
            lease.tokens -= 1
            if lease.tokens * 4 <= lease.grant and lease.pending is None:
                c.leases._refill(keys[i], lease, w)
            rem = lease.remaining + lease.tokens
            reset = (w + 1) * c.window - wall
            if best is None or rem < best_rem:
                best, best_rem, best_reset = c, rem, reset
            self.counters.add(c.cell, 1)
        if best is not None:
            headers = ctx.response_headers
            if not isfinite(best_reset) or best_reset < 0 or type(headers) is not list:
                self.filter._add_headers(ctx, best.policy, best_rem, best_reset)
            else:
                r = <long long>best_reset
                if best_reset > r:
                    r += 1
                PyList_Append(headers, best.limit_header)
                PyList_Append(headers, _field(_REMAINING, H_REMAINING, best_rem))
                PyList_Append(headers, _field(_RESET, H_RESET, r))
        return None


cdef inline bint _prefixed(const char* prefix, Py_ssize_t plen, object s, char* buf, Py_ssize_t* n) except -1:
    # buf = prefix + UTF-8 of s (what the table hashes for the str key prefix + s); False when it
    # does not fit or s is not a str (the caller then builds the str key).
    cdef const char* d
    cdef Py_ssize_t m
    if type(s) is not str:
        return False
    d = PyUnicode_AsUTF8AndSize(s, &m)
    if plen + m > KEY_BUF:
        return False
    memcpy(buf, prefix, plen)
    memcpy(buf + plen, d, m)
    n[0] = plen + m
    return True


cdef inline bint _key_bytes(_Compiled c, RequestContext ctx, char* buf, Py_ssize_t* n) except -1:
    # _key's bytes without making the str (ip, user, org, api_key kinds).
    cdef int kind = c.kind
    if kind == K_USER:
        u = ctx.consumer_id
        if u:
            return _prefixed("u:", 2, u, buf, n)
    elif kind == K_ORG:
        o = ctx.consumer_org
        if o:
            return _prefixed("o:", 2, o, buf, n)
    elif kind == K_API_KEY:
        k = ctx.api_key_id
        if k:
            return _prefixed("k:", 2, k, buf, n)
    elif kind != K_IP:
        return False
    return _prefixed("ip:", 3, ctx.client_ip, buf, n)

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
    headers = ctx.headers
    if type(headers) is HeaderView:
        # the one field read in place (head.pyx)
        value = (<HeaderView>headers).c_get(PyBytes_AS_STRING(c.header), PyBytes_GET_SIZE(c.header))
        if value is not None:
            return "h:" + value.decode("latin-1")
        return "ip:" + ctx.client_ip
    for name, value in headers:
        if name == c.header:
            return "h:" + value.decode("latin-1")
    return "ip:" + ctx.client_ip
