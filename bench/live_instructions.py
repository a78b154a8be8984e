#!/usr/bin/env python3
"""User-space instructions per request of the real gateway process under wrk, by library and
function: where a request's CPU goes outside the kernel, in counts a busy machine does not move.

The gateway (one worker, ../shared/bench/gateway-plain.toml, compare.py's upstream) runs under
valgrind's callgrind with instrumentation off; after a warm-up, instrumentation is switched on for
`--seconds` of wrk load (one connection per 8, taskset as compare.py), then dumped. The figure is
the instructions counted in that window over the requests wrk completed in it. Unlike
bench/dataplane_loop.py (the protocols on fake transports), this includes uvloop, the GIL
hand-overs of its callbacks, the metrics recorder and the real config; unlike compare.py it
leaves out the kernel (syscalls, TCP), which is 60-70 % of both proxies' CPU.

    python bench/live_instructions.py [--tree PATH | --nginx] [--profile plain|full] [--traffic bare|realistic]
                                      [--seconds 10] [--top 40]

`--tree` runs another checkout (built in place) for an A/B in the same conditions; `--nginx` counts
compare.py's nginx proxy instead (proxy-nginx.conf as a single process: master_process off), the
same way. `--profile full` runs compare.py's full profile (gateway-full.toml: JWT, rate limit,
breaker) with its bearer token. `--cache-sim` adds valgrind's cache and branch-predictor model
(misses per request: a rough guide to where cycles go beyond the instruction count). Callgrind slows the process ~50x, so rps is low; the counts per request are what
matter. Figures: bench/results/headers.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
sys.path.insert(0, HERE)
import compare  # noqa: E402
from ab_gateways import bench_lock  # noqa: E402
from procs import Procs  # noqa: E402

PORT, ADMIN = 8097, 8098


def wrk(seconds: int, headers: list[str]) -> int:
    cmd = ["taskset", "-c", "0", "wrk", "-t1", "-c8", f"-d{seconds}s"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{PORT}/api/users/42"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    return int(m.group(1)) if m else 0


def split(path: str, requests: int, top: int) -> None:
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    by_object: collections.Counter[str] = collections.Counter()
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+\S+?:(\S+) \[(.*)\]", line)
        if m:
            n = int(m.group(1).replace(",", ""))
            obj = os.path.basename(m.group(3))
            by_object[obj] += n
            rows.append((n, m.group(2), obj))
    total = sum(by_object.values())
    print(f"{total / requests:,.0f} user-space instructions per request ({requests} requests)")
    for obj, n in by_object.most_common(20):
        print(f"{n / requests:9,.0f}  {obj}")
    print()
    for n, fn, obj in sorted(rows, reverse=True)[:top]:
        print(f"{n / requests:9,.0f}  {fn[:90]}  [{obj.split('.')[0]}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=ROOT)
    ap.add_argument("--nginx", action="store_true", help="count compare.py's nginx proxy instead")
    ap.add_argument("--traffic", choices=["bare", "realistic"], default="bare")
    ap.add_argument("--profile", choices=["plain", "full"], default="plain",
                    help="compare.py's gateway config (full: JWT + rate limit + breaker, with its token)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--cache-sim", action="store_true",
                    help="also simulate caches and branch predictors (valgrind's model, not the CPU's): "
                         "misses per request")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"missing {tool} (Debian: valgrind, wrk, nginx-light)")
    tree = os.path.abspath(a.tree)
    headers = list(compare.REALISTIC_REQUEST_HEADERS) if a.traffic == "realistic" else []
    if a.profile == "full" and not a.nginx:
        import jwt  # PyJWT: the token compare.py sends to its full subject
        token = jwt.encode({"sub": "bench-user", "org": "bench", "scope": "bench:read",
                            "exp": int(time.time()) + 3600}, compare.JWT_SECRET, algorithm="HS256")
        headers.append(f"Authorization: Bearer {token}")
    out = os.path.join(tempfile.mkdtemp(prefix="gw-live-"), "callgrind.out")
    with bench_lock(), Procs("gw-live-") as procs:
        upstream = "upstream-nginx.conf" if a.traffic == "bare" else "upstream-nginx-realistic.conf"
        procs.start(["nginx", "-c", os.path.join(SHARED_BENCH, upstream)], 0, log="upstream.log")
        if a.nginx:
            conf = os.path.join(procs.tmp, "proxy-nginx.conf")
            with open(os.path.join(SHARED_BENCH, "proxy-nginx.conf")) as f:
                text = f.read()
            text = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{PORT}", text)
            text = re.sub(r"pid [^;]+;", f"pid {procs.tmp}/nginx.pid;", text)
            with open(conf, "w") as f:
                f.write("master_process off;\n" + text)
            cmd = ["nginx", "-c", conf]
            env, cwd = None, procs.tmp
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            env.update(GATEWAY_CONFIG=os.path.join(SHARED_BENCH, f"gateway-{a.profile}.toml"), GATEWAY_HOST="127.0.0.1",
                       GATEWAY_JWT_SECRET=compare.JWT_SECRET,
                       GATEWAY_PORT=str(PORT), GATEWAY_ADMIN_PORT=str(ADMIN), GATEWAY_WORKERS="1",
                       GATEWAY_ACCESS_LOG="off", PYTHONPATH=tree, PYTHONHASHSEED="0")
            cmd = [sys.executable, "-m", "gateway", "run"]
            cwd = tree
        sim = ["--cache-sim=yes", "--branch-sim=yes"] if a.cache_sim else []
        proc = procs.start(["valgrind", "--tool=callgrind", "--instr-atstart=no", *sim,
                            f"--callgrind-out-file={out}", *cmd], 1, env=env, cwd=cwd, log="subject.log")
        deadline = time.monotonic() + 120
        while True:
            try:
                # Any answer says the subject is up. The probe carries wrk's headers (the full
                # profile's token): a 401 would write an audit record, whose writer thread makes
                # the process multi-threaded for good (glibc's read/write/malloc then cost more),
                # which compare.py's subject never is.
                probe = urllib.request.Request(f"http://127.0.0.1:{PORT}/api/users/42",
                                               headers=dict(h.split(": ", 1) for h in headers))
                try:
                    urllib.request.urlopen(probe, timeout=5).read()
                except urllib.error.HTTPError:
                    pass
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the subject did not start under valgrind; see {procs.tmp}") from None
                time.sleep(1)
        wrk(3, headers)                      # warm-up: connections, caches, the pool
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
        requests = wrk(a.seconds, headers)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    dumps = sorted(p for p in os.listdir(os.path.dirname(out)) if p.startswith("callgrind.out."))
    if not dumps or not requests:
        raise SystemExit("no dump or no requests")
    print(f"{'nginx' if a.nginx else 'tree ' + tree + ', profile ' + a.profile}, traffic {a.traffic}")
    split(os.path.join(os.path.dirname(out), dumps[-1]), requests, a.top)
    if a.cache_sim:
        simulated(os.path.join(os.path.dirname(out), dumps[-1]), requests)
    return 0


def simulated(path: str, requests: int) -> None:
    """Per request: instruction-cache (I1mr), data-cache read/write (D1mr, D1mw) misses and
    conditional/indirect branch mispredictions (Bcm, Bim), from the dump's totals."""
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    events = re.search(r"^Events shown:\s+(.*)$", out, re.M)
    totals = next((line for line in out.splitlines() if "PROGRAM TOTALS" in line), None)
    if not events or not totals:
        return
    values = [int(v.replace(",", "")) for v in re.sub(r"\([^)]*\)", "", totals).split()[:-2]]
    per = dict(zip(events.group(1).split(), values, strict=False))
    print("per request, simulated: " + "  ".join(f"{k} {per[k] / requests:,.0f}"
                                                for k in ("I1mr", "D1mr", "D1mw", "Bcm", "Bim") if k in per))


if __name__ == "__main__":
    sys.exit(main())
