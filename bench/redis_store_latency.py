"""RedisStore: how long a change takes from put() on instance A to on_change on instance B.

    python bench/redis_store_latency.py [--changes 1000] [--url redis://...]

Starts a private redis-server (tests/support/redis_server.py) unless --url is given, then two
instances' state layers (each its own RedisLink and RedisStore, as two gateway processes would
have) in one uvloop loop. Changes are sequential: put() on A, wait for B's on_change, next. Prints
p50 / p90 / p99 / max of put()->B's on_change and of put() itself (the round trip of the write
script, plus applying it on A), with the machine's load average: on a shared 2-core VM a busy
neighbour shows up in the max, not the median.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

import uvloop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gateway.state.redis_link import RedisLink  # noqa: E402
from gateway.state.redis_store import RedisStore  # noqa: E402
from tests.support.redis_server import RedisProcess  # noqa: E402


def _pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def measure(url: str, changes: int) -> dict[str, list[float]]:
    applied: dict[int, float] = {}

    def on_change_b(v: int, k: str, val: Any) -> None:
        applied[v] = time.perf_counter()

    def ignore(*_: Any) -> None:
        pass

    prefix = f"bench{os.getpid()}:"
    la, lb = RedisLink(url, prefix=prefix, timeout=0.5), RedisLink(url, prefix=prefix, timeout=0.5)
    a = RedisStore(la, "a", on_change=ignore, on_resync=ignore)
    b = RedisStore(lb, "b", on_change=on_change_b, on_resync=ignore)
    for x in (la, lb, a, b):
        await x.start()
    assert await a.wait_synced(5) and await b.wait_synced(5)
    e2e: list[float] = []
    put: list[float] = []
    try:
        for i in range(changes):
            t0 = time.perf_counter()
            v = await a.put(f"bench/{i % 100}", {"i": i, "url": f"http://10.0.{i % 256}.1:8080"})
            put.append(time.perf_counter() - t0)
            while v not in applied:
                await asyncio.sleep(0)
            e2e.append(applied.pop(v) - t0)
    finally:
        for x in (a, b, la, lb):
            await x.close()
    return {"put() on A -> on_change on B": e2e, "put() on A": put}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--url", help="an existing Redis (default: a private redis-server)")
    args = ap.parse_args()
    if args.url:
        results = uvloop.run(measure(args.url, args.changes))
    else:
        with RedisProcess() as srv:
            results = uvloop.run(measure(srv.url, args.changes))
    print(f"{args.changes} sequential changes, load average {os.getloadavg()[0]:.2f}")
    for name, xs in results.items():
        ms = sorted(x * 1000 for x in xs)
        print(f"  {name:30s} p50 {statistics.median(ms):6.3f} ms  p90 {_pct(ms, 0.9):6.3f} ms  "
              f"p99 {_pct(ms, 0.99):6.3f} ms  max {ms[-1]:6.3f} ms")


if __name__ == "__main__":
    main()
