#!/usr/bin/env python3
"""User and system CPU per request of nginx and the gateway, apart, in the same rounds.

compare.py reports utime+stime together. This splits them, on compare.py's topology (the proxy on
CPU 1, wrk and the upstream nginx on CPU 0, one gateway worker, ../shared/bench/gateway-plain.toml),
to say which side of the syscall boundary a gap between the two proxies is on (and, as `cpu1`, all
the time CPU 1 was busy per request: the proxy's own plus kernel work not charged to it, such as
softirq time; see cpu_busy): the kernel's work per
request (TCP, epoll, copies) is the same kind for both (same packets per request: `nstat`), so a
difference there points at how the proxy drives the kernel, and a difference in user time at its
own code.

    python bench/cpu_split.py [--tree PATH] [--rounds 4] [--seconds 4] [--traffic bare|realistic]

Clock-tick accounting (utime/stime from /proc, 100 Hz) is sampled: compare medians over rounds,
not one round. Figures: bench/results/headers.md. Holds /tmp/gateway-bench.lock.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
sys.path.insert(0, HERE)
import compare  # noqa: E402
from ab_gateways import bench_lock  # noqa: E402
from procs import Procs  # noqa: E402


def split_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of pid and its descendants, in clock ticks."""
    user = system = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            pass
    return user, system


def cpu_busy(cpu: int) -> tuple[int, int]:
    """(busy ticks of one CPU, of which irq + softirq) from /proc/stat: user, nice, system, irq,
    softirq (not idle, iowait or steal). Everything the kernel did on that CPU, charged to a
    process or not: softirq work (loopback TCP receive processing) runs there in the sender's
    context or in ksoftirqd, and with IRQ time accounting it is not in the sender's stime."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[0] + v[1] + v[2] + v[5] + v[6], v[5] + v[6]
    return 0, 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=ROOT, help="gateway source tree, built in place")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--traffic", choices=["bare", "realistic"], default="bare")
    a = ap.parse_args()
    with bench_lock(), Procs("gw-split-") as procs:
        upstream = "upstream-nginx.conf" if a.traffic == "bare" else "upstream-nginx-realistic.conf"
        procs.start(["nginx", "-c", os.path.join(SHARED_BENCH, upstream)], 0, log="upstream.log")
        ngx = procs.start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], 1, log="nginx.log")
        env = {**os.environ, "GATEWAY_CONFIG": os.path.join(SHARED_BENCH, "gateway-plain.toml"),
               "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(compare.GW_PORT),
               "GATEWAY_ADMIN_PORT": str(compare.GW_ADMIN), "GATEWAY_WORKERS": "1",
               "GATEWAY_ACCESS_LOG": "off", "PYTHONPATH": os.path.abspath(a.tree)}
        gw = procs.start([sys.executable, "-m", "gateway", "run"], 1, env=env, log="gateway.log")
        for port in (compare.UPSTREAM_PORT, compare.NGINX_PORT, compare.GW_PORT):
            if not compare.wait_port(port):
                print(f"port {port} did not open; logs in {procs.tmp}", file=sys.stderr)
                return 2
        headers = compare.REALISTIC_REQUEST_HEADERS if a.traffic == "realistic" else []
        print(f"tree {a.tree}, traffic {a.traffic}; µs of CPU per request")
        ratios: dict[str, list[float]] = {"user": [], "sys": [], "cpu1": []}
        for rnd in range(a.rounds):
            row = {}
            for name, port, pid in (("nginx", compare.NGINX_PORT, ngx.pid), ("gateway", compare.GW_PORT, gw.pid)):
                u0, s0 = split_ticks(pid)
                b0, q0 = cpu_busy(1)
                r = compare.wrk(port, a.seconds, a.conns, headers)
                u1, s1 = split_ticks(pid)
                b1, q1 = cpu_busy(1)
                per = 1e6 / compare.HZ / max(r["n"], 1)
                row[name] = ((u1 - u0) * per, (s1 - s0) * per, (b1 - b0) * per, (q1 - q0) * per)
            (nu, ns, nb, nq), (gu, gs, gb, gq) = row["nginx"], row["gateway"]
            ratios["user"].append(gu / nu)
            ratios["sys"].append(gs / ns)
            ratios["cpu1"].append(gb / nb)
            print(f"round {rnd + 1}: nginx user {nu:5.2f} sys {ns:5.2f} cpu1 {nb:5.2f} (irq {nq:4.2f})"
                  f" | gateway user {gu:5.2f} sys {gs:5.2f} cpu1 {gb:5.2f} (irq {gq:4.2f})"
                  f" | gateway/nginx user {gu / nu:.2f} sys {gs / ns:.2f} cpu1 {gb / nb:.2f}", flush=True)
        print(f"median gateway/nginx: user {statistics.median(ratios['user']):.2f} "
              f"sys {statistics.median(ratios['sys']):.2f} cpu1 {statistics.median(ratios['cpu1']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
