#!/usr/bin/env python3
"""Accuracy of rate limits across gateway instances sharing one Redis (bench/results/rate-limits.md).

Starts a redis-server, an upstream and N gateway instances (GATEWAY_REDIS_URL, one worker each
unless --workers), then for each trial a fresh user sends `2 x limit` requests from `--threads`
concurrent clients spread round-robin over all instances, as fast as they can. Reports admitted
vs limit per trial and the worst case, next to the README's bound (overshoot 0 with Redis up).

Usage: PYTHONPATH=. python bench/ratelimit_accuracy.py [--instances 10] [--limit 200] [--trials 5]
"""
from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.gateway_proc import GatewayProcess, UpstreamProcess  # noqa: E402
from tests.support.redis_server import RedisProcess  # noqa: E402


def run_trial(gws: list[GatewayProcess], user: str, total: int, threads: int) -> dict[str, int]:
    """`total` requests of `user` from `threads` concurrent clients, round-robin over `gws`."""
    counts = {"ok": 0, "limited": 0, "other": 0}
    lock = threading.Lock()
    sent = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                n = next(sent, None)
            if n is None:
                return
            gw = gws[n % len(gws)]
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                c.request("GET", "/x", headers={"X-Test-User": user})
                r = c.getresponse()
                r.read()
                kind = "ok" if r.status == 200 else "limited" if r.status == 429 else "other"
            finally:
                c.close()
            with lock:
                counts[kind] += 1

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return counts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--window", type=float, default=3600.0)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--threads", type=int, default=20)
    a = ap.parse_args()
    with RedisProcess() as redis:
        up = UpstreamProcess()
        gws: list[GatewayProcess] = []
        try:
            config = (f'[[services]]\nname = "up"\ntargets = [{{ url = "{up.url}" }}]\n'
                      f'[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n'
                      f'[[routes.rate_limits]]\nkey = "user"\nlimit = {a.limit}\nwindow = {a.window}\n')
            env = {"GATEWAY_REDIS_URL": redis.url, "_GATEWAY_TEST_IDENTITY": "1",
                   "GATEWAY_WORKERS": str(a.workers), "GATEWAY_REDIS_TIMEOUT": "0.5"}
            gws = [GatewayProcess(config, env=env) for _ in range(a.instances)]
            time.sleep(2.0)   # membership heartbeats: every instance sees the others
            worst = 0
            for trial in range(a.trials):
                user = f"user-{trial}-{time.time_ns()}"
                t0 = time.monotonic()
                counts = run_trial(gws, user, 2 * a.limit, a.threads)
                took = time.monotonic() - t0
                over = counts["ok"] - a.limit
                worst = max(worst, over)
                print(f"trial {trial}: admitted {counts['ok']} of {2 * a.limit} (limit {a.limit}, "
                      f"{a.instances} instances x {a.workers} workers, {a.threads} clients) "
                      f"overshoot {over:+d} ({counts['ok'] / a.limit:.3f} x limit), other {counts['other']}, "
                      f"{took:.1f} s", flush=True)
            print(f"worst overshoot over {a.trials} trials: {worst:+d}; README bound with Redis up: 0")
        finally:
            for g in gws:
                g.kill()
            up.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
