"""Build the compiled hot path: gateway/_fast (pure byte/number work) and the data-plane protocols.

The extension list is explicit (as asyncpg does it): a new .pyx must be added here, so a module
can never silently go missing from a build.

Switches (environment variables):
  GATEWAY_CYTHON_ANNOTATE=1   write the *.html annotation reports next to each .pyx (cython -a)
  GATEWAY_CYTHON_DEBUG=1      -O0 -g, Cython line tracing, bounds/wraparound checks on
  GATEWAY_BUILD_ONLY=a,b      build only these modules (for working on one primitive)
  GATEWAY_BUILD_JOBS=N        parallel Cython and C compilers (default: every CPU). `pip install` and
                              `python -m build` run build_ext without -j: this is their parallelism
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
    "heavy_hitters",  # space-saving sketch: the most rate-limited keys, node-wide (/ratelimit/top)
]

# The data plane's protocols, compiled as cdef classes that cimport each other (asyncpg's layout).
# They do I/O (transports, tasks), which DESIGN.md keeps out of gateway/_fast, so they stay in
# gateway/http (and RequestContext in gateway/pipeline) under their original module names.
# short name (for GATEWAY_BUILD_ONLY) -> dotted module name
DATAPLANE_MODULES = {
    "context": "gateway.pipeline.context",    # RequestContext: fields read as C struct members
    "runtime_core": "gateway.runtime_core",   # Worker/Runtime fields the protocols read per request
    "service_core": "gateway.discovery.service_core",  # Target/Service fields read per request
    "chain": "gateway.pipeline.chain",        # FilterChain: the route's filters, called per phase from C
    "routing": "gateway.routing",             # Router: (method, host, path) -> Route, per request
    "flow": "gateway.http.flow",              # ReadGate, Ticker: deadlines and read pauses
    "pool": "gateway.http.pool",              # UpstreamPool: acquire/release per request
    "outlet": "gateway.http.outlet",          # Outlet: a connection's writes, to its socket when nothing is queued
    "llstate": "gateway.http.llstate",        # httptools' getters read from llhttp's state in C
    "llhooks": "gateway.http.llhooks",        # llhttp's callbacks and execute called from C
    "head": "gateway.http.head",              # HeaderView, HeadTracker: head fields as spans, scanned in C
    "plain_response": "gateway.http.plain_response",  # a plain upstream response head, read without llhttp
    "request": "gateway.http.request",        # RequestBuilder: head verdicts, the upstream head
    "tunnel": "gateway.http.tunnel",          # Tunnel: bytes both ways after a 101 (WebSocket)
    "upstream": "gateway.http.upstream",      # UpstreamProtocol: response parsing, re-framing
    "chunked": "gateway.http.chunked",        # ChunkDecoder: chunked request bodies, bounded
    "reader": "gateway.http.reader",          # _ReaderBase: connection state, reads sliced into the parser
    "exchange": "gateway.http.exchange",      # _ExchangeBase: routing, the upstream exchange, second attempts
    "downstream": "gateway.http.downstream",  # DownstreamProtocol: connection life, parser callbacks, timers
    "recorder": "gateway.observability.recorder",  # request metrics: one call per finished exchange
    "admission": "gateway.discovery.admission",  # breaker admission and outcomes, per request
    "ratelimit_fast": "gateway.filters.ratelimit_fast",  # a rate-limited route's in-memory checks, compiled
    "auth_fast": "gateway.security.auth_fast",  # a cached JWT's identity on a request, compiled
}

DEBUG = os.environ.get("GATEWAY_CYTHON_DEBUG") == "1"
ANNOTATE = os.environ.get("GATEWAY_CYTHON_ANNOTATE") == "1"
ONLY = {m for m in os.environ.get("GATEWAY_BUILD_ONLY", "").split(",") if m}
JOBS = int(os.environ.get("GATEWAY_BUILD_JOBS") or os.cpu_count() or 1)


def extensions() -> list:
    from Cython.Build import cythonize

    unknown = ONLY - set(FAST_MODULES) - set(DATAPLANE_MODULES)
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
    exts += [
        Extension(mod, [mod.replace(".", "/") + ".pyx"], extra_compile_args=cflags, define_macros=macros)
        for short, mod in DATAPLANE_MODULES.items() if not ONLY or short in ONLY
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
    # force=ANNOTATE: an annotation run regenerates the .html even when the .c is up to date.
    return cythonize(exts, compiler_directives=directives, annotate=ANNOTATE, force=ANNOTATE,
                     include_path=["."], nthreads=JOBS if JOBS > 1 else 0)


# build_ext's own -j still wins when given (`setup.py build_ext --inplace -j 2`).
setup(ext_modules=extensions(), options={"build_ext": {"parallel": JOBS}})
