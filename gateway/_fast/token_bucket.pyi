from __future__ import annotations

class TokenBucket:
    """Token bucket of `capacity` tokens refilled at `rate` tokens/s; starts full; caller's clock."""

    @property
    def rate(self) -> float: ...
    @property
    def capacity(self) -> float: ...
    @property
    def tokens(self) -> float: ...
    @property
    def last(self) -> float: ...
    def __init__(self, rate: float, capacity: float) -> None: ...
    @staticmethod
    def from_policy(limit: float, window: float, burst: float = 0.0) -> TokenBucket:
        """rate = limit / window, capacity = limit + burst (SPEC §3)."""
    def try_acquire(self, now: float, cost: float = 1.0) -> tuple[bool, float, float]:
        """-> (allowed, tokens_left, retry_after seconds; 0.0 if allowed, inf if cost > capacity)."""
    def reset_after(self) -> float:
        """Seconds after `last` until floor(tokens) grows by one (0.0 if it cannot)."""
