#!/usr/bin/env python3
"""An open circuit under wrk load: the route's fallback against a router 404, in the same run.

Issue 9: "the fallback is a prepared response: it costs no more than a 404", and an open circuit
makes no upstream connection besides its probes. This starts the fault upstream
(tests/support/fault_upstream.py) answering 500, a gateway of this tree whose route has a breaker
(failure_threshold 5, open_timeout 2 s, one probe per half-open period) and a configured fallback,
trips the circuit, then alternates wrk rounds on the fallback route and on a path no route
matches, and reports requests/s and p99 of each, plus the upstream's connection and request
counts during the load (the probes: the circuit reopens on each, with a doubled timeout).

Usage: python bench/breaker_open.py [--seconds 5] [--rounds 3] [--conns 64] [--workers 1]
Holds /tmp/gateway-bench.lock like ab_gateways.py.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
[[services]]
name = "bench"
targets = ["http://127.0.0.1:{port}"]
[services.breaker]
failure_threshold = 5
open_timeout = 2.0
half_open_requests = 1
success_threshold = 1

[[routes]]
name = "bench"
path = "/api"
service = "bench"
fallback = {{ status = 503, body = '{{"error":"bench_unavailable"}}', content_type = "application/json" }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the gateway's processes (the supervisor's children too), from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port: int, path: str, seconds: int, conns: int) -> tuple[float, float, int, int]:
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert m is not None, out
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert total is not None
    return rps, p99, int(total.group(1)) - (int(non2xx.group(1)) if non2xx else 0), int(total.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    lock = open("/tmp/gateway-bench.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    up = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "support", "fault_upstream.py")],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    gw = None
    try:
        assert up.stdout is not None
        words = up.stdout.readline().split()
        up_port, ctl_port = int(words[1]), int(words[3])
        ctl = socket.create_connection(("127.0.0.1", ctl_port))
        rf = ctl.makefile("rb")

        def ask(line: str) -> str:
            ctl.sendall(line.encode() + b"\n")
            return rf.readline().decode().strip()

        tmp = tempfile.mkdtemp(prefix="brk-bench-")
        cfg = os.path.join(tmp, "gateway.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(port=up_port))
        port, admin = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_CONFIG=cfg, GATEWAY_PORT=str(port), GATEWAY_ADMIN_PORT=str(admin),
                   GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS=str(a.workers), PYTHONPATH=ROOT)
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "run"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "stderr"), "w"))  # noqa: SIM115
        wait_port(port)
        wait_port(admin)
        ask("mode status 500")
        for _ in range(5):
            _get(port, "/api/x")
        state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/breakers"))
        assert state["services"][0]["targets"][0]["state"] == "open", state
        ask("zero")
        rows = []
        for r in range(a.rounds):
            for name, path in (("fallback (open circuit)", "/api/x"), ("router 404", "/nothing")):
                pids = [gw.pid, *_children(gw.pid)]
                c0 = cpu_seconds(pids)
                rps, p99, ok, total = wrk(port, path, a.seconds, a.conns)
                cpu_us = (cpu_seconds(pids) - c0) / total * 1e6
                assert ok == 0, f"{name}: {ok} responses were 2xx/3xx"
                rows.append((r, name, rps, p99, cpu_us))
        stats = json.loads(ask("stats"))
        state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/breakers"))
        t = state["services"][0]["targets"][0]
        print(f"workers={a.workers} conns={a.conns} seconds={a.seconds} rounds={a.rounds}")
        print("| round | path | requests/s | p99 ms | gateway CPU us/req |\n| --- | --- | --- | --- | --- |")
        for r, name, rps, p99, cpu in rows:
            print(f"| {r + 1} | {name} | {rps:,.0f} | {p99:.2f} | {cpu:.1f} |")
        for name in ("fallback (open circuit)", "router 404"):
            rs = sorted(x[2] for x in rows if x[1] == name)
            ps = sorted(x[3] for x in rows if x[1] == name)
            cs = sorted(x[4] for x in rows if x[1] == name)
            print(f"median {name}: {rs[len(rs) // 2]:,.0f} req/s, p99 {ps[len(ps) // 2]:.2f} ms, "
                  f"{cs[len(cs) // 2]:.1f} us CPU/req")
        ratio = sorted(f[4] / n[4] for f, n in zip(rows[0::2], rows[1::2], strict=True))
        print(f"fallback CPU/req over 404 CPU/req, per round: {' '.join(f'{x:.3f}' for x in ratio)}; "
              f"median {ratio[len(ratio) // 2]:.3f}")
        print(f"upstream during the load: {stats['connections']} connections, {stats['requests']} requests "
              f"(probes); circuit {t['state']}, transitions {t['transitions']}, open_timeout now {t['open_timeout']}")
        return 0
    finally:
        if gw is not None:
            gw.terminate()
            gw.wait(30)
        up.kill()
        up.wait()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


def _get(port: int, path: str) -> int:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


if __name__ == "__main__":
    sys.exit(main())
