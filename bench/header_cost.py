#!/usr/bin/env python3
"""The marginal cost of request header fields: bare and realistic requests in the same rounds.

compare.py's `--traffic realistic` request carries 16 header fields a browser-driven API call sends
(about 1 KiB); wrk's bare request carries Host only. This drives nginx and one or two gateway trees
with both requests, round after round, against ONE upstream (compare.py's bare nginx upstream, so
the response is the same and only the request fields differ), and reports per subject the CPU per
request of each traffic and the difference: what the 16 fields cost each proxy, in microseconds
per request, beside nginx's. Topology and lock as ab_gateways.py (proxy on CPU 1, wrk and the
upstream on CPU 0; /tmp/gateway-bench.lock held for the run).

Usage: python bench/header_cost.py TREE [TREE_B] [--seconds 4] [--rounds 5] [--conns 64]
       [--response realistic]   (the upstream answers with compare.py's 15 fields instead)
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
sys.path.insert(0, HERE)
import compare  # noqa: E402
from ab_gateways import bench_lock, median  # noqa: E402
from procs import Procs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="one or two gateway source trees (built in place)")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--response", choices=["bare", "realistic"], default="bare")
    ap.add_argument("--config", default=os.path.join(SHARED_BENCH, "gateway-plain.toml"))
    a = ap.parse_args()
    if len(a.trees) > 2:
        raise SystemExit("at most two trees")
    with bench_lock(), Procs("gw-hdrcost-") as procs:
        return run(a, procs)


def run(a: argparse.Namespace, procs: Procs) -> int:
    start, tmp = procs.start, procs.tmp
    upstream = "upstream-nginx.conf" if a.response == "bare" else "upstream-nginx-realistic.conf"
    start(["nginx", "-c", os.path.join(SHARED_BENCH, upstream)], 0, log="upstream.log")
    ngx = start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], 1, log="nginx.log")
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base.update(GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS="1", GATEWAY_LOG_LEVEL="warning",
                GATEWAY_JWT_SECRET=compare.JWT_SECRET)
    subjects = [("nginx", compare.NGINX_PORT, ngx.pid)]
    for i, tree in enumerate(a.trees):
        env = dict(base, GATEWAY_CONFIG=os.path.abspath(a.config), GATEWAY_PORT=str(compare.GW_PORT + i),
                   GATEWAY_ADMIN_PORT=str(compare.GW_ADMIN + i), PYTHONPATH=os.path.abspath(tree))
        p = start([sys.executable, "-m", "gateway", "run"], 1, env=env, cwd=os.path.abspath(tree),
                  log=f"gw-{i}.log")
        label = f"{'AB'[i]} {os.path.basename(os.path.abspath(tree))}"
        subjects.append((label, compare.GW_PORT + i, p.pid))
    for _, port, _ in [(None, compare.UPSTREAM_PORT, None), *subjects]:
        if not compare.wait_port(port):
            print(f"port {port} did not open; logs in {tmp}", file=sys.stderr)
            return 2
    realistic = list(compare.REALISTIC_REQUEST_HEADERS)
    extra: dict[str, list[float]] = {name: [] for name, _, _ in subjects}
    ratio: dict[str, list[float]] = {name: [] for name, _, _ in subjects[1:]}
    errors = False
    for rnd in range(a.rounds):
        print(f"-- round {rnd + 1}/{a.rounds}", flush=True)
        for name, port, pid in subjects:
            bare = compare.measure(f"{name} bare", port, pid, a, [])
            real = compare.measure(f"{name} realistic", port, pid, a, realistic)
            errors |= bool(bare["non2xx"] or real["non2xx"] or bare["sockerr"] or real["sockerr"])
            extra[name].append(real["cpu"] - bare["cpu"])
        for name in ratio:
            ratio[name].append(extra[name][-1] / extra["nginx"][-1] if extra["nginx"][-1] > 0 else float("nan"))
    print(f"cpu_us/req added by the {len(realistic)} request fields (realistic - bare), per round:")
    for name, vals in extra.items():
        print(f"  {name:<16} " + " ".join(f"{v:6.1f}" for v in vals) + f"   median {median(vals):.1f}")
    for name, vals in ratio.items():
        print(f"  {name} / nginx   " + " ".join(f"{v:6.2f}" for v in vals) + f"   median {median(vals):.2f}")
    print(" ".join(f"{name.split()[-1]}_extra_us={median(vals):.1f}" for name, vals in extra.items())
          + (" (ERRORS)" if errors else ""), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
