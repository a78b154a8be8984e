"""Token bucket limiter (the arithmetic lives in token_bucket.pxd, shared with keyed tables).

Mapping SPEC §3 policies onto a bucket (what `TokenBucket.from_policy` does):

    rate     = limit / window        tokens per second: the steady rate, `limit` per `window`
    capacity = limit + burst         bucket size: a whole window's allowance plus `burst` extra

So `limit = 100, window = 1.0, burst = 20` admits 120 requests at once from an idle client, then
100/s sustained; with `burst = 0` (the default) it is the classic bucket that never admits more
than `limit` in a burst. This reads `burst` as "bucket size above the steady rate" (SPEC §3): an
nginx `limit_req rate=100r/s burst=20 nodelay` operator gets the extra 20 on top of the rate;
unlike nginx, the window's own allowance is not spread into 10 ms slots, which is what a Kong /
GitHub-style "100 per second" operator expects.
"""
from libc.math cimport INFINITY, isfinite


from gateway._fast.checks cimport check_non_negative
from gateway._fast.checks cimport check_now as _check_now, check_positive as _check_positive


cdef class TokenBucket:
    """A token bucket of `capacity` tokens refilled at `rate` tokens per second.

    The bucket starts full. Time comes from the caller (`now`, seconds on any clock that only
    the caller reads); a `now` earlier than the last one refills nothing (clamped). See the
    module docstring for how SPEC §3's limit / window / burst map onto rate / capacity.
    """

    def __cinit__(self, double rate, double capacity):
        _check_positive("rate", rate)
        _check_positive("capacity", capacity)
        self.rate = rate
        self.capacity = capacity
        # last = -inf: the first call refills by an infinite gap, capped to capacity, so the
        # bucket is full whatever the caller's clock origin is.
        self._s.tokens = capacity
        self._s.last = -INFINITY

    @staticmethod
    def from_policy(double limit, double window, double burst=0.0):
        """The bucket for a SPEC §3 policy: rate = limit/window, capacity = limit + burst."""
        _check_positive("limit", limit)
        _check_positive("window", window)
        check_non_negative("burst", burst)
        return TokenBucket(limit / window, limit + burst)

    cdef int c_try_acquire(self, double now, double cost, double* retry_after) noexcept:
        # No checks: Cython filters validate `now`/`cost` once where they come from.
        return tb_try_acquire(&self._s, self.rate, self.capacity, now, cost, retry_after)

    def try_acquire(self, double now, double cost=1.0):
        """Take `cost` tokens at time `now` -> (allowed, tokens_left, retry_after seconds).

        retry_after is 0.0 when allowed, inf when cost > capacity (never satisfiable).
        """
        cdef double retry_after
        cdef int ok
        _check_now(now)
        _check_positive("cost", cost)
        ok = tb_try_acquire(&self._s, self.rate, self.capacity, now, cost, &retry_after)
        # tokens_left after the decision: what a RateLimit-Remaining header would show (floored).
        return ok == 1, self._s.tokens, retry_after

    def reset_after(self) -> float:
        """Seconds after `last` until floor(tokens) grows by one (0.0 if it cannot): the
        RateLimit-Reset for this bucket, same rule as the sliding windows' reset."""
        return tb_reset(&self._s, self.rate, self.capacity)

    @property
    def tokens(self) -> float:
        """Tokens in the bucket as of the last call (not refilled to any later time)."""
        return self._s.tokens

    @property
    def last(self) -> float:
        """Time of the last refill (-inf before the first call)."""
        return self._s.last

    def __repr__(self) -> str:
        return (f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, "
                f"tokens={self._s.tokens!r})")
