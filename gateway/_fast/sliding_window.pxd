# Sliding-window limiters. The weighted two-window counter (Cloudflare / nginx-plus style) is a
# plain C struct + inline nogil functions so the keyed limiter table embeds an sw_state per slot
# and runs exactly this arithmetic. No validation here (callers validate at their Python edge).
#
# The estimate: hits in the previous fixed window are assumed spread evenly over it, so the share
# of them still inside the sliding window is prev * (1 - elapsed/window).
#
# Counts are 32-bit unsigned integers, so the state stays 16 bytes and every count is exact: costs
# are whole numbers (the Python-facing classes refuse anything else) and limits at most 2**32 - 1.
# (They were float32 once: a cost under half a float32 step rounded away at large counts, so a
# limit of 10,000,000 at cost 0.5 admitted 24,000,000.) A hit is counted only when
# estimate + cost <= limit, and estimate >= curr_count, so curr_count + cost never exceeds the
# limit and never wraps.
#
# Every operation is mirrored, in the same order and precision, by the plain-Python model in
# tests/fast/reference/sliding_window.py, so compiled and reference answers compare exactly.
from libc.math cimport INFINITY, floor
from libc.stdint cimport uint32_t

from gateway._fast.clock cimport GW_MAX_STEP_BACK

ctypedef struct sw_state:
    double window_start  # start of the current fixed window (a multiple of `window`)
    uint32_t prev_count  # hits in the previous fixed window (exact)
    uint32_t curr_count  # hits in the current fixed window (exact)


cdef inline void sw_init(sw_state* s, double now, double window) noexcept nogil:
    # Windows are aligned to multiples of `window` on the caller's clock, so every worker (and a
    # Redis-backed store using the same floor(now/window) index) agrees on window boundaries.
    s.window_start = floor(now / window) * window
    s.prev_count = 0
    s.curr_count = 0


cdef inline void sw_advance(sw_state* s, double window, double now) noexcept nogil:
    # Move to the window containing `now`. Only forward: a clock step back never rotates, so
    # counts are never lost or resurrected by time going backwards.
    cdef double start = floor(now / window) * window
    if start > s.window_start:
        # Adjacent window: current becomes previous. Two or more windows later: both are stale.
        # Compared against 1.5 windows, not == window, because starts are rounded products.
        if start - s.window_start < 1.5 * window:
            s.prev_count = s.curr_count
        else:
            s.prev_count = 0
        s.curr_count = 0
        s.window_start = start
    elif s.window_start - now > GW_MAX_STEP_BACK:
        # The state's window lies in now's future by more than a clock step back (see
        # clock.pxd): move it to now's window with its counts, so it rotates and expires again.
        s.window_start = start


cdef inline int sw_check(sw_state* s, double limit, double window, double now, double cost,
                         double* remaining, double* reset) noexcept nogil:
    """Count a hit of `cost` if the estimate allows it. 1 = allowed, 0 = denied.

    *remaining = floor(max(0, limit - estimate after the decision)).
    *reset (the rule behind RateLimit-Reset and Retry-After), assuming no further traffic:
      allowed: seconds until *remaining grows by one (0.0 when it cannot: remaining + 1 would
               exceed `limit`, i.e. the estimate would have to fall below zero);
      denied:  seconds until a hit of the same `cost` would be allowed (Retry-After);
               INFINITY when cost > limit (it never will).
    Measured from max(now, window_start): a clock step back is clamped, not added.
    """
    cdef double elapsed, weight, est, rem, need, target, p, c, t
    cdef int allowed
    sw_advance(s, window, now)
    elapsed = now - s.window_start
    if elapsed < 0.0:
        elapsed = 0.0      # clock went back past the window start: clamp
    elif elapsed > window:
        elapsed = window   # rounding of floor(now/window)*window at a boundary
    weight = 1.0 - elapsed / window
    est = s.prev_count * weight + s.curr_count
    if est + cost <= limit:
        # cost is a whole number and curr_count + cost <= est + cost <= limit < 2**32: exact.
        s.curr_count = <uint32_t>(s.curr_count + <uint32_t>cost)
        est = s.prev_count * weight + s.curr_count
        allowed = 1
    else:
        allowed = 0
    rem = limit - est
    if rem < 0.0:
        rem = 0.0
    rem = floor(rem)
    remaining[0] = rem
    # How far the estimate must fall: to make room for one more unit (allowed) or for this
    # request's cost (denied).
    need = rem + 1.0 if allowed else cost
    target = limit - need
    if target < 0.0:
        reset[0] = 0.0 if allowed else INFINITY
        return allowed
    if est <= target:
        reset[0] = 0.0
        return allowed
    p = s.prev_count
    c = s.curr_count
    if c <= target:
        # Reached inside this window while the previous window's share decays; p > 0 here
        # because est > target >= c.
        t = window * (1.0 - (target - c) / p) - elapsed
        if t < 0.0:
            t = 0.0
    else:
        # Not before this window ends: then `c` becomes the previous count and decays.
        t = (window - elapsed) + window * (1.0 - target / c)
    reset[0] = t
    return allowed


cdef class SlidingWindow:
    cdef sw_state _s
    cdef readonly double limit
    cdef readonly double window

    # Fast entry for Cython callers: no tuple, no validation of now/cost (already validated).
    cdef int c_check(self, double now, double cost, double* remaining, double* reset) noexcept


cdef class SlidingLog:
    cdef double* _ts            # ring buffer of hit timestamps, capacity = limit
    cdef Py_ssize_t _head       # index of the oldest stored timestamp
    cdef Py_ssize_t _count      # stored timestamps (hits inside the window, lazily expired)
    cdef double _last           # latest `now` seen: time is clamped to it (never goes back)
    cdef readonly Py_ssize_t limit
    cdef readonly double window

    cdef int c_check(self, double now, Py_ssize_t cost, double* remaining, double* reset) noexcept
