"""Micro-benchmarks: counter and histogram updates called from Python, as a metrics filter would.

Run: python -m pytest bench/test_bench_counters.py --benchmark-enable -q
Private memory = plain adds; shared = the cells in a MAP_SHARED mmap, updated with atomic adds.
Figures and load averages: bench/results/fast-counters.md.
"""
from __future__ import annotations

import mmap
import os
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


@pytest.mark.parametrize("layout", ["same_cell", "own_cache_line"])
def test_counter_inc_contended(benchmark: Any, layout: str) -> None:
    """A second process increments at the same time: one cell for all workers (the cache line
    bounces between cores) vs one cell per worker 64 bytes apart (the exporter sums them)."""
    m = mmap.mmap(-1, 4096)
    mine = Counter(m, 0)
    theirs_offset = 0 if layout == "same_cell" else 64
    stop = Counter(m, 128)   # the parent bumps it to tell the child to stop
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            theirs = Counter(m, theirs_offset)
            while stop.value == 0:
                for _ in range(1000):
                    theirs.inc()
            code = 0
        finally:
            os._exit(code)
    try:
        theirs = Counter(m, theirs_offset)
        while theirs.value == 0:   # the child is running before the clock starts
            pass
        before = theirs.value
        run(benchmark, mine.inc)
        # Share of the run during which the child was actually incrementing (2 cores, shared
        # with other work): reported so the figure can be read honestly.
        benchmark.extra_info["child_incs_during_run"] = theirs.value - before
    finally:
        stop.inc()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert Counter(m, theirs_offset).value > 0
