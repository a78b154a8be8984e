"""Reference model of gateway._fast.keyed_table: a dict of per-key model limiters.

What the model decides on its own (and the property tests compare exactly):
- per-key answers: each key owns a TokenBucketModel / SlidingWindowModel, created fresh at its
  first check, so a key's answers are those of a standalone limiter fed only that key's calls;
- idle forgetting: a key whose recency is more than idle_ttl away from `now` (either way) starts
  fresh. Recency is what the table reads from the limiter state: the token bucket's `last` or the
  sliding window's `window_start`;
- which keys may lose their slot (`judge_drop`): only idle ones, or, for an insert, *recovered*
  ones (state at `now` equal to a fresh limiter's); never a key whose eviction would grant; and
  an insert takes a live key's slot (idle or recovered) only when its window has no free slot:
  with one window over the whole table, only when the table is full;
- overflow: a new key that finds no such slot is answered by one shared overflow limiter and not
  stored. With one probe window over the whole table (max_probe >= capacity) the model predicts
  exactly when that happens (`must_overflow`); otherwise it checks it was possible.

Which slot an insert reuses depends on the (secret) hash and is not predicted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tests.fast.reference.sliding_window import MAX_WINDOW_LIMIT, SlidingWindowModel
from tests.fast.reference.token_bucket import TokenBucketModel

Answer = tuple[bool, float, float]


@dataclass
class Entry:
    limiter: TokenBucketModel | SlidingWindowModel

    @property
    def recency(self) -> float:
        if isinstance(self.limiter, TokenBucketModel):
            return self.limiter.last
        return self.limiter.window_start


def _positive(name: str, v: float | None) -> float:
    if v is None:
        raise ValueError(f"{name} is required")
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(name)
    return float(v)


def key_bytes(key: str | bytes) -> bytes:
    if type(key) is str:
        return key.encode("utf-8")
    if type(key) is bytes:
        return key
    raise TypeError("key must be str or bytes")


class KeyedTableModel:
    def __init__(self, capacity: int, algorithm: str = "token_bucket", *, rate: float | None = None,
                 bucket: float | None = None, limit: float | None = None,
                 window: float | None = None, idle_ttl: float | None = None,
                 max_probe: int = 128) -> None:
        if not (1 <= capacity <= 1 << 40):
            raise ValueError("capacity")
        if not (1 <= max_probe <= 1024):
            raise ValueError("max_probe")
        self.capacity = capacity
        self.algorithm = algorithm
        if algorithm == "token_bucket":
            self.p1, self.p2 = _positive("rate", rate), _positive("bucket", bucket)
            recovery = self.p2 / self.p1
        elif algorithm == "sliding_window":
            self.p1, self.p2 = _positive("limit", limit), _positive("window", window)
            if self.p1 > MAX_WINDOW_LIMIT or math.floor(self.p1) != self.p1:
                raise ValueError("limit")
            recovery = 2.0 * self.p2
        else:
            raise ValueError("algorithm")
        if idle_ttl is None:
            idle_ttl = recovery
        if math.isnan(idle_ttl) or idle_ttl < recovery:
            raise ValueError("idle_ttl")
        self.idle_ttl = float(idle_ttl)
        self.entries: dict[bytes, Entry] = {}
        self.overflow: Entry | None = None

    def _fresh(self) -> TokenBucketModel | SlidingWindowModel:
        if self.algorithm == "token_bucket":
            return TokenBucketModel(self.p1, self.p2)
        return SlidingWindowModel(self.p1, self.p2)

    def idle(self, k: bytes, now: float) -> bool:
        return abs(now - self.entries[k].recency) > self.idle_ttl

    def check(self, key: str | bytes, now: float, cost: float = 1.0, overflow: bool = False) -> Answer:
        if not (now >= 0 and math.isfinite(now)):
            raise ValueError("now")
        if not (cost > 0 and math.isfinite(cost)):
            raise ValueError("cost")
        k = key_bytes(key)
        e = self.entries.get(k)
        if overflow:
            assert k not in self.entries or self.idle(k, now)
            e = self.overflow
            if e is None or abs(now - e.recency) > self.idle_ttl:
                e = self.overflow = Entry(self._fresh())
        elif e is None or abs(now - e.recency) > self.idle_ttl:
            e = self.entries[k] = Entry(self._fresh())
        if isinstance(e.limiter, TokenBucketModel):
            return e.limiter.try_acquire(now, cost)
        return e.limiter.check(now, cost)

    def reclaimable(self, k: bytes, now: float) -> bool:
        """Idle, or recovered: its state at `now` equals a fresh limiter's."""
        if self.idle(k, now):
            return True
        lim = self.entries[k].limiter
        if isinstance(lim, TokenBucketModel):
            if now < lim.last:
                return False
            return lim.tokens + (now - lim.last) * lim.rate >= lim.capacity
        if now < lim.window_start:
            return False
        w = lim.window
        start = math.floor(now / w) * w
        if start > lim.window_start:
            return lim.curr == 0 if start - lim.window_start < 1.5 * w else True
        return lim.curr == 0 and lim.prev == 0

    def unreclaimable(self, now: float, but: bytes) -> int:
        return sum(1 for k in self.entries if k != but and not self.reclaimable(k, now))

    def must_overflow(self, k: bytes, now: float) -> bool:
        """One probe window over the whole table: does a check of `k` at `now` overflow?"""
        if k in self.entries:
            return False
        return len(self.entries) == self.capacity and self.unreclaimable(now, k) == self.capacity

    def judge_drop(self, k: bytes, now: float, inserted: bytes | None, one_window: bool) -> str:
        """The table no longer holds `k` after an operation at `now` that inserted `inserted`
        (None: no insert; the model's check has already added it). `one_window`: the table's
        probe window covers all of it. Returns "idle" or "recovered"; AssertionError if neither
        is legal: a key whose eviction would grant requests must never be dropped, nor a live
        one for an insert that had a free slot."""
        full = len(self.entries) > self.capacity   # the inserted key is in entries already
        if self.idle(k, now):
            assert inserted is None or not one_window or full, \
                f"idle key {k!r} dropped for {inserted!r} while the table had a free slot"
            del self.entries[k]
            return "idle"
        assert inserted is not None and inserted != k, f"live key {k!r} dropped without an insert"
        assert not one_window or full, f"key {k!r} dropped for {inserted!r} while the table had a free slot"
        assert not one_window or not any(self.idle(j, now) for j in self.entries if j != inserted), \
            f"recovered key {k!r} dropped while an idle one could go"
        assert self.reclaimable(k, now), f"key {k!r} dropped while its eviction grants requests"
        del self.entries[k]
        return "recovered"
