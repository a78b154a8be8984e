#!/usr/bin/env python3
"""JWT costs on one core: the auth filter's cached path per request, and uncached HS256 / RS256
verifications per second (bench/results/security.md).

Usage: python bench/security_jwt.py [--seconds 2]

- cached: AuthFilter.access() on a token already verified (the common case: a client repeats its
  token until it expires), minus the same loop without the filter call (the harness).
- uncached: JwtChecker.verify() on distinct tokens (the cache bypassed), i.e. parse + signature +
  claims; HS256 with a 32-byte secret, RS256 with a 2048-bit key.
Runs in one thread: the figures are per core. Report them beside the machine's load.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_second(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(100):
            fn()
        n += 100
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.config.env import load_settings
    from gateway.pipeline.context import RequestContext
    from gateway.security.auth_filter import AuthFilter
    from gateway.security.context import SecurityContext, build_checker

    secret = "bench-secret-0123456789abcdef0123456789abcdef"
    settings = load_settings({"GATEWAY_JWT_SECRET": secret, "GATEWAY_AUDIT_LOG": "off"})
    sec = SecurityContext(settings)
    f = AuthFilter("bench", ("jwt",), ("bench:read",), sec)
    claims = {"sub": "bench-user", "org": "bench", "scope": "bench:read", "exp": int(time.time()) + 3600}
    tok = jwt.encode(claims, secret, algorithm="HS256").encode()
    headers = [(b"host", b"127.0.0.1:8090"), (b"user-agent", b"wrk"), (b"authorization", b"Bearer " + tok)]
    ctx = RequestContext()

    def with_filter() -> None:
        ctx.headers = headers
        ctx.upstream_headers = []
        f.access(ctx)

    def harness() -> None:
        ctx.headers = headers
        ctx.upstream_headers = []

    with_filter()
    assert ctx.consumer_id == "bench-user"
    full = min(1e6 / per_second(with_filter, a.seconds) for _ in range(3))
    base = min(1e6 / per_second(harness, a.seconds) for _ in range(3))
    print(f"cached JWT validation: {full - base:.2f} us/request (filter call {full:.2f} us, harness {base:.2f} us)")

    hs, _ = build_checker(settings)
    hs_tokens = [jwt.encode({**claims, "jti": str(i)}, secret, algorithm="HS256").encode() for i in range(20000)]
    it = iter(hs_tokens * 100)
    now = time.time()
    print(f"uncached HS256 verifications: {per_second(lambda: hs.verify(next(it), now), a.seconds):,.0f} /s per core")

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = "/tmp/security-bench-rsa.pem"
    with open(path, "wb") as fh:
        fh.write(pem)
    rs, _ = build_checker(load_settings({"GATEWAY_JWT_PUBLIC_KEY": path}))
    rs_tokens = [jwt.encode({**claims, "jti": str(i)}, key, algorithm="RS256").encode() for i in range(2000)]
    it2 = iter(rs_tokens * 1000)
    print(f"uncached RS256 verifications: {per_second(lambda: rs.verify(next(it2), now), a.seconds):,.0f} /s per core")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
