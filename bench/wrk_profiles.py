#!/usr/bin/env python3
"""wrk's realistic profiles (wrk/*.lua) against nginx and the gateway, side by side in one run.

The same topology as ../shared/bench/compare.py (whose helpers this reuses): the proxy under test
pinned to CPU 1, wrk and the upstream nginx on CPU 0. For each profile — mixed paths, POST bodies,
an Authorization header — it prints rps, p50/p99 and CPU microseconds per request for nginx and for
the gateway, and the gateway/nginx CPU ratio. Quote the ratios; absolute numbers move with the
machine's load.

Usage: python bench/wrk_profiles.py [--seconds 8] [--conns 64] [--profiles mixed_paths,post_body]
Needs wrk, nginx and the `gateway` command (../shared/bench/compare.py --install for the first two).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
import compare  # noqa: E402  (tree_ticks, wait_port and the ports of the shared harness)

PROFILES = ["mixed_paths", "post_body", "auth_header"]
GW_CONFIG = os.path.join(SHARED_BENCH, "gateway-plain.toml")


def run_wrk(port: int, profile: str, seconds: int, conns: int, tmp: str) -> dict:
    # wrk takes one script: the profile plus the shared `done` reporter.
    script = os.path.join(tmp, f"{profile}.lua")
    with open(script, "w") as out:
        for part in (f"{profile}.lua", "report.lua"):
            with open(os.path.join(ROOT, "wrk", part)) as f:
                out.write(f.read() + "\n")
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", script,
           f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"WRK_RESULT (.*)", out)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def measure(name: str, port: int, pid: int, profile: str, a: argparse.Namespace, tmp: str) -> dict:
    t0 = compare.tree_ticks(pid)
    r = run_wrk(port, profile, a.seconds, a.conns, tmp)
    r["cpu_us"] = (compare.tree_ticks(pid) - t0) / compare.HZ / max(r["requests"], 1) * 1e6
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    print(f"{profile:<12} {name:<8} rps={r['rps']:>8.0f} p50={r['p50_us']:>6}us p99={r['p99_us']:>6}us "
          f"cpu_us/req={r['cpu_us']:>6.1f} non2xx={r['non2xx']} sockerr={r['socket_errors']}", flush=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--profiles", default=",".join(PROFILES))
    a = ap.parse_args()
    gw = shutil.which("gateway")
    if not (gw and shutil.which("wrk") and shutil.which("nginx")):
        print("needs wrk, nginx and the gateway command on PATH", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="gw-wrk-")
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], cpu: int, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, env=env, start_new_session=True,
                             stdout=open(os.path.join(tmp, "log"), "ab"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start(["nginx", "-c", os.path.join(SHARED_BENCH, "upstream-nginx.conf")], 0)
        ngx = start(["nginx", "-c", os.path.join(SHARED_BENCH, "proxy-nginx.conf")], 1)
        env = {**os.environ, "GATEWAY_CONFIG": GW_CONFIG, "GATEWAY_HOST": "127.0.0.1",
               "GATEWAY_PORT": str(compare.GW_PORT), "GATEWAY_ADMIN_PORT": str(compare.GW_ADMIN),
               "GATEWAY_WORKERS": "1"}
        g = start([gw, "run"], 1, env)
        for port in (compare.UPSTREAM_PORT, compare.NGINX_PORT, compare.GW_PORT):
            if not compare.wait_port(port):
                print(f"port {port} did not open; logs in {tmp}", file=sys.stderr)
                return 2
        ratios = []
        for profile in a.profiles.split(","):
            n = measure("nginx", compare.NGINX_PORT, ngx.pid, profile, a, tmp)
            r = measure("gateway", compare.GW_PORT, g.pid, profile, a, tmp)
            ok = r["non2xx"] == 0 and r["socket_errors"] == 0
            ratios.append(f"{profile}_cpu_vs_nginx={r['cpu_us'] / n['cpu_us']:.2f}" + ("" if ok else "(ERRORS)"))
        print(" ".join(ratios))
        return 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
