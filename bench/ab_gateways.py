#!/usr/bin/env python3
"""Two builds of the gateway side by side with nginx, in the same rounds: did a change cost CPU?

A ratio taken across two runs of ../shared/bench/compare.py mixes the change with the machine's
mood (nginx's own CPU per request moves 2x between runs on a shared VM). This runs the gateway of
two source trees (each built in place: `python setup.py build_ext --inplace`) and nginx in rounds
on compare.py's topology, and reports per round the CPU per request of B over A and of each over
nginx; the medians are the figures.

Usage: python bench/ab_gateways.py A_TREE B_TREE [--seconds 4] [--rounds 5] [--conns 64]
       [--traffic bare|realistic] [--config-a TOML] [--config-b TOML] [--env-a K=V ...] [--env-b K=V ...]
The same tree twice with two configs measures a policy's cost: e.g. `. . --config-b with-limit.toml`
(default config: ../shared/bench/gateway-plain.toml). Runs hold /tmp/gateway-bench.lock, so
benchmarks started by several sessions on one machine queue instead of sharing ports and CPU.
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
    plain = os.path.join(SHARED_BENCH, "gateway-plain.toml")
    ap.add_argument("--config-a", default=plain, help="GATEWAY_CONFIG of A")
    ap.add_argument("--config-b", default=plain, help="GATEWAY_CONFIG of B")
    ap.add_argument("--env-a", action="append", default=[], metavar="K=V", help="extra environment of A")
    ap.add_argument("--env-b", action="append", default=[], metavar="K=V", help="extra environment of B")
    ap.add_argument("--bearer", action="store_true",
                    help="send compare.py's full-profile JWT (sub bench-user, org bench, scope bench:read)")
    a = ap.parse_args()
    with bench_lock(), Procs("gw-ab-") as procs:
        return run(a, procs)


def bench_lock():
    """Hold /tmp/gateway-bench.lock for the run: one benchmark at a time per machine."""
    import contextlib
    import fcntl

    @contextlib.contextmanager
    def held():
        with open("/tmp/gateway-bench.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
    return held()


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--env-a/--env-b take K=V, got {item!r}")
        out[k] = v
    return out


def run(a: argparse.Namespace, procs: Procs) -> int:
    start, tmp = procs.start, procs.tmp
    upstream = "upstream-nginx.conf" if a.traffic == "bare" else "upstream-nginx-realistic.conf"
    start(["nginx", "-c", os.path.join(SHARED_BENCH, upstream)], 0, log="upstream.log")
    ngx = start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], 1, log="nginx.log")
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base.update(GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS="1", GATEWAY_LOG_LEVEL="warning",
                GATEWAY_JWT_SECRET=compare.JWT_SECRET)
    gws = {}
    sides = (("A", a.a, a.config_a, _pairs(a.env_a)), ("B", a.b, a.config_b, _pairs(a.env_b)))
    for i, (name, tree, config, extra) in enumerate(sides):
        env = dict(base, GATEWAY_CONFIG=os.path.abspath(config), GATEWAY_PORT=str(compare.GW_PORT + i),
                   GATEWAY_ADMIN_PORT=str(compare.GW_ADMIN + i), PYTHONPATH=os.path.abspath(tree), **extra)
        gws[name] = (compare.GW_PORT + i, start([sys.executable, "-m", "gateway", "run"], 1, env=env,
                                                cwd=os.path.abspath(tree), log=f"gw-{name}.log"))
    for port in (compare.UPSTREAM_PORT, compare.NGINX_PORT, *(p for p, _ in gws.values())):
        if not compare.wait_port(port):
            print(f"port {port} did not open; logs in {tmp}", file=sys.stderr)
            return 2
    hdrs = list(compare.REALISTIC_REQUEST_HEADERS) if a.traffic == "realistic" else []
    if a.bearer:
        import time

        import jwt  # PyJWT

        token = jwt.encode({"sub": "bench-user", "org": "bench", "scope": "bench:read",
                            "exp": int(time.time()) + 3600}, compare.JWT_SECRET, algorithm="HS256")
        hdrs.append(f"Authorization: Bearer {token}")
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
