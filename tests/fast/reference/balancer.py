"""Plain-Python models of gateway/_fast/balancer: the same picks from the same operations.

Each model is the textbook algorithm written as directly as possible; the property tests drive a
model and its compiled class with identical operations and compare every answer (and the P2C
scores bit for bit: both use the C library's exp()).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

MASK64 = (1 << 64) - 1
MAX_WEIGHT = 1_000_000
DEFAULT_INITIAL_LATENCY = 0.03


def _weight(w: int) -> int:
    if not 0 <= w <= MAX_WEIGHT:
        raise ValueError("weight out of range")
    return w


def _finite(v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError("not finite")
    return v


class _Picker:
    def __init__(self, n: int) -> None:
        self.n = n
        self.avail = [True] * n

    def _check(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i

    def set_available(self, i: int, available: bool) -> None:
        self.avail[self._check(i)] = bool(available)

    def is_available(self, i: int) -> bool:
        return self.avail[self._check(i)]


class SmoothWeightedRR(_Picker):
    """nginx ngx_http_upstream_get_peer(): current += effective; max wins; winner -= total."""

    def __init__(self, weights: Sequence[int], *, max_fails: int = 1) -> None:
        super().__init__(len(weights))
        self.max_fails = max_fails
        self.weight = [_weight(w) for w in weights]
        self.effective = list(self.weight)
        self.current = [0] * self.n

    def pick(self) -> int:
        best, total = -1, 0
        for i in range(self.n):
            if not self.avail[i] or self.weight[i] == 0:
                continue
            self.current[i] += self.effective[i]
            total += self.effective[i]
            if self.effective[i] < self.weight[i]:
                self.effective[i] += 1
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        if best >= 0:
            self.current[best] -= total
        return best

    def report_failure(self, i: int) -> None:
        self._check(i)
        self.effective[i] = max(0, self.effective[i] - self.weight[i] // self.max_fails)

    def set_weight(self, i: int, w: int) -> None:
        self._check(i)
        self.weight[i] = self.effective[i] = _weight(w)

    def state(self, i: int) -> tuple[int, int]:
        return (self.current[self._check(i)], self.effective[i])


class LeastConnections(_Picker):
    """Min active/weight; scanning from just after the last pick so ties rotate."""

    def __init__(self, n: int, weights: Sequence[int] | None = None) -> None:
        super().__init__(n)
        self.weight = [1] * n if weights is None else [_weight(w) for w in weights]
        self.active_ = [0] * n
        self.cursor = 0

    def pick(self) -> int:
        best = -1
        for k in range(self.n):
            i = (self.cursor + k) % self.n
            if not self.avail[i] or self.weight[i] == 0:
                continue
            # Fractions compare exactly, as the compiled cross-multiplication does.
            if best < 0 or self.active_[i] * self.weight[best] < self.active_[best] * self.weight[i]:
                best = i
        if best >= 0:
            self.cursor = (best + 1) % self.n
        return best

    def acquire(self, i: int) -> None:
        self.active_[self._check(i)] += 1

    def release(self, i: int) -> None:
        self._check(i)
        self.active_[i] = max(0, self.active_[i] - 1)

    def active(self, i: int) -> int:
        return self.active_[self._check(i)]

    def set_weight(self, i: int, w: int) -> None:
        self.weight[self._check(i)] = _weight(w)


class P2CEwma(_Picker):
    """Power of two choices over peak-EWMA latency × (active + 1)."""

    def __init__(self, n: int, decay_seconds: float = 10.0, *,
                 initial_latency: float = DEFAULT_INITIAL_LATENCY,
                 seed: int = 0x2545F4914F6CDD1D) -> None:
        self.tau = _finite(decay_seconds)
        self.initial = _finite(initial_latency)
        if self.tau <= 0 or self.initial < 0:
            raise ValueError("bad decay or prior")
        super().__init__(n)
        if not 0 <= seed <= MASK64:
            raise ValueError("seed out of range")
        self.rng = seed or 0x2545F4914F6CDD1D
        self.cost = [self.initial] * n
        self.stamp = [0.0] * n
        self.observed = [False] * n
        self.active_ = [0] * n

    def next_rand(self) -> int:
        x = self.rng
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.rng = x
        return (x * 0x2545F4914F6CDD1D) & MASK64

    def score(self, i: int, now: float) -> float:
        c = self.cost[self._check(i)]
        now = _finite(now)
        if self.observed[i] and now - self.stamp[i] > 0:
            c = c * math.exp(-(now - self.stamp[i]) / self.tau)
        return c * float(self.active_[i] + 1)

    def pick_with(self, now: float, ra: int, rb: int) -> int:
        now = _finite(now)
        live = [i for i in range(self.n) if self.avail[i]]
        if not live:
            return -1
        if len(live) == 1:
            return live[0]
        a = ra % len(live)
        b = rb % (len(live) - 1)
        if b >= a:
            b += 1
        x, y = live[a], live[b]
        sx, sy = self.score(x, now), self.score(y, now)
        if sy < sx or (sy == sx and self.active_[y] < self.active_[x]):
            return y
        return x

    def pick(self, now: float) -> int:
        now = _finite(now)
        ra = self.next_rand()
        return self.pick_with(now, ra, self.next_rand())

    def observe(self, i: int, latency: float, now: float) -> None:
        self._check(i)
        lat, now = _finite(latency), _finite(now)
        if lat < 0:
            raise ValueError("negative latency")
        if not self.observed[i]:
            self.cost[i], self.stamp[i], self.observed[i] = lat, now, True
            return
        dt = now - self.stamp[i]
        if dt < 0:
            dt = 0.0
        else:
            self.stamp[i] = now
        if lat > self.cost[i]:
            self.cost[i] = lat
        else:
            w = math.exp(-dt / self.tau)
            self.cost[i] = self.cost[i] * w + lat * (1.0 - w)

    def acquire(self, i: int) -> None:
        self.active_[self._check(i)] += 1

    def release(self, i: int) -> None:
        self._check(i)
        self.active_[i] = max(0, self.active_[i] - 1)

    def active(self, i: int) -> int:
        return self.active_[self._check(i)]
