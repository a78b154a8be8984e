"""Reference models of gateway._fast.counters: Python ints and bisect, no fixed-width cells."""
from __future__ import annotations

import bisect
import math


class CounterModel:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        if n < 0:
            raise ValueError("n")
        self.value += n


class HistogramModel:
    def __init__(self, bounds: list[float], resolution: float = 1e-6) -> None:
        self.bounds = [float(b) for b in bounds]
        self.counts = [0] * (len(self.bounds) + 1)
        self.resolution = resolution
        self.sum_raw = 0

    def observe(self, v: float) -> None:
        scaled = math.floor(v * (1.0 / self.resolution) + 0.5)   # round half up
        # bisect_left: the first bound >= v, i.e. Prometheus' inclusive `le`.
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum_raw += scaled

    def buckets(self) -> list[tuple[float, int]]:
        out, acc = [], 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def sum(self) -> float:
        return self.sum_raw * self.resolution
