"""Services and their targets; the round-robin pick.

A Target is one upstream address. Its `id` ("host:port") is stable across reloads, so anything
keyed by it (pools today; breaker and health state later) carries over when a reload names the same
upstream again. Issue 3's balancers plug in behind the same `Service.pick(ctx)`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.model import TargetConfig
    from ..pipeline.context import RequestContext


class Target:
    __slots__ = ("id", "url", "host", "port", "weight", "version", "host_header", "pool", "available", "admit")

    def __init__(
        self,
        host: str,
        port: int,
        pool: Any = None,
        url: str | None = None,
        weight: int = 1,
        version: str | None = None,
    ) -> None:
        bracketed = f"[{host}]" if ":" in host else host   # IPv6 literals need brackets in ids/Host
        self.id = f"{bracketed}:{port}"
        self.url = url if url is not None else f"http://{self.id}"
        self.host = host
        self.port = port
        self.weight = weight
        self.version = version
        # The Host sent upstream (nginx/Kong default, preserve_host off). Port 80 is left out, as
        # nginx's $proxy_host does: "host" and "host:80" are the same authority (RFC 9110 §4.2.1).
        self.host_header = (bracketed if port == 80 else self.id).encode("ascii")
        self.pool = pool           # gateway.http.pool.UpstreamPool, shared by every target of this (host, port)
        self.available = True      # health checks and breakers (later) clear it; pick() skips it
        # None, or admit(ctx) -> bool asked last, for the candidate pick() is about to return: a
        # False skips it for this request (a breaker that is open, or half-open with its probes
        # taken, answers from shared memory; it may note a ticket on ctx for record()).
        self.admit: Any = None

    @classmethod
    def from_config(cls, tc: TargetConfig, pool: Any) -> Target:
        return cls(tc.host, tc.port, pool, url=tc.url, weight=tc.weight, version=tc.version)

    def __repr__(self) -> str:
        return f"Target({self.id}{'' if self.available else ', unavailable'})"


class Service:
    """A named group of targets; `pick` rotates over the available ones."""

    __slots__ = ("name", "targets", "_next", "observed", "observers")

    def __init__(self, name: str, targets: list[Target]) -> None:
        self.name = name
        self.targets = targets
        self._next = 0
        # True when something must see each upstream attempt's outcome (passive health, breakers,
        # least_conn, latency EWMA): the data plane then calls record() once per attempt.
        self.observed = False
        # Who reads the outcomes: each is called observer(ctx, target, kind) by record(), in order
        # (breakers.py adds one per service with [services.breaker]; set `observed` with it).
        self.observers: tuple[Any, ...] = ()

    def record(self, ctx: RequestContext, target: Target, kind: str | None) -> None:
        """One upstream attempt on `target` ended (called by the data plane when `observed`).

        kind: None for a complete response (ctx.status holds its status), "connect", "timeout",
        "reset" or "protocol" for a failure before or during the response, "aborted" when the
        gateway gave the attempt up (the client left, or a local reply cut the request body).
        ctx.upstream_start/upstream_end (loop.time()) bound the attempt. Must not block."""
        for observe in self.observers:
            observe(ctx, target, kind)

    def pick(self, ctx: RequestContext | None = None) -> Target | None:
        """Next available target in rotation, or None when none is available (→ 503).

        One index per service per worker: plain rotation with no lock, because a worker is one
        thread. The common case (the next target is available) is one list index and one compare.
        """
        targets = self.targets
        n = len(targets)
        if n == 1:
            # A single target (most services): the loop below, unrolled (its range iterator is
            # most of this method's cost per request). Same result and the same _next.
            t = targets[0]
            if t.available and (t.admit is None or t.admit(ctx)):
                self._next = 0
                return t
            return None
        if n == 0:
            return None
        i = self._next
        if i >= n:          # targets may shrink (dynamic registration, later)
            i = 0
        for _ in range(n):
            t = targets[i]
            i += 1
            if i == n:
                i = 0
            if t.available and (t.admit is None or t.admit(ctx)):
                self._next = i
                return t
        return None

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.targets!r})"
