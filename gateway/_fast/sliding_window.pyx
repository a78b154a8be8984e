"""Sliding-window limiters: the weighted two-window counter and an exact sliding log.

Both answer (allowed, remaining, reset) with one reset rule, the one behind the RateLimit-Reset
and Retry-After headers (assuming no further traffic):

  allowed: seconds until `remaining` grows by one (0.0 when it cannot grow any more);
  denied:  seconds until a request of the same `cost` would be allowed (Retry-After);
           inf when cost > limit (it never will).

SlidingWindow is O(1) and 16 bytes of state (the arithmetic is in sliding_window.pxd and shared
with keyed tables); it estimates. SlidingLog is exact but keeps one timestamp per admitted hit,
so it is meant for small limits (at most MAX_LOG_LIMIT).

Precision: `window` must be far above the spacing of doubles around `now` (about 2.4e-7 s for a
time.time() reading, 1e-10 s for a monotonic one); any window of a millisecond or more is fine.
A window below that spacing could not tell `now - window` from `now`.
"""
from libc.math cimport INFINITY, floor, isfinite
from libc.stdlib cimport free, malloc

# Counts are uint32: exact for every whole-number limit up to 2**32 - 1.
MAX_WINDOW_LIMIT = 4_294_967_295
# One double per admitted hit: 10_000 hits = 80 KB per log. Larger limits: use SlidingWindow.
MAX_LOG_LIMIT = 10_000


from gateway._fast.checks cimport check_now as _check_now, check_positive as _check_positive
from gateway._fast.clock cimport GW_MAX_STEP_BACK


cdef inline int _check_whole(str name, double v) except -1:
    # Counts are exact integers: a fractional cost or limit would be rounded somewhere.
    _check_positive(name, v)
    if floor(v) != v:
        raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    return 0


cdef class SlidingWindow:
    """Weighted two-window counter: at most about `limit` hits per sliding `window` seconds.

    estimate = prev_count * (1 - elapsed/window) + curr_count; a hit of `cost` is allowed when
    estimate + cost <= limit. Windows are aligned to multiples of `window` on the caller's clock.
    `limit` and `cost` are whole numbers (counts are exact integers).
    """

    def __cinit__(self, double limit, double window):
        _check_whole("limit", limit)
        _check_positive("window", window)
        if limit > MAX_WINDOW_LIMIT:
            raise ValueError(f"limit must be <= {MAX_WINDOW_LIMIT} (uint32 counts), got {limit!r}")
        self.limit = limit
        self.window = window
        # window_start = -inf: the first call rotates into its own window with prev = 0.
        self._s.window_start = -INFINITY
        self._s.prev_count = 0
        self._s.curr_count = 0

    cdef int c_check(self, double now, double cost, double* remaining, double* reset) noexcept:
        return sw_check(&self._s, self.limit, self.window, now, cost, remaining, reset)

    def check(self, double now, double cost=1.0):
        """Count a hit of `cost` at `now` -> (allowed, remaining: int, reset: seconds)."""
        cdef double remaining, reset
        cdef int ok
        _check_now(now)
        _check_whole("cost", cost)
        ok = sw_check(&self._s, self.limit, self.window, now, cost, &remaining, &reset)
        # remaining is already floored in C; as an int it goes straight into RateLimit-Remaining.
        return ok == 1, <long long>remaining, reset

    @property
    def window_start(self) -> float:
        return self._s.window_start

    @property
    def prev_count(self) -> int:
        return self._s.prev_count

    @property
    def curr_count(self) -> int:
        return self._s.curr_count

    def __repr__(self) -> str:
        return (f"SlidingWindow(limit={self.limit!r}, window={self.window!r}, "
                f"prev={self._s.prev_count!r}, curr={self._s.curr_count!r})")


cdef class SlidingLog:
    """Exact sliding log: a hit at `now` counts while it is younger than `window` seconds.

    A hit at t stops counting at t + window (it is inside (now - window, now]). Timestamps live in
    a ring buffer of capacity `limit`, allocated once; admitted hits never exceed it, so the log
    never grows. A `now` earlier than the latest seen is clamped to it: nothing expires and the
    hit is recorded at the clamped time, which keeps the ring sorted.
    """

    def __cinit__(self, Py_ssize_t limit, double window):
        if limit < 1 or limit > MAX_LOG_LIMIT:
            raise ValueError(
                f"limit must be an integer in 1..{MAX_LOG_LIMIT} for SlidingLog, got {limit!r}"
                " (use SlidingWindow for large limits)")
        _check_positive("window", window)
        # Allocated once at its bound: checks never allocate, and memory per log is known.
        self._ts = <double*>malloc(limit * sizeof(double))
        if self._ts == NULL:
            raise MemoryError()
        self.limit = limit
        self.window = window
        self._head = 0
        self._count = 0
        self._last = -INFINITY

    def __dealloc__(self):
        free(self._ts)

    cdef int c_check(self, double now, Py_ssize_t cost, double* remaining, double* reset) noexcept:
        cdef Py_ssize_t cap = self.limit, k, i
        cdef double cutoff
        cdef int allowed
        cdef double shift
        if now < self._last:
            if self._last - now > GW_MAX_STEP_BACK:
                # The log's time lies in now's future beyond a clock step back (clock.pxd):
                # move every stored hit back by the same amount, order and spacing kept, so
                # they expire again; none is dropped.
                shift = self._last - now
                i = self._head
                for k in range(self._count):
                    self._ts[i] -= shift
                    i += 1
                    if i == cap:
                        i = 0
                self._last = now
            else:
                now = self._last
        else:
            self._last = now
        # Lazy expiry from the oldest end: amortised O(1) per hit.
        cutoff = now - self.window
        while self._count > 0 and self._ts[self._head] <= cutoff:
            self._head += 1
            if self._head == cap:
                self._head = 0
            self._count -= 1
        # cost <= cap first: `_count + cost` of a huge cost would overflow and read as room.
        if cost <= cap and self._count + cost <= cap:
            # `cost` hits = `cost` entries, so expiry returns them one by one, exactly.
            i = self._head + self._count
            for k in range(cost):
                if i >= cap:
                    i -= cap
                self._ts[i] = now
                i += 1
            self._count += cost
            allowed = 1
        else:
            allowed = 0
        remaining[0] = <double>(cap - self._count)
        if allowed:
            # Remaining grows by one when the oldest hit leaves the window (count >= 1 here).
            reset[0] = self._ts[self._head] + self.window - now
        elif cost > cap:
            reset[0] = INFINITY
        else:
            # The k-th oldest hit must leave for `cost` to fit (1 <= k <= count).
            k = self._count - (cap - cost)
            i = self._head + k - 1
            if i >= cap:
                i -= cap
            reset[0] = self._ts[i] + self.window - now
        return allowed

    def check(self, double now, Py_ssize_t cost=1):
        """Count `cost` hits at `now` -> (allowed, remaining: int, reset: seconds)."""
        cdef double remaining, reset
        cdef int ok
        _check_now(now)
        if cost < 1:
            # A log stores whole hits; fractional costs belong to SlidingWindow / TokenBucket.
            raise ValueError(f"cost must be an integer >= 1 for SlidingLog, got {cost!r}")
        ok = self.c_check(now, cost, &remaining, &reset)
        return ok == 1, <long long>remaining, reset

    def __len__(self) -> int:
        """Hits currently stored (expired ones are dropped lazily, on the next check)."""
        return self._count

    def __repr__(self) -> str:
        return f"SlidingLog(limit={self.limit!r}, window={self.window!r}, stored={self._count})"
