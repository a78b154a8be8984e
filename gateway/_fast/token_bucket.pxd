# Token bucket: the per-key arithmetic as a plain C struct + inline nogil functions, so the keyed
# limiter table (keyed_table.pyx) embeds a tb_state in each of its slots and calls the very same
# arithmetic as the standalone TokenBucket class below. No validation here: callers validate at
# their Python-facing edge (NaN, <= 0 rates ...), the hot path only does arithmetic.
#
# The reference model in tests/fast/reference/token_bucket.py mirrors every operation below in the
# same order, so compiled and reference answers compare exactly (IEEE doubles, no fast-math).

from libc.math cimport INFINITY, floor

from gateway._fast.clock cimport GW_MAX_STEP_BACK

ctypedef struct tb_state:
    double tokens        # tokens in the bucket at time `last`
    double last          # time of the last refill (seconds, caller's clock)


cdef inline void tb_init(tb_state* s, double capacity, double now) noexcept nogil:
    # A new key starts with a full bucket: the first request of an idle client is never limited.
    s.tokens = capacity
    s.last = now


cdef inline int tb_try_acquire(tb_state* s, double rate, double capacity, double now, double cost,
                               double* retry_after) noexcept nogil:
    """Refill, then take `cost` tokens if available. 1 = allowed, 0 = denied.

    Time going backwards (now < last): no refill and `last` stays, so a clock step back can
    never mint tokens, and the next forward step refills from the old `last` only once; beyond
    GW_MAX_STEP_BACK `last` moves back to now, tokens kept (clock.pxd).
    *retry_after: 0.0 when allowed; else seconds until `cost` tokens will be there at `rate`;
    INFINITY when cost > capacity (the bucket can never hold that much).
    """
    cdef double tokens
    if now > s.last:
        # A huge gap may overflow to +inf; the min() with capacity absorbs it.
        tokens = s.tokens + (now - s.last) * rate
        if tokens > capacity:
            tokens = capacity
        s.tokens = tokens
        s.last = now
    elif s.last - now > GW_MAX_STEP_BACK:
        # `last` lies in now's future by more than a clock step back (clock.pxd): re-anchor it
        # on now with the tokens it holds, so the bucket refills again from here.
        s.last = now
    if s.tokens >= cost:
        s.tokens = s.tokens - cost
        retry_after[0] = 0.0
        return 1
    if cost > capacity:
        retry_after[0] = INFINITY
    else:
        retry_after[0] = (cost - s.tokens) / rate
    return 0


cdef inline double tb_reset(tb_state* s, double rate, double capacity) noexcept nogil:
    """Seconds after s.last until floor(tokens) grows by one: the RateLimit-Reset of a bucket,
    the same rule as the sliding windows' "seconds until remaining grows by one". 0.0 when it
    cannot grow (one more whole token would not fit under capacity)."""
    cdef double nxt = floor(s.tokens) + 1.0
    if nxt > capacity:
        return 0.0
    return (nxt - s.tokens) / rate


cdef class TokenBucket:
    cdef tb_state _s
    cdef readonly double rate
    cdef readonly double capacity

    # Fast entry for Cython callers (filters): no tuple, no validation of `now`/`cost`
    # (the caller passes values it already validated). Returns 1/0, writes retry-after.
    cdef int c_try_acquire(self, double now, double cost, double* retry_after) noexcept
