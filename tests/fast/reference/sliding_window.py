"""Reference models of gateway._fast.sliding_window.

SlidingWindowModel repeats the C arithmetic step by step. Counts are Python ints (the C state
keeps uint32s: exact, since costs are whole numbers and a count never exceeds the limit); the
model is itself checked against exact (Fraction) arithmetic in tests/fast/test_sliding_window.py.

SlidingLogModel is written differently on purpose: a plain list of timestamps, filtered by the
definition ("a hit counts while now - window < t"), not a ring buffer. Agreement then checks the
ring arithmetic against the definition, not against a copy of itself.
"""
from __future__ import annotations

import math

MAX_WINDOW_LIMIT = 4_294_967_295
MAX_LOG_LIMIT = 10_000
MAX_STEP_BACK = 1.0     # gateway/_fast/clock.pxd: a state time further ahead of `now` re-anchors


def _whole(name: str, v: float) -> int:
    if not (v > 0 and math.isfinite(v)) or math.floor(v) != v:
        raise ValueError(name)
    return int(v)


def _check_now(now: float) -> None:
    if not (now >= 0 and math.isfinite(now)):
        raise ValueError("now")


class SlidingWindowModel:
    def __init__(self, limit: float, window: float) -> None:
        if _whole("limit", limit) > MAX_WINDOW_LIMIT:
            raise ValueError("limit")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError("window")
        self.limit = limit
        self.window = window
        self.window_start = -math.inf
        self.prev = 0
        self.curr = 0

    def check(self, now: float, cost: float = 1.0) -> tuple[bool, int, float]:
        _check_now(now)
        icost = _whole("cost", cost)
        w, limit = self.window, self.limit
        start = math.floor(now / w) * w
        if start > self.window_start:
            self.prev = self.curr if start - self.window_start < 1.5 * w else 0
            self.curr = 0
            self.window_start = start
        elif self.window_start - now > MAX_STEP_BACK:
            self.window_start = start       # re-anchored on now's window, counts kept
        elapsed = min(max(now - self.window_start, 0.0), w)
        weight = 1.0 - elapsed / w
        est = self.prev * weight + self.curr
        allowed = est + cost <= limit
        if allowed:
            self.curr = self.curr + icost
            est = self.prev * weight + self.curr
        rem = float(math.floor(max(limit - est, 0.0)))
        target = limit - (rem + 1.0 if allowed else cost)
        if target < 0.0:
            return allowed, int(rem), (0.0 if allowed else math.inf)
        if est <= target:
            return allowed, int(rem), 0.0
        p, c = self.prev, self.curr
        if c <= target:
            t = max(w * (1.0 - (target - c) / p) - elapsed, 0.0)
        else:
            t = (w - elapsed) + w * (1.0 - target / c)
        return allowed, int(rem), t


class SlidingLogModel:
    def __init__(self, limit: int, window: float) -> None:
        if not (1 <= limit <= MAX_LOG_LIMIT):
            raise ValueError("limit")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError("window")
        self.limit = limit
        self.window = window
        self.hits: list[float] = []
        self.last = -math.inf

    def check(self, now: float, cost: int = 1) -> tuple[bool, int, float]:
        _check_now(now)
        if cost < 1:
            raise ValueError("cost")
        if self.last - now > MAX_STEP_BACK:
            # Re-anchored: every stored hit moves back by the same amount.
            self.hits = [t - (self.last - now) for t in self.hits]
            self.last = now
        now = max(now, self.last)   # clamped: time never goes back for the log
        self.last = now
        self.hits = [t for t in self.hits if t > now - self.window]
        allowed = len(self.hits) + cost <= self.limit
        if allowed:
            self.hits.extend([now] * cost)
        remaining = self.limit - len(self.hits)
        if allowed:
            reset = self.hits[0] + self.window - now
        elif cost > self.limit:
            reset = math.inf
        else:
            # Oldest hits leave first; the k-th must be gone before `cost` fits.
            k = len(self.hits) - (self.limit - cost)
            reset = self.hits[k - 1] + self.window - now
        return allowed, remaining, reset
