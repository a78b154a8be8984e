"""Cost of a breaker shared by two processes, as a ratio to a private one.

Run: PYTHONPATH=. python bench/bench_breaker_shm.py [--calls 2000000] [--repeat 5]

Each variant times the same loop (allow(now); record(now, True, 0.01)) in the parent:
- private:            one process, breaker in malloc'd memory;
- private + busy peer: a forked peer runs the same loop on its OWN private breaker, so both cores
                      are as busy as in the contended case and only the sharing differs;
- shared contended:   parent and forked peer hammer ONE breaker in a MAP_SHARED mmap, so every
                      call moves the lock's cache line between cores.
Medians over --repeat runs, in ns per allow+record pair (Python loop overhead included, the same
in every variant). The ratio shared/private is the figure issue 3 asks for.
"""
from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from collections.abc import Callable

from gateway._fast.breaker import SHM_SIZE, CircuitBreaker

NOW = 1_700_000_000.25
POLICY = {"failure_threshold": 10**9, "min_requests": 10**9, "window": 1e6}


def loop(b: CircuitBreaker, calls: int) -> float:
    """ns per allow+record pair."""
    allow, record = b.allow, b.record
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        allow(NOW)
        record(NOW, True, 0.01)
    return (time.perf_counter_ns() - t0) / calls


def with_peer(make: Callable[[], CircuitBreaker], calls: int) -> float:
    """Time the parent's loop while a forked peer runs its own loop on make()'s breaker.

    The peer starts first and runs 1.5x as many calls, so the parent's whole timed span is
    contended; a pipe makes both start together."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            peer = make()
            os.read(r, 1)
            loop(peer, calls * 3 // 2)
        finally:
            os._exit(0)
    mine = make()
    os.write(w, b"x")
    ns = loop(mine, calls)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    def private() -> CircuitBreaker:
        return CircuitBreaker(**POLICY)

    buf = mmap.mmap(-1, SHM_SIZE)
    CircuitBreaker(buffer=buf, **POLICY)      # initialise before fork, as a supervisor would

    def shared() -> CircuitBreaker:
        return CircuitBreaker(buffer=buf, **POLICY)

    variants: dict[str, Callable[[], float]] = {
        "private": lambda: loop(private(), args.calls),
        "shared, one process": lambda: loop(shared(), args.calls),
        "private + busy peer": lambda: with_peer(private, args.calls),
        "shared contended (2 processes)": lambda: with_peer(shared, args.calls),
    }
    results: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeat):            # interleaved, so drifting load hits every variant
        for name, fn in variants.items():
            results[name].append(fn())
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"load average before end: {os.getloadavg()}")
    print(f"{'variant':34} {'median ns':>10} {'min ns':>8} {'ratio':>6}")
    for name, values in results.items():
        print(f"{name:34} {med[name]:10.1f} {min(values):8.1f} {med[name] / med['private']:6.2f}")
    print(f"shared contended / private + busy peer: "
          f"{med['shared contended (2 processes)'] / med['private + busy peer']:.2f}")
    final = CircuitBreaker(buffer=buf, **POLICY).snapshot()
    # Every pair recorded by either process landed in the one window: no update was lost.
    print(f"shared window_requests: {final['window_requests']}")


if __name__ == "__main__":
    main()
