"""Keyed limiter table: private vs shared-memory check cost, with two processes contending.

pytest-benchmark cannot drive two processes, so this is a script:

    python bench/bench_shm_contention.py [--keys 1000000] [--checks 500000] [--reps 3] [--rounds 3]

Target (issue 3): a shared-memory table check with two contending processes costs <= 2x the
private table's check. Every figure is the median over --reps passes of ns per check, the
Python->Cython call and the `for` loop step included, keys in random order with fresh str objects
(as a request's key would be). The whole set of scenarios runs --rounds times, interleaved, and
each scenario reports the median of its rounds, so a neighbour's burst hits all of them alike.
Scenarios:

  private-1p     one process, private table (the baseline)
  private-2p     two processes at once, each with its own private table (same CPU and memory
                 bandwidth pressure as the shared runs, no sharing)
  shared-1p      one process, table in a SharedSegment (the slot locks, uncontended)
  shared-2p      two processes at once on one shared table, random keys over all 1M keys
  hot-private    one process, one key (cache-resident slot)
  hot-shared-2p  two processes hammering the same key of a shared table: every check takes the
                 same lock and moves the same cache line between cores (the worst case)

The machine's load average is printed with the figures: on a shared 2-core VM, a busy neighbour
takes a core from one of the two processes and the 2p figures then measure time-slicing.

Memory pages: a private table asks for transparent huge pages (madvise); MAP_SHARED anonymous
memory (shmem) gets them only if /sys/kernel/mm/transparent_hugepage/shmem_enabled allows, which
it often does not ("never" on the machine of the recorded figures). Random lookups in a 40 MB
shared table then pay a TLB miss that the private table does not; the script prints the setting.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

from gateway._fast.keyed_table import KeyedLimiterTable, layout_bytes
from gateway._fast.shm import SharedSegment

NOW = 1_700_000_000.25
PARAMS = {"rate": 1e6, "bucket": 1e12}      # never denies: every check refills and takes


def fill(table: KeyedLimiterTable, n: int) -> KeyedLimiterTable:
    for i in range(n):
        table.check(f"user:{i}", NOW)
    return table


def lookup_keys(n_keys: int, n_checks: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"user:{rng.randrange(n_keys)}" for _ in range(n_checks)]


def measure(table: KeyedLimiterTable, keys: list[str], reps: int) -> float:
    check = table.check
    for k in keys[: len(keys) // 10]:        # warm-up: page tables, branch predictors
        check(k, NOW)
    per_rep = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for k in keys:
            check(k, NOW)
        per_rep.append((time.perf_counter() - t0) / len(keys) * 1e9)
    return statistics.median(per_rep)


def in_two_processes(setup: Callable[[int], tuple[KeyedLimiterTable, list[str]]],
                     reps: int) -> list[float]:
    """Fork two children; each runs setup(i), then both measure at once (pipe barrier)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pids = []
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                table, keys = setup(i)
                os.write(ready_w, b"r")
                os.read(go_r, 1)
                ns = measure(table, keys, reps)
                os.write(out_w, f"{ns}\n".encode())
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for _ in range(2):
        os.read(ready_r, 1)
    os.write(go_w, b"gg")
    os.close(out_w)
    with os.fdopen(out_r) as f:
        results = [float(x) for x in f.read().split()]
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"child {pid} failed")
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    return results


def one_round(n: int, capacity: int, checks: int, reps: int,
              shared: KeyedLimiterTable) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {}
    private = fill(KeyedLimiterTable(capacity, "token_bucket", **PARAMS), n)
    keys = lookup_keys(n, checks, 1)
    res["private-1p"] = [measure(private, keys, reps)]
    res["hot-private"] = [measure(private, ["user:1"] * checks, reps)]
    del private

    def private_setup(i: int) -> tuple[KeyedLimiterTable, list[str]]:
        return (fill(KeyedLimiterTable(capacity, "token_bucket", **PARAMS), n),
                lookup_keys(n, checks, 10 + i))
    res["private-2p"] = in_two_processes(private_setup, reps)
    res["shared-1p"] = [measure(shared, keys, reps)]
    res["shared-2p"] = in_two_processes(lambda i: (shared, lookup_keys(n, checks, 20 + i)), reps)
    res["hot-shared-2p"] = in_two_processes(lambda i: (shared, ["user:1"] * checks), reps)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--checks", type=int, default=500_000, help="checks per pass")
    ap.add_argument("--reps", type=int, default=3, help="passes per measurement (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = ap.parse_args()
    n, capacity = args.keys, args.keys * 5 // 4          # load 0.8
    load0 = os.getloadavg()
    seg = SharedSegment(layout_bytes(capacity))
    shared = fill(KeyedLimiterTable(capacity, "token_bucket", buffer=seg, **PARAMS), n)
    rounds = [one_round(n, capacity, args.checks, args.reps, shared) for _ in range(args.rounds)]
    # Per scenario: the worse of the two processes in each round, then the median over rounds.
    res = {name: statistics.median(max(r[name]) for r in rounds) for name in rounds[0]}

    load1 = os.getloadavg()
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            text = f.read()
        shmem_thp = text[text.index("[") + 1:text.index("]")]
    except OSError:
        shmem_thp = "unknown"
    print(f"keys={n} capacity={capacity} bytes/key={shared.memory_bytes / len(shared):.1f} "
          f"checks/pass={args.checks} reps={args.reps} rounds={args.rounds} "
          f"shmem THP: {shmem_thp}")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    for name, v in res.items():
        per_round = " ".join(f"{max(r[name]):.0f}" for r in rounds)
        print(f"  {name:<14} {v:5.0f} ns/check   (rounds: {per_round})")

    def worst(name: str) -> float:
        return res[name]
    print("ratios (median over rounds of the worse process / baseline):")
    print(f"  shared-2p / private-1p    = {worst('shared-2p') / worst('private-1p'):.2f}")
    print(f"  shared-2p / private-2p    = {worst('shared-2p') / worst('private-2p'):.2f}")
    print(f"  hot-shared-2p / hot-private = {worst('hot-shared-2p') / worst('hot-private'):.2f}")
    print(f"  hot-shared-2p / private-1p  = {worst('hot-shared-2p') / worst('private-1p'):.2f}")


if __name__ == "__main__":
    main()
