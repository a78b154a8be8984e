#!/usr/bin/env python3
"""Issue 17 item 4: a worker's resident memory with slow readers and around a burst of large
transfers. Runs this tree's gateway (one worker) in front of tests/support/bulk_peers.py's upstream.

    bench/bodies_memory.py [--clients 100] [--rate-mib 1] [--seconds 10] [--after 60]

1. idle: RSS after start and one small request;
2. slow readers: --clients connections reading 1 GiB responses at --rate-mib MiB/s each, the
   upstream sending as fast as the gateway reads; RSS sampled for --seconds: growth per connection
   against uvloop's write high-water mark (64 KiB);
3. burst: 16 downloads of 64 MiB and 8 uploads of 32 MiB at once, RSS sampled during it, then
   every 5 s for --after seconds: the last figure against idle (goal: within 10 %).
Hold /tmp/gateway-bench.lock while it runs (flock).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.bulk_peers import BulkUpstream, digest, download, upload  # noqa: E402
from tests.support.gateway_proc import GatewayProcess  # noqa: E402

MIB = 1 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def slow_readers(port: int, clients: int, rate: float, seconds: float, pid: int) -> list[int]:
    stop = threading.Event()
    got = [0] * clients

    def reader(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /sized?n=%d&seed=%d HTTP/1.1\r\nHost: b\r\n\r\n" % (1 << 30, i))
            t0 = time.monotonic()
            while not stop.is_set():
                due = t0 + got[i] / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(min(due - now, 0.1))
                    continue
                data = s.recv(65536)
                if not data:
                    return
                got[i] += len(data)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while min(got) < 2 * MIB and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    samples = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        samples.append(rss(pid))
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(10)
    print(f"slow readers: {clients} x {rate / MIB:.1f} MiB/s, {sum(got) / MIB:.0f} MiB read", flush=True)
    return samples


def burst(port: int, pid: int) -> list[int]:
    errors: list[str] = []

    def down(i: int) -> None:
        st, n, sha = download(port, f"/sized?n={64 * MIB}&seed={100 + i}")
        if (st, n, sha) != (200, 64 * MIB, digest(100 + i, 64 * MIB)):
            errors.append(f"download {i}")

    def up(i: int) -> None:
        echo = upload(port, "/sink", 200 + i, 32 * MIB, chunk=bool(i % 2))
        if echo != {"len": 32 * MIB, "sha256": digest(200 + i, 32 * MIB)}:
            errors.append(f"upload {i}")

    threads = [threading.Thread(target=down, args=(i,)) for i in range(16)]
    threads += [threading.Thread(target=up, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    samples = []
    while any(t.is_alive() for t in threads):
        samples.append(rss(pid))
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert not errors, errors
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate-mib", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--after", type=float, default=60.0)
    a = ap.parse_args()
    upstream = BulkUpstream()
    cfg = (f'[[services]]\nname = "b"\ntargets = [{{ url = "{upstream.url}" }}]\n'
           '[[routes]]\nname = "b"\npath = "/"\nservice = "b"\n')
    gw = GatewayProcess(cfg, env={"GATEWAY_WORKERS": "1", "GATEWAY_ACCESS_LOG": "off",
                                  "GATEWAY_MAX_BODY_BYTES": str(1 << 30)})
    try:
        download(gw.port, "/sized?n=1000&seed=1")
        time.sleep(1)
        idle = rss(gw.pid)
        print(f"idle RSS {idle / MIB:.1f} MiB", flush=True)
        s = slow_readers(gw.port, a.clients, a.rate_mib * MIB, a.seconds, gw.pid)
        grown = max(s) - idle
        print(f"slow readers: RSS {min(s) / MIB:.1f}..{max(s) / MIB:.1f} MiB over {a.seconds:.0f} s; "
              f"growth {grown / MIB:.1f} MiB = {grown / a.clients / 1024:.0f} KiB per connection "
              f"= {grown / a.clients / 65536:.1f} high-water marks", flush=True)
        time.sleep(3)
        before = rss(gw.pid)
        b = burst(gw.port, gw.pid)
        print(f"burst: RSS before {before / MIB:.1f} MiB, during max {max(b) / MIB:.1f} MiB", flush=True)
        t_end = time.monotonic() + a.after
        t0 = time.monotonic()
        while time.monotonic() < t_end:
            time.sleep(5)
            print(f"  +{time.monotonic() - t0:4.0f} s: RSS {rss(gw.pid) / MIB:.1f} MiB", flush=True)
        last = rss(gw.pid)
        print(f"after {a.after:.0f} s: RSS {last / MIB:.1f} MiB = {last / idle:.2f} x idle "
              f"({last / before:.2f} x before the burst)", flush=True)
    finally:
        gw.kill()
        upstream.stop()


if __name__ == "__main__":
    main()
