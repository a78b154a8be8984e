"""Reference model of gateway._fast.keyed_table: a dict of per-key model limiters.

What the model decides on its own (and the property tests compare exactly):
- per-key answers: each key owns a TokenBucketModel / SlidingWindowModel, created fresh at its
  first check, so a key's answers are those of a standalone limiter fed only that key's calls;
- idle forgetting: a key whose recency is more than idle_ttl before `now` starts fresh. Recency
  is what the table reads from the limiter state: the token bucket's `last` (latest `now` seen)
  or the sliding window's `window_start` (start of the latest `now`'s window).

What depends on the slot layout (which idle slot an insert reuses, which live key a full probe
window evicts) is not predicted; the model instead *judges* each key the table dropped
(`judge_drop`): legal only if the key was idle at that operation's `now`, or, for an eviction,
if every slot of the table held a live key and the dropped key had the oldest recency (tests
use max_probe >= capacity for that, so one probe window is the whole table).
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
            if self.p1 > MAX_WINDOW_LIMIT:
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

    def _fresh(self) -> TokenBucketModel | SlidingWindowModel:
        if self.algorithm == "token_bucket":
            return TokenBucketModel(self.p1, self.p2)
        return SlidingWindowModel(self.p1, self.p2)

    def idle(self, k: bytes, now: float) -> bool:
        return now - self.entries[k].recency > self.idle_ttl

    def check(self, key: str | bytes, now: float, cost: float = 1.0) -> Answer:
        if not (now >= 0 and math.isfinite(now)):
            raise ValueError("now")
        if not (cost > 0 and math.isfinite(cost)):
            raise ValueError("cost")
        k = key_bytes(key)
        e = self.entries.get(k)
        if e is None or now - e.recency > self.idle_ttl:
            e = self.entries[k] = Entry(self._fresh())
        if isinstance(e.limiter, TokenBucketModel):
            return e.limiter.try_acquire(now, cost)
        return e.limiter.check(now, cost)

    def judge_drop(self, k: bytes, now: float, inserted: bytes | None, whole_window: bool) -> str:
        """The table no longer holds `k` after an operation at `now` that inserted `inserted`
        (None: no insert). Returns "idle" or "evicted"; AssertionError if neither is legal.

        whole_window: one probe window spans the table (max_probe >= capacity), so an eviction
        is legal only when every slot holds a live key, and only of the oldest. Otherwise the
        window's contents depend on hashes; only "a live key leaves only for an insert" holds.
        """
        e = self.entries[k]
        if now - e.recency > self.idle_ttl:
            del self.entries[k]
            return "idle"
        assert inserted is not None and inserted != k, f"live key {k!r} dropped without an insert"
        if not whole_window:
            del self.entries[k]
            return "evicted"
        live = [o for kk, o in self.entries.items() if kk != inserted and now - o.recency <= self.idle_ttl]
        assert len(live) == self.capacity, (
            f"live key {k!r} evicted while only {len(live)}/{self.capacity} slots held live keys")
        assert e.recency == min(o.recency for o in live), f"evicted {k!r} is not the oldest"
        del self.entries[k]
        return "evicted"
