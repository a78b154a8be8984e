"""Plain-Python model of gateway/_fast/hashing: same hashes, same tables, same answers.

Written for clarity, not speed: the property tests compare it against the compiled module
operation by operation, so any divergence in placement, tie-breaking or skip-walks shows up.
"""
from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence

import xxhash

MASK64 = (1 << 64) - 1
MAX_WEIGHT = 1_000_000
MAX_POINTS = 1 << 22
SKIP_SEED_XOR = 0x9E3779B97F4A7C15

Key = str | bytes


def xxh64(data: Key, seed: int = 0) -> int:
    """XXH64 of bytes, or of a str's UTF-8 encoding."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        raise TypeError(f"hash key must be str or bytes, not {type(data).__name__}")
    return xxhash.xxh64_intdigest(data, seed & MASK64)


def is_prime(m: int) -> bool:
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    d = 3
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


class _Targets:
    """Weights, identity hashes and availability per target index."""

    def __init__(self, weights: Sequence[int], names: Sequence[Key] | None, seed: int) -> None:
        if not 0 <= seed <= MASK64:
            raise ValueError("seed out of range")
        self.seed = seed
        self.weights: list[int] = []
        self.idents: list[int] = []
        self.avail: list[bool] = []
        for i, w in enumerate(weights):
            self._append(w, str(i) if names is None else names[i])
        self.rebuild()

    def _append(self, weight: int, name: Key) -> int:
        self.check_weight(-1, weight)
        ident = xxh64(name, self.seed)
        if ident in self.idents:
            raise ValueError("target name collides")
        self.weights.append(weight)
        self.idents.append(ident)
        self.avail.append(True)
        return len(self.weights) - 1

    def check_weight(self, index: int, weight: int) -> None:
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError("weight out of range")

    def rebuild(self) -> None:
        raise NotImplementedError

    def live(self) -> int:
        return sum(1 for w, a in zip(self.weights, self.avail, strict=True) if w and a)

    def add(self, weight: int = 1, name: Key | None = None) -> int:
        i = self._append(weight, str(len(self.weights)) if name is None else name)
        if weight:
            self.rebuild()
        return i

    def set_weight(self, index: int, weight: int) -> None:
        if not 0 <= index < len(self.weights):
            raise IndexError(index)
        if weight == self.weights[index]:
            return
        self.check_weight(index, weight)
        self.weights[index] = weight
        self.rebuild()

    def remove(self, index: int) -> None:
        self.set_weight(index, 0)

    def set_available(self, index: int, available: bool) -> None:
        if not 0 <= index < len(self.weights):
            raise IndexError(index)
        self.avail[index] = bool(available)

    def lookup(self, key: Key) -> int:
        return self.lookup_hash(xxh64(key, self.seed))

    def lookup_hash(self, h: int) -> int:
        raise NotImplementedError


class HashRing(_Targets):
    """Ketama-style ring: vnodes × weight points per target, first point ≥ hash wins."""

    def __init__(self, weights: Sequence[int] = (), names: Sequence[Key] | None = None, *,
                 vnodes: int = 160, seed: int = 0) -> None:
        self.vnodes = vnodes
        self.points: list[tuple[int, int]] = []
        self.hashes: list[int] = []
        super().__init__(weights, names, seed)

    def check_weight(self, index: int, weight: int) -> None:
        super().check_weight(index, weight)
        old = self.weights[index] if index >= 0 else 0
        if (sum(self.weights) - old + weight) * self.vnodes > MAX_POINTS:
            raise ValueError("too many ring points")

    def rebuild(self) -> None:
        pts = []
        for i, (w, ident) in enumerate(zip(self.weights, self.idents, strict=True)):
            for v in range(w * self.vnodes):
                pts.append((xxh64(struct.pack("<QQ", ident, v), self.seed), i))
        pts.sort()
        self.points = pts
        self.hashes = [h for h, _ in pts]

    def lookup_hash(self, h: int) -> int:
        if not self.live():
            return -1
        n = len(self.points)
        start = bisect.bisect_left(self.hashes, h) % n
        for k in range(n):
            owner = self.points[(start + k) % n][1]
            if self.avail[owner]:
                return owner
        return -1


class Maglev(_Targets):
    """Weighted Maglev table; see the compiled class's docstring for the algorithm."""

    def __init__(self, weights: Sequence[int] = (), names: Sequence[Key] | None = None, *,
                 table_size: int = 65537, seed: int = 0) -> None:
        if not is_prime(table_size):
            raise ValueError("table_size must be prime")
        self.m = table_size
        self.table: list[int] = [-1] * table_size
        super().__init__(weights, names, seed)

    def check_weight(self, index: int, weight: int) -> None:
        super().check_weight(index, weight)
        weighted = (1 if weight else 0) + sum(
            1 for i, w in enumerate(self.weights) if i != index and w)
        if weighted * 100 > self.m:
            raise ValueError("table too small")

    def rebuild(self) -> None:
        m = self.m
        table = [-1] * m
        pos, skip = [], []
        for ident in self.idents:
            raw = struct.pack("<Q", ident)
            pos.append(xxh64(raw, self.seed) % m)
            skip.append(xxh64(raw, self.seed ^ SKIP_SEED_XOR) % (m - 1) + 1)
        quota = [0] * len(self.weights)
        maxw = max(self.weights, default=0)
        filled = 0
        r = 1
        while maxw and filled < m:
            for i, w in enumerate(self.weights):
                if filled >= m:
                    break
                if w == 0 or r * w < quota[i]:
                    continue
                quota[i] += maxw
                c = pos[i]
                while table[c] >= 0:
                    c = (c + skip[i]) % m
                table[c] = i
                pos[i] = (c + skip[i]) % m
                filled += 1
            r += 1
        self.table = table

    def lookup_hash(self, h: int) -> int:
        if not self.live():
            return -1
        slot = h % self.m
        for k in range(self.m):
            owner = self.table[(slot + k) % self.m]
            if self.avail[owner]:
                return owner
        return -1
