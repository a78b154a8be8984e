"""Build the compiled hot path in gateway/_fast.

The extension list is explicit (as asyncpg does it): a new .pyx must be added here, so a module
can never silently go missing from a build.

Switches (environment variables):
  GATEWAY_CYTHON_ANNOTATE=1   write gateway/_fast/*.html annotation reports (cython -a)
  GATEWAY_CYTHON_DEBUG=1      -O0 -g, Cython line tracing, bounds/wraparound checks on
  GATEWAY_BUILD_ONLY=a,b      build only these modules (for working on one primitive)
"""
from __future__ import annotations

import os

from setuptools import Extension, setup

FAST_MODULES = [
    "token_bucket",   # token bucket limiter
    "sliding_window", # weighted two-window counter and exact sliding log
    "keyed_table",    # keyed limiter table: millions of keys, bounded memory, idle expiry
    "shm",            # shared-memory (mmap) segments for tables and breakers across workers
    "breaker",        # circuit breaker state machine
    "hashing",        # xxHash64, ketama ring, Maglev table
    "balancer",       # smooth WRR, least-connections, P2C with EWMA
    "counters",       # lock-free counters and fixed-bucket latency histograms
    "wire",           # HTTP head work on the data path: header filtering and serialization
]

DEBUG = os.environ.get("GATEWAY_CYTHON_DEBUG") == "1"
ANNOTATE = os.environ.get("GATEWAY_CYTHON_ANNOTATE") == "1"
ONLY = {m for m in os.environ.get("GATEWAY_BUILD_ONLY", "").split(",") if m}


def extensions() -> list:
    from Cython.Build import cythonize

    unknown = ONLY - set(FAST_MODULES)
    if unknown:
        raise SystemExit(f"GATEWAY_BUILD_ONLY names unknown modules: {sorted(unknown)}")
    names = [m for m in FAST_MODULES if not ONLY or m in ONLY]
    # -ffp-contract=off: no fused multiply-add, so the limiter arithmetic is bit-identical to the
    # plain-Python reference models on every architecture (aarch64 GCC fuses by default).
    cflags = (["-O0", "-g"] if DEBUG else ["-O2"]) + ["-ffp-contract=off"]
    macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
    exts = [
        Extension(f"gateway._fast.{m}", [f"gateway/_fast/{m}.pyx"],
                  extra_compile_args=cflags, define_macros=macros)
        for m in names
    ]
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "cdivision": True,
        "initializedcheck": DEBUG,
        "linetrace": DEBUG,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, annotate=ANNOTATE,
                     include_path=["."])


setup(ext_modules=extensions())
