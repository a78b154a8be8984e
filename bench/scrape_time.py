#!/usr/bin/env python3
"""Scrape time of GET /metrics on a node with ROUTES routes x TARGETS targets and WORKERS workers.

Each route has its own service of TARGETS targets (127.0.0.1..127.0.0.TARGETS, one real upstream
port: every loopback address reaches it), every route gets a few requests first so that every label
child has counts, then /metrics is fetched SCRAPES times over a keep-alive-less connection each
(as Prometheus does per scrape). Prints the median and max wall time of a scrape, the body size and
series count, and the collector's own time (gateway_metrics_scrape_duration_seconds).

Usage: python bench/scrape_time.py [--routes 100] [--targets 10] [--workers 2] [--scrapes 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.support.gateway_proc import GatewayProcess, UpstreamProcess, http_get  # noqa: E402


def config(upstream_port: int, routes: int, targets: int) -> str:
    out = []
    for r in range(routes):
        urls = ", ".join(f'{{ url = "http://127.0.0.{t + 1}:{upstream_port}" }}' for t in range(targets))
        out.append(f'[[services]]\nname = "svc{r}"\ntargets = [{urls}]\n')
        out.append(f'[[routes]]\nname = "route{r}"\npath = "/r{r}"\nservice = "svc{r}"\n')
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scrapes", type=int, default=30)
    a = ap.parse_args()
    up = UpstreamProcess()
    gw = GatewayProcess(config(up.port, a.routes, a.targets), env={"GATEWAY_WORKERS": str(a.workers)},
                        start_timeout=60)
    try:
        for r in range(a.routes):
            for _ in range(a.targets):       # round robin: every target of the route once
                http_get(gw.port, f"/r{r}/x")
        times = []
        body = b""
        for _ in range(a.scrapes):
            t0 = time.perf_counter()
            status, _, body = http_get(gw.admin_port, "/metrics")
            times.append(time.perf_counter() - t0)
            assert status == 200
        text = body.decode()
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        own = [line for line in text.splitlines() if line.startswith("gateway_metrics_scrape_duration_seconds ")]
        print(f"routes={a.routes} targets/route={a.targets} workers={a.workers} scrapes={a.scrapes}")
        print(f"scrape wall: median {statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")
        print(f"collector time of the previous scrape: {float(own[0].split()[1]) * 1e3:.1f} ms")
        print(f"body {len(body) / 1024:.0f} KiB, {series} samples")
    finally:
        gw.kill()
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
