"""Micro-benchmarks: the circuit breaker as the data plane calls it, once before and once after
each proxied exchange.

Run: python -m pytest bench/test_bench_breaker.py --benchmark-enable -q
Target (issue 3): allow + record <= 150 ns median, the Python->Cython calls included. The
combined figure also carries a Python function frame around the two calls (~30-40 ns) and
pytest-benchmark's loop; the single-call figures show each call alone. Figures, load averages and
the two-process shared-memory ratio: bench/results/fast-breaker.md (bench/bench_breaker_shm.py).
"""
from __future__ import annotations

import mmap
from typing import Any

from gateway._fast.breaker import SHM_SIZE, CircuitBreaker

NOW = 1_700_000_000.25   # a clock-sized timestamp; constant, so every call lands in one bucket


def run(benchmark: Any, fn: Any, *args: Any) -> Any:
    """Fixed 1000 calls per round (as bench/test_bench_limiters.py): auto-calibration sometimes
    settles on one call per round for ~100 ns functions and then measures the timer."""
    return benchmark.pedantic(fn, args, iterations=1000, rounds=300, warmup_rounds=5)


def closed_breaker(**kw: Any) -> CircuitBreaker:
    # Thresholds out of reach: every call takes the CLOSED path with window bookkeeping.
    return CircuitBreaker(failure_threshold=10**9, min_requests=10**9, **kw)


def test_allow_then_record(benchmark: Any) -> None:
    b = closed_breaker()
    allow, record = b.allow, b.record

    def exchange() -> None:
        allow(NOW)
        record(NOW, True, 0.01)

    run(benchmark, exchange)
    assert b.snapshot()["window_requests"] > 0


def test_allow_then_record_with_ticket(benchmark: Any) -> None:
    b = closed_breaker()
    allow, record = b.allow, b.record

    def exchange() -> None:
        record(NOW, True, 0.01, allow(NOW))

    run(benchmark, exchange)
    assert b.snapshot()["stale"] == 0


def test_allow_then_record_shared_memory(benchmark: Any) -> None:
    # Same breaker in an mmap: one process, so this is the cost of the placement alone.
    buf = mmap.mmap(-1, SHM_SIZE)
    b = closed_breaker(buffer=buf)
    allow, record = b.allow, b.record

    def exchange() -> None:
        allow(NOW)
        record(NOW, True, 0.01)

    run(benchmark, exchange)


def test_allow_closed(benchmark: Any) -> None:
    assert run(benchmark, closed_breaker().allow, NOW)


def test_allow_open(benchmark: Any) -> None:
    b = closed_breaker()
    b.force_open(NOW)
    assert not run(benchmark, b.allow, NOW)


def test_record_success(benchmark: Any) -> None:
    run(benchmark, closed_breaker().record, NOW, True, 0.01)
