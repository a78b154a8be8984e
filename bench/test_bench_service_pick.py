"""Micro-benchmarks: Service.pick per balancer, as the data plane calls it (one RequestContext per
request), and pick + record for the balancers fed by outcomes. Round robin is the baseline.

Run: python -m pytest bench/test_bench_service_pick.py --benchmark-enable -q
Figures: bench/results/discovery-balancers.md.
"""
from __future__ import annotations

from typing import Any

import pytest

from gateway.discovery.balancers import make_service
from gateway.discovery.canary import CanaryService
from gateway.discovery.service import Target
from gateway.pipeline.context import RequestContext

STRATEGIES = [("round_robin", None), ("weighted", None), ("least_conn", None), ("p2c_ewma", None),
              ("ip_hash", None), ("consistent_hash", "header:x-user"), ("consistent_hash", "cookie:sid")]


def run(benchmark: Any, fn: Any, *args: Any) -> Any:
    return benchmark.pedantic(fn, args, iterations=2000, rounds=200, warmup_rounds=5)


def request() -> RequestContext:
    c = RequestContext()
    c.client_ip = "203.0.113.7"
    c.headers = [(b"accept", b"*/*"), (b"user-agent", b"bench"), (b"x-user", b"user-1234"),
                 (b"cookie", b"a=1; sid=abcdef")]
    c.start = 1000.0
    c.upstream_start = 1000.0
    c.upstream_end = 1000.01
    return c


def service(balancer: str, hash_key: str | None, n: int) -> Any:
    ws = [2 if balancer == "weighted" and i == 0 else 1 for i in range(n)]
    ts = [Target(f"10.0.0.{i + 1}", 8000 + i, weight=ws[i]) for i in range(n)]
    return make_service("s", ts, balancer, hash_key)


@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize(("balancer", "hash_key"), STRATEGIES)
def test_pick(benchmark: Any, balancer: str, hash_key: str | None, n: int) -> None:
    s = service(balancer, hash_key, n)
    c = request()
    benchmark.group = f"pick n={n}"
    assert run(benchmark, s.pick, c) is not None


@pytest.mark.parametrize(("balancer", "hash_key"), STRATEGIES)
def test_pick_and_record(benchmark: Any, balancer: str, hash_key: str | None) -> None:
    # What an observed service costs per request: the pick, then the data plane's record().
    s = service(balancer, hash_key, 3)
    c = request()
    benchmark.group = "pick+record n=3"

    def cycle() -> Any:
        t = s.pick(c)
        s.record(c, t, None)
        return t

    assert run(benchmark, cycle) is not None


def test_canary_pick(benchmark: Any) -> None:
    ts = [Target("10.0.0.1", 1, version="v1"), Target("10.0.0.2", 2, version="v1"), Target("10.0.0.3", 3, version="v2")]
    cs = CanaryService(make_service("s", ts), "v2", 10, "x-canary")
    c = request()
    benchmark.group = "pick n=3"
    assert run(benchmark, cs.pick, c) is not None
