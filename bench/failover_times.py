#!/usr/bin/env python3
"""How long a dead target keeps getting requests, and how long a recovered one waits for traffic.

A real gateway (GATEWAY_WORKERS=2 by default) in front of two upstream processes a and b
(tests/support/health_upstream.py); one client sends requests back to back on fresh connections
(so both workers serve). a is SIGKILLed; "death → out of rotation" is the time from the kill to the
last request of the first burst the gateway still sent to a (seen as 502s: refused connection),
i.e. before a quiet second; passive health then still sends a trial request now and then (5 s,
10 s, ... up to 60 s apart per worker), counted over the next 12 s. a is started again
on the same port; "recovery → first routed" is the time from its listening again to the first
response it served. Two modes: active (a [services.health] table) and passive (none: 5 consecutive
failures per worker, then trials).

Under load passive health acts first even where active checks are configured (5 failures come
fast); `--gap 0.25` spaces the client's requests so the active checker's timing shows.

Usage: python bench/failover_times.py [--workers 2] [--runs 3] [--interval 1.0] [--gap 0.0]
       [--modes active,passive]
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


def measure(mode: str, workers: int, interval: float, gap: float = 0.0,
            window: float = 12.0) -> tuple[float, float, int, int]:
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
        failures: list[float] = []          # times of requests the gateway still sent to a (502s)
        while time.monotonic() - killed < window:
            r = one(gw.port)
            if r != "b":
                failures.append(time.monotonic() - killed)
            time.sleep(gap)
        # The first burst ends at the first quiet second: that is when a left rotation everywhere;
        # later failures are trial requests (passive health) while it is still dead.
        death = 0.0
        for i, f in enumerate(failures):
            death = f
            if i + 1 < len(failures) and failures[i + 1] - f > 1.0:
                break
        trials = sum(1 for f in failures if f > death)
        a = start_up(pa, "a", mf)
        up = time.monotonic()
        while True:
            got = one(gw.port)
            time.sleep(gap)
            if got == "a":
                recovery = time.monotonic() - up
                break
            if time.monotonic() - up > 60:
                recovery = float("nan")
                break
        return death, recovery, trials, len(failures) - trials
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
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between the client's requests")
    ap.add_argument("--modes", default="active,passive")
    a = ap.parse_args()
    print(f"workers={a.workers} runs={a.runs} active interval={a.interval}s (thresholds 2/2, timeout 0.5 s); "
          f"loadavg {os.getloadavg()[0]:.2f}")
    print(f"client gap between requests: {a.gap} s")
    for mode in a.modes.split(","):
        deaths, recs = [], []
        for _ in range(a.runs):
            d, r, trials, failed = measure(mode, a.workers, a.interval, a.gap)
            deaths.append(d)
            recs.append(r)
            print(f"  {mode}: death -> out of rotation (last routed of the first burst) {d:.2f} s "
                  f"({failed} requests failed), trial requests in the next 12 s: {trials}; "
                  f"recovery -> first routed {r:.2f} s", flush=True)
        print(f"{mode}: death -> last routed median {statistics.median(deaths):.2f} s "
              f"(max {max(deaths):.2f}); recovery -> first routed median {statistics.median(recs):.2f} s "
              f"(max {max(recs):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
