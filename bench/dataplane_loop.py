#!/usr/bin/env python3
"""The data plane's own CPU per exchange, without sockets: one wrk-style GET in, one nginx-style
response back, through the real DownstreamProtocol, Router, Service, pool and UpstreamProtocol on
fake transports (tests/http/harness.py). Syscalls and the event loop are excluded, so this is the
part of compare.py's cpu_us/req that our Python (and Cython) code costs.

    python bench/dataplane_loop.py [--n 200000] [--profile] [--metrics] [--access-log PATH] [--tracing]

--metrics records every exchange as a gateway does (the runtime's Recorder, private cells);
--access-log PATH also writes the access log there (implies --metrics).
--cpu reports the process's CPU time per exchange instead of wall time.
--tracing also makes the spans of GATEWAY_TRACING=on (implies --metrics), configured by the OTEL_*
variables as the gateway is (sampler, endpoint: bench/otlp_sink.py); the figure is then the
process's CPU per exchange, the exporter thread's included.

--profile prints the cProfile top functions (cProfile inflates small calls; use it for shares,
the plain run for the figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.http.harness import Harness  # noqa: E402

# What wrk sends and what ../shared/bench/upstream-nginx.conf answers, byte for byte.
REQUEST = b"GET /api/users/42 HTTP/1.1\r\nHost: 127.0.0.1:8090\r\n\r\n"
BODY = (b'{"service":"users","id":42,"name":"Ada Lovelace","email":"ada@example.com",'
        b'"roles":["admin","dev"],"active":true}')
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 06:45:36 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
            % (len(BODY), BODY))


def run(n: int, metrics: bool = False, access_log: str | None = None, tracing: bool = False,
        cpu: bool = False) -> float:
    h = Harness(root=True)
    if metrics or access_log or tracing:
        from gateway.observability.metrics import build_recorder

        h.worker.runtime.metrics = build_recorder(h.router.routes, [h.service], None, access_log or "off",
                                                  h.loop, tracing)
    h.feed(REQUEST)          # first exchange opens the (fake) upstream connection
    h.respond(RESPONSE)
    up = h.up()
    feed, respond = h.proto.data_received, up.data_received
    down_written, up_written = h.down.written, up.transport.written  # type: ignore[union-attr]
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(n):
        feed(REQUEST)
        respond(RESPONSE)
        down_written.clear()
        up_written.clear()
    dt = time.perf_counter() - t0
    if tracing:
        from gateway.observability.tracing import close_process_tracer

        close_process_tracer()          # the spans still queued are exported: their CPU counts
    if cpu or tracing:
        dt = time.process_time() - c0
    assert len(h.pool.conns) == 1, "the pooled upstream connection must be reused"
    h.close()
    return dt / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--metrics", action="store_true")
    ap.add_argument("--access-log", default=None)
    ap.add_argument("--tracing", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="the process's CPU time, not wall time (implied by --tracing)")
    a = ap.parse_args()
    if a.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(run, a.n, a.metrics, a.access_log, a.tracing)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    runs = sorted(run(a.n, a.metrics, a.access_log, a.tracing, a.cpu) for _ in range(5))
    print(f"data plane, one exchange (no syscalls): median {runs[2]:.2f} us  (min {runs[0]:.2f}, max {runs[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
