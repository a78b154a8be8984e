"""Micro-benchmarks: limiter checks called from Python, as a filter written in Python would call them.

Run: python -m pytest bench/test_bench_limiters.py --benchmark-enable -q
Targets (issue 3): token bucket try_acquire and sliding-window check <= 150 ns median, the
Python->Cython call (argument parsing, result tuple) included. The figures also include
pytest-benchmark's own loop (a Python `for` and a call through *args). Figures and load
averages: bench/results/fast-limiters.md.
"""
from __future__ import annotations

from typing import Any

from gateway._fast.sliding_window import SlidingLog, SlidingWindow
from gateway._fast.token_bucket import TokenBucket

NOW = 1_700_000_000.25   # a wall-clock-sized timestamp, as time.time() would give


def run(benchmark: Any, fn: Any, *args: Any) -> Any:
    """Fixed 1000 calls per round: pytest-benchmark's auto-calibration sometimes settles on one
    call per round for ~100 ns functions, and the figure is then the timer's granularity."""
    return benchmark.pedantic(fn, args, iterations=1000, rounds=300, warmup_rounds=5)


def test_token_bucket_allowed(benchmark: Any) -> None:
    # Capacity far above what a run takes: every call goes through refill + take.
    tb = TokenBucket(1e6, 1e18)
    assert run(benchmark, tb.try_acquire, NOW)[0] is True


def test_token_bucket_denied(benchmark: Any) -> None:
    tb = TokenBucket(1.0, 1.0)
    tb.try_acquire(NOW)
    assert run(benchmark, tb.try_acquire, NOW)[0] is False


def test_token_bucket_with_cost(benchmark: Any) -> None:
    tb = TokenBucket(1e6, 1e18)
    assert run(benchmark, tb.try_acquire, NOW, 2.0)[0] is True


def test_sliding_window_allowed(benchmark: Any) -> None:
    # Float32 counts: 1e7 hits stay exact, and the run takes fewer than that per window.
    sw = SlidingWindow(16_000_000, 3600.0)
    assert run(benchmark, sw.check, NOW)[0] is True


def test_sliding_window_denied(benchmark: Any) -> None:
    sw = SlidingWindow(1, 3600.0)
    sw.check(NOW)
    assert run(benchmark, sw.check, NOW)[0] is False


def test_sliding_log_allowed(benchmark: Any) -> None:
    # Advancing time so that each check expires one old hit and stores one: the steady state.
    log = SlidingLog(10_000, 1.0)
    state = {"now": NOW}

    def step() -> tuple[bool, int, float]:
        state["now"] += 0.001
        return log.check(state["now"])

    # This one's figure includes the Python closure (~40 ns); see the denied case for the call alone.
    assert run(benchmark, step)[0] is True


def test_sliding_log_denied(benchmark: Any) -> None:
    log = SlidingLog(100, 3600.0)
    for _ in range(100):
        log.check(NOW)
    assert run(benchmark, log.check, NOW)[0] is False
