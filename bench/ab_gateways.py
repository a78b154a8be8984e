#!/usr/bin/env python3
"""Two builds of the gateway side by side with nginx, in the same rounds: did a change cost CPU?

A ratio taken across two runs of ../shared/bench/compare.py mixes the change with the machine's
mood (nginx's own CPU per request moves 2x between runs on a shared VM). This runs the gateway of
two source trees (each built in place: `python setup.py build_ext --inplace`) and nginx in rounds
on compare.py's topology, and reports per round the CPU per request of B over A and of each over
nginx; the medians are the figures.

Usage: python bench/ab_gateways.py A_TREE B_TREE [--seconds 4] [--rounds 5] [--conns 64]
       [--traffic bare|realistic]
Needs wrk and nginx (../shared/bench/compare.py --install).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
import compare  # noqa: E402  (measure, wait_port, ports and headers of the shared harness)
from procs import Procs  # noqa: E402


def median(vals: list[float]) -> float:
    return sorted(vals)[len(vals) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--traffic", choices=["bare", "realistic"], default="bare")
    a = ap.parse_args()
    with Procs("gw-ab-") as procs:
        return run(a, procs)


def run(a: argparse.Namespace, procs: Procs) -> int:
    start, tmp = procs.start, procs.tmp
    upstream = "upstream-nginx.conf" if a.traffic == "bare" else "upstream-nginx-realistic.conf"
    start(["nginx", "-c", os.path.join(SHARED_BENCH, upstream)], 0, log="upstream.log")
    ngx = start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], 1, log="nginx.log")
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base.update(GATEWAY_CONFIG=os.path.join(SHARED_BENCH, "gateway-plain.toml"), GATEWAY_HOST="127.0.0.1",
                GATEWAY_WORKERS="1", GATEWAY_LOG_LEVEL="warning")
    gws = {}
    for i, (name, tree) in enumerate((("A", a.a), ("B", a.b))):
        env = dict(base, GATEWAY_PORT=str(compare.GW_PORT + i), GATEWAY_ADMIN_PORT=str(compare.GW_ADMIN + i),
                   PYTHONPATH=os.path.abspath(tree))
        gws[name] = (compare.GW_PORT + i, start([sys.executable, "-m", "gateway", "run"], 1, env=env,
                                                cwd=os.path.abspath(tree), log=f"gw-{name}.log"))
    for port in (compare.UPSTREAM_PORT, compare.NGINX_PORT, *(p for p, _ in gws.values())):
        if not compare.wait_port(port):
            print(f"port {port} did not open; logs in {tmp}", file=sys.stderr)
            return 2
    hdrs = compare.REALISTIC_REQUEST_HEADERS if a.traffic == "realistic" else []
    b_vs_a: list[float] = []
    a_vs_nginx: list[float] = []
    b_vs_nginx: list[float] = []
    errors = False
    for rnd in range(a.rounds):
        print(f"-- round {rnd + 1}/{a.rounds}", flush=True)
        n = compare.measure("nginx", compare.NGINX_PORT, ngx.pid, a, hdrs)
        ra = compare.measure(f"A {os.path.basename(os.path.abspath(a.a))}", gws["A"][0], gws["A"][1].pid, a, hdrs)
        rb = compare.measure(f"B {os.path.basename(os.path.abspath(a.b))}", gws["B"][0], gws["B"][1].pid, a, hdrs)
        errors |= bool(ra["non2xx"] or rb["non2xx"] or ra["sockerr"] or rb["sockerr"])
        b_vs_a.append(rb["cpu"] / ra["cpu"])
        a_vs_nginx.append(ra["cpu"] / n["cpu"])
        b_vs_nginx.append(rb["cpu"] / n["cpu"])
    print("b_cpu_vs_a per round: " + " ".join(f"{v:.3f}" for v in b_vs_a))
    print(f"b_cpu_vs_a={median(b_vs_a):.3f} a_cpu_vs_nginx={median(a_vs_nginx):.2f} "
          f"b_cpu_vs_nginx={median(b_vs_nginx):.2f}{' (ERRORS)' if errors else ''}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
