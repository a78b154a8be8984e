#!/usr/bin/env python3
"""The auth filter inside the data plane, without sockets (tests/http/harness.py, as
bench/dataplane_loop.py): one GET with a Bearer token per exchange, through a route with no
filters, a no-op filter, a filter that only adds the four identity headers, and the JWT AuthFilter
(cached token, scope check). Min of 5 runs each; the differences are what a filter chain, the
headers and the JWT check cost.

    python bench/security_dataplane.py [--n 50000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jwt  # noqa: E402

from bench.dataplane_loop import RESPONSE  # noqa: E402
from gateway.config.env import load_settings  # noqa: E402
from gateway.pipeline.chain import EMPTY_CHAIN, FilterChain  # noqa: E402
from gateway.pipeline.filter import Filter  # noqa: E402
from gateway.security.auth_filter import AuthFilter  # noqa: E402
from gateway.security.context import SecurityContext  # noqa: E402
from tests.http.harness import Harness  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
TOKEN = jwt.encode({"sub": "bench-user", "org": "bench", "scope": "bench:read", "exp": int(time.time()) + 3600},
                   SECRET, algorithm="HS256")
REQUEST = b"GET /api/users/42 HTTP/1.1\r\nHost: 127.0.0.1:8090\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
HEADERS = [(b"X-Consumer-Id", b"bench-user"), (b"X-Auth-Method", b"jwt"), (b"X-Consumer-Org", b"bench"),
           (b"X-Consumer-Scopes", b"bench:read")]


class Noop(Filter):
    def access(self, ctx):  # type: ignore[no-untyped-def]
        return None


class IdentityHeaders(Filter):
    def access(self, ctx):  # type: ignore[no-untyped-def]
        ctx.upstream_headers = ctx.upstream_headers + HEADERS


def run(chain: FilterChain, n: int) -> float:
    h = Harness(chain=chain, root=True)
    h.feed(REQUEST)
    h.respond(RESPONSE)
    up = h.up()
    feed, respond = h.proto.data_received, up.data_received
    dw, uw = h.down.written, up.transport.written  # type: ignore[union-attr]
    t0 = time.perf_counter()
    for _ in range(n):
        feed(REQUEST)
        respond(RESPONSE)
        dw.clear()
        uw.clear()
    dt = time.perf_counter() - t0
    assert len(h.pool.conns) == 1
    h.close()
    return dt / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    a = ap.parse_args()
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    chains = {"plain": EMPTY_CHAIN, "noop filter": FilterChain([Noop()]),
              "identity headers": FilterChain([IdentityHeaders()]),
              "jwt": FilterChain([AuthFilter("root", ("jwt",), ("bench:read",), sec)])}
    res: dict[str, list[float]] = {k: [] for k in chains}
    for _ in range(5):
        for k, c in chains.items():
            res[k].append(run(c, a.n))
    best = {k: min(v) for k, v in res.items()}
    for k, v in best.items():
        print(f"{k:18} {v:6.2f} us/exchange  (+{v - best['plain']:.2f} over plain)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
