#!/usr/bin/env python3
"""The data plane's own CPU per exchange, without sockets: one wrk-style GET in, one nginx-style
response back, through the real DownstreamProtocol, Router, Service, pool and UpstreamProtocol on
fake transports (tests/http/harness.py). Syscalls and the event loop are excluded, so this is the
part of compare.py's cpu_us/req that our Python (and Cython) code costs.

    python bench/dataplane_loop.py [--n 200000] [--profile] [--metrics] [--access-log PATH] [--tracing] [--cpu]
                                   [--traffic bare|realistic] [--runs 5]

--traffic realistic: compare.py's realistic exchange (the 16 request fields of a browser-driven API
call; the upstream's 15 response fields) instead of wrk's bare GET and nginx's 5 fields.
For a figure that a busy machine does not move, count instructions instead of time (the
difference of two run lengths cancels start-up; bench/results/headers.md):
    PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/dataplane_loop.py --runs 1 --n 500
    PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/dataplane_loop.py --runs 1 --n 2500

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
# compare.py --traffic realistic: its request fields, and upstream-nginx-realistic.conf's answer.
REALISTIC_FIELDS = [
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    b"Accept: application/json, text/plain, */*",
    b"Accept-Language: en-US,en;q=0.9,de;q=0.8",
    b"Accept-Encoding: gzip, deflate, br",
    b"Cookie: session=8f14e45fceea167a5a36dedd4bea2543; _ga=GA1.2.1234567890.1700000000; theme=dark; consent=yes",
    b"Referer: https://app.example.com/dashboard/projects/42",
    b"Origin: https://app.example.com",
    b"Sec-Fetch-Dest: empty",
    b"Sec-Fetch-Mode: cors",
    b"Sec-Fetch-Site: same-site",
    b'Sec-Ch-Ua: "Chromium";v="120", "Not?A_Brand";v="8"',
    b"Sec-Ch-Ua-Mobile: ?0",
    b'Sec-Ch-Ua-Platform: "Linux"',
    b"X-Client-Version: web-2026.11.3",
    b"Cache-Control: no-cache",
    b"Pragma: no-cache",
]
REALISTIC_REQUEST = REQUEST[:-2] + b"".join(f + b"\r\n" for f in REALISTIC_FIELDS) + b"\r\n"
REALISTIC_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 06:45:36 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
    b"Cache-Control: no-store, max-age=0\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
    b"Strict-Transport-Security: max-age=31536000; includeSubDomains\r\nVary: Origin, Accept-Encoding\r\n"
    b"Access-Control-Allow-Origin: https://app.example.com\r\nAccess-Control-Allow-Credentials: true\r\n"
    b"Set-Cookie: session=8f14e45fceea167a5a36dedd4bea2543; Path=/; HttpOnly; Secure; SameSite=Lax\r\n"
    b"X-Request-Id: 7b3f1c2e-9a4d-4e21-8f6a-2c1d9e0b5a7f\r\n"
    b'ETag: "33a64df551425fcc55e4d42a148795d9f25f89d4"\r\n\r\n%s' % (len(BODY), BODY))


def run(n: int, metrics: bool = False, access_log: str | None = None, tracing: bool = False,
        cpu: bool = False, traffic: str = "bare") -> float:
    request, response = (REALISTIC_REQUEST, REALISTIC_RESPONSE) if traffic == "realistic" else (REQUEST, RESPONSE)
    h = Harness(root=True)
    if metrics or access_log or tracing:
        from gateway.observability.metrics import build_recorder

        h.worker.runtime.metrics = build_recorder(h.router.routes, [h.service], None, access_log or "off",
                                                  h.loop, tracing)
    h.feed(request)          # first exchange opens the (fake) upstream connection
    h.respond(response)
    up = h.up()
    feed, respond = h.proto.data_received, up.data_received
    down_written, up_written = h.down.written, up.transport.written  # type: ignore[union-attr]
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(n):
        feed(request)
        respond(response)
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
    ap.add_argument("--traffic", choices=["bare", "realistic"], default="bare")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if a.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(run, a.n, a.metrics, a.access_log, a.tracing, a.cpu, a.traffic)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    runs = sorted(run(a.n, a.metrics, a.access_log, a.tracing, a.cpu, a.traffic) for _ in range(a.runs))
    print(f"data plane, one exchange (no syscalls, {a.traffic}): median {runs[len(runs) // 2]:.2f} us"
          f"  (min {runs[0]:.2f}, max {runs[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
