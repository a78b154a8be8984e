"""Reference model of gateway._fast.heavy_hitters: space-saving over two generations, as lists."""
from __future__ import annotations

import math

import xxhash

SEED = 0x485948
KEY_BYTES = 102


class HeavyHittersModel:
    def __init__(self, k: int, period: float) -> None:
        self.k, self.period = k, period
        self.gens: list[list[list]] = [self._empty(), self._empty()]   # [hash, count, error, key]
        self.current = 0
        self.start = 0.0

    def _empty(self) -> list[list]:
        return [[0, 0, 0, b""] for _ in range(self.k)]

    def _rotate(self, now: float) -> None:
        start = math.floor(now / self.period) * self.period
        if start <= self.start and now >= self.start - self.period:
            return
        if self.start < start and start - self.start < 1.5 * self.period:
            self.current ^= 1
        else:
            self.gens[self.current ^ 1] = self._empty()
        self.gens[self.current] = self._empty()
        self.start = start

    def record(self, key: str | bytes, now: float) -> None:
        b = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
        h = xxhash.xxh64_intdigest(b, SEED)
        self._rotate(now)
        gen = self.gens[self.current]
        low = None
        for e in gen:
            if e[1] and e[0] == h:
                e[1] += 1
                return
            if low is None or e[1] < low[1]:
                low = e
        assert low is not None
        low[2] = low[1]
        low[1] += 1
        low[0] = h
        low[3] = b[:KEY_BYTES]

    def top(self, n: int, now: float) -> list[tuple[str, int, int]]:
        self._rotate(now)
        merged: dict[int, tuple[str, int, int]] = {}
        for gen in self.gens:
            for h, c, err, key in gen:
                if c:
                    k, c0, e0 = merged.get(h, (key.decode("utf-8", "replace"), 0, 0))
                    merged[h] = (k, c0 + c, e0 + err)
        return sorted(merged.values(), key=lambda t: (-t[1], t[0]))[:max(0, n)]
