#!/usr/bin/env python3
"""What Redis costs the plain path, and what a paused Redis does to requests, in one run.

Two measurements on the topology of ../shared/bench/compare.py (whose helpers this reuses): the
proxy under test pinned to CPU 1; wrk, the upstream nginx and a private redis-server on CPU 0.

1. Overhead. In rounds: nginx, the gateway without Redis, the gateway with GATEWAY_REDIS_URL set
   (both GATEWAY_WORKERS=1, the plain profile). Per round, the with/without ratios of CPU per
   request and of requests per second; the medians are the figures (the state layer promises
   nothing per request: ratio <= 1.05).
2. Pause. Redis is SIGSTOPped for `--pause` seconds while wrk runs for exactly that long against
   the gateway with Redis: every response must be 2xx, and wrk's p99 is the latency during the
   pause (beside the same wrk run with Redis running, for scale).

Usage: python bench/state_overhead.py [--seconds 4] [--rounds 5] [--conns 64] [--pause 5]
Needs wrk, nginx (../shared/bench/compare.py --install), redis-server and the `gateway` command.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
sys.path.insert(0, ROOT)
import compare  # noqa: E402  (measure, wait_port, ports of the shared harness)
from procs import Procs  # noqa: E402

from tests.support.redis_server import free_port  # noqa: E402

GW_CONFIG = os.path.join(SHARED_BENCH, "gateway-plain.toml")


def median(vals: list[float]) -> float:
    return sorted(vals)[len(vals) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--pause", type=int, default=5)
    a = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset", "redis-server", "gateway"):
        if not shutil.which(tool):
            print(f"missing {tool}", file=sys.stderr)
            return 2
    with Procs("gw-state-bench-") as procs:
        return run(a, procs)


def run(a: argparse.Namespace, procs: Procs) -> int:
    start, tmp = procs.start, procs.tmp
    redis_port = free_port()
    redis = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", tmp], 0, log="redis.log")
    start(["nginx", "-c", os.path.join(SHARED_BENCH, "upstream-nginx.conf")], 0, log="upstream.log")
    ngx = start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], 1, log="nginx.log")
    base = {**os.environ, "GATEWAY_CONFIG": GW_CONFIG, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_WORKERS": "1",
            "GATEWAY_LOG_LEVEL": "warning"}
    base.pop("GATEWAY_REDIS_URL", None)
    plain_port, redis_gw_port = compare.GW_PORT, compare.GW_PORT + 1
    plain = start(["gateway", "run"], 1, env={**base, "GATEWAY_PORT": str(plain_port),
                                               "GATEWAY_ADMIN_PORT": str(compare.GW_ADMIN)}, log="gw-plain.log")
    with_redis = start(["gateway", "run"], 1, env={
        **base, "GATEWAY_PORT": str(redis_gw_port), "GATEWAY_ADMIN_PORT": str(compare.GW_ADMIN + 1),
        "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}, log="gw-redis.log")
    for port in (compare.UPSTREAM_PORT, compare.NGINX_PORT, plain_port, redis_gw_port, redis_port):
        if not compare.wait_port(port):
            print(f"port {port} did not open; logs in {tmp}", file=sys.stderr)
            return 2
    cpu: list[float] = []
    rps: list[float] = []
    vs_nginx: list[float] = []
    for rnd in range(a.rounds):
        print(f"-- round {rnd + 1}/{a.rounds}", flush=True)
        n = compare.measure("nginx", compare.NGINX_PORT, ngx.pid, a)
        p = compare.measure("gateway", plain_port, plain.pid, a)
        r = compare.measure("gateway+redis", redis_gw_port, with_redis.pid, a)
        if p["non2xx"] or r["non2xx"] or p["sockerr"] or r["sockerr"]:
            print("ERRORS in this round", flush=True)
        cpu.append(r["cpu"] / p["cpu"])
        rps.append(r["rps"] / p["rps"])
        vs_nginx.append(p["cpu"] / n["cpu"])
    print("redis_cpu_vs_plain per round: " + " ".join(f"{v:.3f}" for v in cpu))
    print("redis_rps_vs_plain per round: " + " ".join(f"{v:.3f}" for v in rps))
    print(f"redis_cpu_vs_plain={median(cpu):.3f} redis_rps_vs_plain={median(rps):.3f} "
          f"plain_cpu_vs_nginx={median(vs_nginx):.2f}", flush=True)

    print(f"-- Redis paused (SIGSTOP) for {a.pause} s under load", flush=True)
    pa = argparse.Namespace(seconds=a.pause, conns=a.conns)
    compare.measure("redis running", redis_gw_port, with_redis.pid, pa)
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        paused = compare.measure("redis paused", redis_gw_port, with_redis.pid, pa)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    ok = paused["n"] and not paused["non2xx"] and not paused["sockerr"]
    print(f"paused: {paused['n']} requests, non2xx={paused['non2xx']} p99={paused['p99']:.0f}us "
          f"-> {'all 2xx' if ok else 'ERRORS'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
