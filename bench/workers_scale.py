#!/usr/bin/env python3
"""Workers: the gateway with GATEWAY_WORKERS=2 against 1 worker and against nginx with 1 and 2
workers, in the same rounds; and how SO_REUSEPORT splits connections between two workers.

Topology: nothing pinned. On a 2-core machine wrk (2 threads), the upstream nginx (1 worker) and
the proxy under test all share both cores, so a second worker cannot double anything: the figure
is what a second worker buys on this box, beside what nginx's second worker buys on the same box.

  throughput  per round and subject (nginx-1w, nginx-2w, gateway-1w, gateway-2w): requests per
              second, p50/p99 and CPU per request (every process of the subject), compare.py's
              wrk against /api/users/42; ratios 2w/1w for each and gateway-2w/nginx-2w per round.
  balance     for a few connection counts, --trials separate wrk runs against each 2-worker subject
              (every run opens fresh connections, so fresh source ports and fresh hashes), counting
              mid-run the established connections each worker process holds (ss -tnp). Reported:
              how often each split occurred, e.g. 4 connections -> {2/2: 5, 3/1: 4, 4/0: 1}.

Usage: python bench/workers_scale.py [--seconds 4] [--rounds 3] [--conns 64] [--trials 12]
                                     [--balance-conns 2,4,8,64]
Holds /tmp/gateway-bench.lock (the throughput part and the balance part separately).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
sys.path.insert(0, HERE)
import compare  # noqa: E402
from ab_gateways import bench_lock  # noqa: E402
from procs import Procs  # noqa: E402

CPUS = "0-1"
NGINX2_PORT, GW1_PORT, GW2_PORT = 8082, compare.GW_PORT, compare.GW_PORT + 1


def nginx2_conf(tmp: str) -> str:
    """compare.py's proxy-nginx.conf with 2 workers, on its own port and pid file."""
    with open(os.path.join(SHARED_BENCH, "proxy-nginx.conf")) as f:
        text = f.read()
    text = text.replace("worker_processes 1;", "worker_processes 2;")
    text = text.replace("127.0.0.1:8081", f"127.0.0.1:{NGINX2_PORT}")
    text = re.sub(r"pid [^;]+;", f"pid {tmp}/nginx2.pid;", text)
    text = re.sub(r"error_log [^;]+;", f"error_log {tmp}/nginx2.err warn;", text)
    path = os.path.join(tmp, "nginx2.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def start_all(procs: Procs) -> dict[str, tuple[int, int]]:
    start = procs.start
    start(["nginx", "-c", os.path.join(SHARED_BENCH, "upstream-nginx.conf")], CPUS, log="upstream.log")  # type: ignore[arg-type]
    n1 = start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], CPUS, log="nginx1.log")  # type: ignore[arg-type]
    n2 = start(["nginx", "-c", nginx2_conf(procs.tmp)], CPUS, log="nginx2.log")  # type: ignore[arg-type]
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base.update(GATEWAY_HOST="127.0.0.1", GATEWAY_LOG_LEVEL="warning", GATEWAY_ACCESS_LOG="off",
                GATEWAY_CONFIG=os.path.join(SHARED_BENCH, "gateway-plain.toml"), PYTHONPATH=ROOT)
    gws = {}
    for i, (workers, port) in enumerate(((1, GW1_PORT), (2, GW2_PORT))):
        env = dict(base, GATEWAY_WORKERS=str(workers), GATEWAY_PORT=str(port),
                   GATEWAY_ADMIN_PORT=str(compare.GW_ADMIN + i))
        gws[workers] = start([sys.executable, "-m", "gateway", "run"], CPUS, env=env, cwd=ROOT,  # type: ignore[arg-type]
                             log=f"gw-{workers}.log")
    subjects = {"nginx-1w": (compare.NGINX_PORT, n1.pid), "nginx-2w": (NGINX2_PORT, n2.pid),
                "gateway-1w": (GW1_PORT, gws[1].pid), "gateway-2w": (GW2_PORT, gws[2].pid)}
    for port in (compare.UPSTREAM_PORT, *(p for p, _ in subjects.values())):
        if not compare.wait_port(port, 60):
            raise SystemExit(f"port {port} did not open; logs in {procs.tmp}")
    time.sleep(1.0)   # the second gateway worker may bind a moment after the first
    return subjects


