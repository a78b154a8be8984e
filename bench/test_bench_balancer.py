"""Micro-benchmarks: balancer picks called from Python, as the service layer will call them.

Run: python -m pytest bench/test_bench_balancer.py --benchmark-enable -q
Targets (issue 3): P2C pick <= 200 ns median, the Python->Cython call included. Figures and load
averages: bench/results/fast-hashing-balancer.md.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway._fast.balancer import LeastConnections, P2CEwma, SmoothWeightedRR


def run(benchmark: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Fixed 2000 calls per round: calibration alone is unreliable at tens of ns per call on a
    shared VM (it sometimes settles on one call per round and measures the timer)."""
    return benchmark.pedantic(fn, args, iterations=2000, rounds=300, warmup_rounds=5)


@pytest.mark.parametrize("n", [3, 10])
def test_swrr_pick(benchmark: Any, n: int) -> None:
    s = SmoothWeightedRR([5, 1, 1] + [2] * (n - 3))
    assert 0 <= run(benchmark, s.pick) < n


@pytest.mark.parametrize("n", [3, 10])
def test_least_conn_pick(benchmark: Any, n: int) -> None:
    lc = LeastConnections(n)
    for i in range(n):
        for _ in range(i % 3):
            lc.acquire(i)
    assert 0 <= run(benchmark, lc.pick) < n


def test_least_conn_pick_acquire_release(benchmark: Any) -> None:
    # The full per-request cost the proxy step pays: pick, acquire, release.
    lc = LeastConnections(10)

    def cycle() -> int:
        i = lc.pick()
        lc.acquire(i)
        lc.release(i)
        return i

    assert run(benchmark, cycle) >= 0


@pytest.mark.parametrize("n", [3, 10, 100])
def test_p2c_pick(benchmark: Any, n: int) -> None:
    p = P2CEwma(n, 10.0)
    for i in range(n):
        p.observe(i, 0.01 + 0.001 * i, 0.0)
    assert 0 <= run(benchmark, p.pick, 1.0) < n


def test_p2c_observe(benchmark: Any) -> None:
    p = P2CEwma(10, 10.0)
    p.observe(3, 0.02, 0.0)
    run(benchmark, p.observe, 3, 0.015, 1.0)
