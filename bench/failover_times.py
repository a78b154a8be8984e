#!/usr/bin/env python3
"""How long a dead target keeps getting requests, and how long a recovered one waits for traffic.

A real gateway (GATEWAY_WORKERS=2 by default) in front of two upstream processes a and b
(tests/support/health_upstream.py); one client sends requests back to back on fresh connections
(so both workers serve). a is SIGKILLed; "death → last routed" is the time from the kill to the
last request the gateway still sent to a (seen as a 502: refused connection). a is started again
on the same port; "recovery → first routed" is the time from its listening again to the first
response it served. Two modes: active (a [services.health] table) and passive (none: 5 consecutive
failures per worker, 5 s out, then one trial).

Usage: python bench/failover_times.py [--workers 2] [--runs 3] [--interval 1.0]
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.gateway_proc import GatewayProcess, free_port  # noqa: E402

HELPER = ROOT / "tests" / "support" / "health_upstream.py"


def start_up(port: int, name: str, modefile: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, str(HELPER), str(port), name, str(modefile)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline().startswith(b"listening")
    return p


def one(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/x")
        r = c.getresponse()
        body = r.read().decode()
        return body if r.status == 200 else f"status:{r.status}"
    finally:
        c.close()


def measure(mode: str, workers: int, interval: float) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="failover-"))
    pa, pb = free_port(), free_port()
    mf = tmp / "mode"
    mf.write_text("ok")
    a = start_up(pa, "a", mf)
    b = start_up(pb, "b", mf)
    text = (f'[[services]]\nname = "s"\ntargets = ["http://127.0.0.1:{pa}", "http://127.0.0.1:{pb}"]\n')
    if mode == "active":
        text += (f"[services.health]\npath = \"/health\"\ninterval = {interval}\ntimeout = 0.5\n"
                 f"healthy_threshold = 2\nunhealthy_threshold = 2\nmax_backoff = {interval * 2}\n")
    text += '[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n'
    gw = GatewayProcess(text, env={"GATEWAY_WORKERS": str(workers), "GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "1"})
    try:
        for _ in range(50):
            one(gw.port)
        killed = time.monotonic()
        a.send_signal(signal.SIGKILL)
        a.wait()
        last_a = killed
        quiet_since = time.monotonic()
        # Until a has had no request for 3 s (longer than any interval, backoff or passive window).
        while time.monotonic() - quiet_since < 3.0 + interval * 2:
            r = one(gw.port)
            if r != "b":
                last_a = time.monotonic()
                quiet_since = last_a
        death = last_a - killed
        a = start_up(pa, "a", mf)
        up = time.monotonic()
        while True:
            if one(gw.port) == "a":
                recovery = time.monotonic() - up
                break
            if time.monotonic() - up > 60:
                recovery = float("nan")
                break
        return death, recovery
    finally:
        gw.stop()
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args()
    print(f"workers={a.workers} runs={a.runs} active interval={a.interval}s (thresholds 2/2, timeout 0.5 s); "
          f"loadavg {os.getloadavg()[0]:.2f}")
    for mode in ("active", "passive"):
        deaths, recs = [], []
        for _ in range(a.runs):
            d, r = measure(mode, a.workers, a.interval)
            deaths.append(d)
            recs.append(r)
            print(f"  {mode}: death -> last routed {d:.2f} s, recovery -> first routed {r:.2f} s", flush=True)
        print(f"{mode}: death -> last routed median {statistics.median(deaths):.2f} s "
              f"(max {max(deaths):.2f}); recovery -> first routed median {statistics.median(recs):.2f} s "
              f"(max {max(recs):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