def wrk(port: int, seconds: int, conns: int) -> subprocess.Popen[str]:
    """wrk in the background (its -d takes whole seconds only)."""
    threads = min(2, conns)
    cmd = ["taskset", "-c", CPUS, "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
           f"http://127.0.0.1:{port}/api/users/42"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def parse(out: str) -> dict:
    def unit(v: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else float("nan")
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"n": int(n.group(1)) if n else 0, "rps": float(rps.group(1)) if rps else 0.0,
            "p50": unit(p50.group(1)) if p50 else float("nan"), "p99": unit(p99.group(1)) if p99 else float("nan"),
            "errors": int(bad.group(1)) if bad else 0, "sockerr": sock.group(1) if sock else ""}


def split(port: int) -> dict[int, int]:
    """Established server-side connections on the port, per owning process id."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    per: collections.Counter[int] = collections.Counter()
    for line in out.splitlines():
        m = re.search(r"pid=(\d+)", line)
        if m:
            per[int(m.group(1))] += 1
    return dict(per)


def throughput(a: argparse.Namespace) -> dict[str, list[float]]:
    ratios: dict[str, list[float]] = collections.defaultdict(list)
    with bench_lock(), Procs("gw-workers-") as procs:
        subjects = start_all(procs)
        print(f"throughput: wrk -t2 -c{a.conns} -d{a.seconds}s, nothing pinned (2 cores)", flush=True)
        for rnd in range(a.rounds):
            print(f"-- round {rnd + 1}/{a.rounds}", flush=True)
            rows = {}
            for name, (port, pid) in subjects.items():
                t0 = compare.tree_ticks(pid)
                p = wrk(port, a.seconds, a.conns)
                time.sleep(a.seconds / 2)
                conns = split(port)
                r = parse(p.communicate()[0])
                r["cpu"] = (compare.tree_ticks(pid) - t0) / compare.HZ / r["n"] * 1e6 if r["n"] else float("nan")
                rows[name] = r
                shown = "/".join(str(v) for v in sorted(conns.values(), reverse=True))
                print(f"{name:<11} rps={r['rps']:>8.0f} p50={r['p50']:>6.0f}us p99={r['p99']:>6.0f}us "
                      f"cpu_us/req={r['cpu']:>5.1f} conns/process={shown} errors={r['errors']} {r['sockerr']}",
                      flush=True)
            ratios["gateway_2w_vs_1w_rps"].append(rows["gateway-2w"]["rps"] / rows["gateway-1w"]["rps"])
            ratios["nginx_2w_vs_1w_rps"].append(rows["nginx-2w"]["rps"] / rows["nginx-1w"]["rps"])
            ratios["gateway_2w_vs_nginx_2w_rps"].append(rows["gateway-2w"]["rps"] / rows["nginx-2w"]["rps"])
            ratios["gateway_2w_vs_nginx_2w_cpu"].append(rows["gateway-2w"]["cpu"] / rows["nginx-2w"]["cpu"])
            ratios["gateway_1w_vs_nginx_1w_cpu"].append(rows["gateway-1w"]["cpu"] / rows["nginx-1w"]["cpu"])
    return ratios


def balance(a: argparse.Namespace) -> None:
    with bench_lock(), Procs("gw-balance-") as procs:
        subjects = start_all(procs)
        for name in ("gateway-2w", "nginx-2w"):
            port, _ = subjects[name]
            for conns in a.balance_conns:
                seen: collections.Counter[str] = collections.Counter()
                for _ in range(a.trials):
                    p = wrk(port, 2, conns)
                    time.sleep(1.0)
                    per = split(port)
                    p.communicate()
                    if sum(per.values()) != conns:
                        print(f"  (a {name} run held {sum(per.values())} connections, not {conns})", flush=True)
                    counts = sorted(per.values(), reverse=True) + [0] * (2 - len(per))
                    seen["/".join(str(c) for c in counts)] += 1
                    time.sleep(0.2)
                shown = ", ".join(f"{k}: {v}" for k, v in sorted(seen.items(), key=lambda kv: -kv[1]))
                print(f"balance {name:<11} {conns:>3} connections, {a.trials} runs: {shown}", flush=True)


def median(vals: list[float]) -> float:
    return sorted(vals)[len(vals) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--balance-conns", default="2,4,8,64")
    ap.add_argument("--skip", choices=["throughput", "balance"])
    a = ap.parse_args()
    a.balance_conns = [int(c) for c in a.balance_conns.split(",")]
    if a.skip != "throughput":
        ratios = throughput(a)
        for key, vals in ratios.items():
            print(f"{key} per round: " + " ".join(f"{v:.2f}" for v in vals))
        print(" ".join(f"{key}={median(vals):.2f}" for key, vals in ratios.items()), flush=True)
    if a.skip != "balance":
        balance(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
