#!/usr/bin/env python3
"""The policy path's in-process cost per exchange (bench/results/policy-cost.md): one GET with a
Bearer token through the real data plane on fake transports (tests/http/harness.py, as
bench/security_dataplane.py), for a route with no filters and routes with the policies of the
product's full profile.

    python bench/policy_dataplane.py                 # process time, min of --rounds
    python bench/policy_dataplane.py --instructions  # instructions (valgrind), deterministic

--instructions runs each chain under `valgrind --tool=cachegrind` for 1,000 and 11,000
exchanges and prints the difference / 10,000: on a shared machine, where time per exchange moves
by tens of percent between runs, instruction counts still compare two builds.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.dataplane_loop import RESPONSE  # noqa: E402
from bench.security_dataplane import REQUEST, SECRET, IdentityHeaders, Noop  # noqa: E402
from gateway.config.env import load_settings  # noqa: E402
from gateway.config.model import RateLimitConfig  # noqa: E402
from gateway.filters.ratelimit import build_filter  # noqa: E402
from gateway.pipeline.chain import EMPTY_CHAIN, FilterChain  # noqa: E402
from gateway.security.auth_filter import AuthFilter  # noqa: E402
from gateway.security.context import SecurityContext  # noqa: E402
from tests.http.harness import Harness  # noqa: E402

NAMES = ("plain", "noop", "idhdrs", "jwt", "rl-ip", "jwt+rl-user")


def chains() -> dict[str, FilterChain]:
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))

    def auth() -> AuthFilter:
        return AuthFilter("root", ("jwt",), ("bench:read",), sec)

    def limit(key: str) -> object:
        return build_filter("root", (RateLimitConfig(key=key, limit=100_000_000, window=1.0),), None, 1000, None)

    return {"plain": EMPTY_CHAIN, "noop": FilterChain([Noop()]), "idhdrs": FilterChain([IdentityHeaders()]),
            "jwt": FilterChain([auth()]), "rl-ip": FilterChain([limit("ip")]),  # type: ignore[list-item]
            "jwt+rl-user": FilterChain([auth(), limit("user")])}  # type: ignore[list-item]


def run(chain: FilterChain, n: int) -> float:
    """Process-time microseconds per exchange."""
    h = Harness(chain=chain, root=True)
    h.feed(REQUEST)
    h.respond(RESPONSE)
    up = h.up()
    feed, respond = h.proto.data_received, up.data_received
    dw, uw = h.down.written, up.transport.written  # type: ignore[union-attr]
    t0 = time.process_time()
    for _ in range(n):
        feed(REQUEST)
        respond(RESPONSE)
        dw.clear()
        uw.clear()
    dt = time.process_time() - t0
    h.close()
    return dt / n * 1e6


def instructions(name: str, n: int) -> int:
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, os.path.abspath(__file__), "--once", name, "--n", str(n)],
                         capture_output=True, text=True, check=True).stderr
    m = re.search(r"I\s+refs:\s+([\d,]+)", out)
    assert m is not None, out[-2000:]
    return int(m.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--once", choices=NAMES, help="(internal) run one chain n times, for valgrind")
    ap.add_argument("names", nargs="*", default=list(NAMES))
    a = ap.parse_args()
    if a.once:
        c = chains()[a.once]
        run(c, 200)
        run(c, a.n)
        return 0
    if a.instructions:
        for name in a.names:
            per = (instructions(name, 11_000) - instructions(name, 1_000)) / 10_000
            print(f"{name:12} {per:8.0f} instructions/exchange", flush=True)
        return 0
    cs = chains()
    res: dict[str, list[float]] = {k: [] for k in a.names}
    for _ in range(a.rounds):
        for k in a.names:
            res[k].append(run(cs[k], a.n))
    base = min(res["plain"]) if "plain" in res else 0.0
    for k, v in res.items():
        print(f"{k:12} {min(v):6.2f} us/exchange  (+{min(v) - base:.2f} over plain)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
