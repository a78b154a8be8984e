"""Micro-benchmarks: counter and histogram updates called from Python, as a metrics filter would.

Run: python -m pytest bench/test_bench_counters.py --benchmark-enable -q
Private memory = plain adds; shared = the cells in a MAP_SHARED mmap, updated with atomic adds.
Figures and load averages: bench/results/fast-counters.md.
"""
from __future__ import annotations

import mmap
from typing import Any

import pytest

from gateway._fast.counters import Counter, CounterArray, Histogram

LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]   # Prometheus defaults


def run(benchmark: Any, fn: Any, *args: Any) -> Any:
    """Fixed 1000 calls per round: pytest-benchmark's auto-calibration sometimes settles on one
    call per round for ~100 ns functions, and the figure is then the timer's granularity."""
    return benchmark.pedantic(fn, args, iterations=1000, rounds=300, warmup_rounds=5)


@pytest.fixture(params=["private", "shared"])
def buf(request: Any) -> Any:
    if request.param == "private":
        yield None
        return
    m = mmap.mmap(-1, 4096)
    yield m
    # The benchmarked objects still hold exports until collected; the mmap is freed with them.


def test_counter_inc(benchmark: Any, buf: Any) -> None:
    c = Counter(buf)
    run(benchmark, c.inc)
    assert c.value > 0


def test_counter_array_inc(benchmark: Any, buf: Any) -> None:
    a = CounterArray(64, buf, 0)
    run(benchmark, a.inc, 17)
    assert a[17] > 0


def test_histogram_observe(benchmark: Any, buf: Any) -> None:
    h = Histogram(LATENCY, buf, 0)
    run(benchmark, h.observe, 0.042)
    assert h.count > 0


def test_histogram_scrape(benchmark: Any) -> None:
    # What the exporter pays per histogram at scrape time (not on the request path).
    h = Histogram(LATENCY)
    h.observe(0.042)
    assert run(benchmark, h.buckets)[-1][1] == 1
