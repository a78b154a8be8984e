"""Reference model of gateway._fast.token_bucket: the same IEEE-double operations in the same order.

Python floats are IEEE binary64 and the C code is built without fast-math (and x86-64 GCC does not
contract a*b+c into an FMA by default), so every answer of the model equals the compiled one
bit for bit; the property tests compare with ==.
"""
from __future__ import annotations

import math


class TokenBucketModel:
    def __init__(self, rate: float, capacity: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate")
        if not (capacity > 0 and math.isfinite(capacity)):
            raise ValueError("capacity")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = -math.inf

    @classmethod
    def from_policy(cls, limit: float, window: float, burst: float = 0.0) -> TokenBucketModel:
        return cls(limit / window, limit + burst)

    def try_acquire(self, now: float, cost: float = 1.0) -> tuple[bool, float, float]:
        if not (now >= 0 and math.isfinite(now)):
            raise ValueError("now")
        if not (cost > 0 and math.isfinite(cost)):
            raise ValueError("cost")
        if now > self.last:
            # Only forward time refills; a step back changes nothing.
            self.tokens = min(self.tokens + (now - self.last) * self.rate, self.capacity)
            self.last = now
        elif self.last - now > 1.0:
            self.last = now         # re-anchored (gateway/_fast/clock.pxd), tokens kept
        if self.tokens >= cost:
            self.tokens = self.tokens - cost
            return True, self.tokens, 0.0
        if cost > self.capacity:
            return False, self.tokens, math.inf
        return False, self.tokens, (cost - self.tokens) / self.rate

    def reset_after(self) -> float:
        nxt = math.floor(self.tokens) + 1.0
        if nxt > self.capacity:
            return 0.0
        return (nxt - self.tokens) / self.rate
