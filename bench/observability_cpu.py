#!/usr/bin/env python3
"""CPU (every thread: time.process_time) per exchange through the real data plane on fake transports
(tests/http/harness.py, no sockets): metrics off, metrics on, metrics on + the access log to a file,
alternating in one process and paired per round, so the machine's mood cancels out. Needs no
benchmark lock; it complements bench/ab_gateways.py (which measures the whole process over TCP).

    python bench/observability_cpu.py [--n 20000] [--rounds 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.dataplane_loop import REQUEST, RESPONSE  # noqa: E402
from gateway.observability import access  # noqa: E402
from gateway.observability.metrics import build_recorder  # noqa: E402
from tests.http.harness import Harness  # noqa: E402


def cpu_per_exchange(n: int, metrics: bool = False, log: str | None = None) -> float:
    h = Harness(root=True)
    if metrics or log:
        h.worker.runtime.metrics = build_recorder(h.router.routes, [h.service], None, log or "off", None)
    h.feed(REQUEST)
    h.respond(RESPONSE)
    up = h.up()
    feed, respond = h.proto.data_received, up.data_received
    down_written, up_written = h.down.written, up.transport.written  # type: ignore[union-attr]
    t0 = time.process_time()
    for _ in range(n):
        feed(REQUEST)
        respond(RESPONSE)
        down_written.clear()
        up_written.clear()
    if log:
        # The writer thread's CPU counts too: wait until it has written everything.
        assert access._process_log is not None
        access._process_log.flush()
        while access._process_log.writer.pending:
            time.sleep(0.001)
    dt = time.process_time() - t0
    h.close()
    return dt / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    path = os.path.join(tempfile.mkdtemp(prefix="gw-access-"), "access.log")
    res: dict[str, list[float]] = {"off": [], "metrics": [], "access": []}
    for _ in range(a.rounds):
        res["off"].append(cpu_per_exchange(a.n))
        res["metrics"].append(cpu_per_exchange(a.n, True))
        res["access"].append(cpu_per_exchange(a.n, True, path))
        os.truncate(path, 0)
    for k, v in res.items():
        print(f"{k:8s} median {statistics.median(v):.2f} us CPU/exchange  (min {min(v):.2f})")
    print(f"paired metrics/off    {statistics.median([b / x for x, b in zip(res['off'], res['metrics'], strict=True)]):.3f}")
    print(f"paired access/metrics {statistics.median([b / x for x, b in zip(res['metrics'], res['access'], strict=True)]):.3f}")
    access.close_process_log()
    os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
