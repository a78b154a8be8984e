"""Micro-benchmarks: consistent-hash lookups called from Python, as the service layer will call them.

Run: python -m pytest bench/test_bench_hashing.py --benchmark-enable -q
Targets (issue 3): ring or Maglev lookup of a str key <= 250 ns median, the Python->Cython call
included. Figures and load averages: bench/results/fast-hashing-balancer.md.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway._fast.hashing import HashRing, Maglev, xxh64

# A realistic hash_key value (header:x-user-id / a JWT sub claim).
KEY = "user-8f14e45f-ceea-467f-a0e6-7c2b8d6e3a1b"
NAMES = [f"10.0.0.{i}:8080" for i in range(100)]


def run(benchmark: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Fixed 2000 calls per round: calibration alone is unreliable at tens of ns per call on a
    shared VM (it sometimes settles on one call per round and measures the timer)."""
    return benchmark.pedantic(fn, args, iterations=2000, rounds=300, warmup_rounds=5)


@pytest.mark.parametrize("n", [10, 100])
def test_ring_lookup_str(benchmark: Any, n: int) -> None:
    ring = HashRing([1] * n, names=NAMES[:n])
    assert 0 <= run(benchmark, ring.lookup, KEY) < n


def test_ring_lookup_hash(benchmark: Any) -> None:
    ring = HashRing([1] * 10)
    h = ring.hash(KEY)
    assert run(benchmark, ring.lookup_hash, h) >= 0


def test_ring_lookup_owner_down(benchmark: Any) -> None:
    # The walk past an unavailable owner: the key's own target is down.
    ring = HashRing([1] * 10)
    ring.set_available(ring.lookup(KEY), False)
    assert run(benchmark, ring.lookup, KEY) >= 0


@pytest.mark.parametrize("n", [10, 100])
def test_maglev_lookup_str(benchmark: Any, n: int) -> None:
    table = Maglev([1] * n, names=NAMES[:n])
    assert 0 <= run(benchmark, table.lookup, KEY) < n


def test_maglev_lookup_many_keys(benchmark: Any) -> None:
    # 1000 distinct keys per round, so table slots are not all cache-hot; divide by 1000.
    table = Maglev([1] * 10)
    keys = [f"user-{i}" for i in range(1000)]
    lookup = table.lookup

    def lookup_all() -> int:
        s = 0
        for k in keys:
            s += lookup(k)
        return s

    assert benchmark.pedantic(lookup_all, iterations=10, rounds=100) > 0


def test_xxh64_str(benchmark: Any) -> None:
    assert run(benchmark, xxh64, KEY) > 0


def test_maglev_rebuild(benchmark: Any) -> None:
    # Cost of a weight change / add / remove: the whole 65537-slot table is refilled.
    table = Maglev([1] * 10)

    def flip() -> None:
        table.set_weight(0, 3 - table.weight(0))  # 1 <-> 2: a real change every call

    benchmark.pedantic(flip, iterations=1, rounds=50)
    assert table.weight(0) in (1, 2)


def disruption_report(n_keys: int = 100_000) -> list[str]:
    """Fraction of keys that move when one target is added to / removed from N, and how even
    the shares are: the figures recorded in bench/results/fast-hashing-balancer.md."""
    keys = [f"user-{i}" for i in range(n_keys)]
    lines = []
    for n in (10, 100):
        for cls in (HashRing, Maglev):
            t = cls([1] * n)
            base = [t.lookup(k) for k in keys]
            shares = [base.count(i) / n_keys * n for i in range(n)] if n == 10 else []
            t.add(1)
            add = [t.lookup(k) for k in keys]
            t.remove(n)
            t.remove(0)
            rem = [t.lookup(k) for k in keys]
            moved_add = sum(a != b for a, b in zip(base, add, strict=True)) / n_keys
            moved_rem = sum(a != b for a, b in zip(base, rem, strict=True)) / n_keys
            others = sum(a != b for a, b in zip(base, rem, strict=True) if a != 0) / n_keys
            spread = f", share/ideal {min(shares):.3f}..{max(shares):.3f}" if shares else ""
            lines.append(f"{cls.__name__:8} N={n:3}: add one moves {moved_add:.4f} (ideal "
                         f"{1 / (n + 1):.4f}); remove one moves {moved_rem:.4f} (ideal {1 / n:.4f}),"
                         f" of which keys not on the removed target {others:.4f}{spread}")
    return lines


if __name__ == "__main__":
    print("\n".join(disruption_report()))
