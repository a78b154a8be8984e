"""Services and their targets; the round-robin pick, passive health, and the retry pick.

A Target is one upstream address. Its `id` ("host:port") is stable across reloads, so anything
keyed by it (pools today; breaker and health state) carries over when a reload names the same
upstream again. The other balancers (gateway/discovery/balancers.py) are subclasses of Service
that override `pick`; `make_service` chooses one at config load.

Availability of a target is `available`: True unless active health checks (read from node memory
by gateway/discovery/health.py) or passive health (record() below) took it out. Subclasses keep
a `_fast` picker whose availability array mirrors it (`_availability_changed`).

Passive health (a service without a breaker): PASSIVE_FAILURES consecutive connect errors, resets
or timeouts on a target take it out of this worker's rotation for PASSIVE_DOWN seconds; then it
is let back in on trial: its next failure takes it out again at once (for twice as long, up to
PASSIVE_MAX_DOWN), a success clears the count. Per worker, not node-wide: each worker learns from its own traffic (a dead target is taken
out by every worker after its own 5 failures; the active checker, when configured, takes it out
node-wide).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .service_core import ServiceCore, TargetCore

if TYPE_CHECKING:
    from ..config.model import TargetConfig
    from ..pipeline.context import RequestContext

PASSIVE_FAILURES = 5         # consecutive connect errors / resets / timeouts (SPEC §3)
PASSIVE_DOWN = 5.0           # seconds out of rotation before one trial
PASSIVE_MAX_DOWN = 60.0      # each failed trial doubles the time out, up to this
PASSIVE_KINDS = frozenset(("connect", "timeout", "reset"))
ERROR_KINDS = ("connect", "timeout", "reset", "protocol")     # gateway_upstream_errors_total{kind}
_ERROR_INDEX = {k: i for i, k in enumerate(ERROR_KINDS)}


class Target(TargetCore):
    # pool, admit, host_header, available and passive_fails are TargetCore's C fields (the data
    # plane reads them per request; service_core.pxd).
    __slots__ = ("id", "url", "host", "port", "weight", "version", "slot", "active_ok", "passive_until",
                 "passive_trips", "source", "reg_id", "metadata", "breaker", "health", "errors")

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
        # The Host sent upstream (nginx/Kong default, preserve_host off). The scheme's default port
        # (80, or 443 for https://) is left out, as nginx's $proxy_host does: "host" and "host:80"
        # are the same authority (RFC 9110 §4.2.1).
        default_port = 443 if self.url.startswith("https:") else 80
        self.host_header = (bracketed if port == default_port else self.id).encode("ascii")
        self.pool = pool           # gateway.http.pool.UpstreamPool, shared by every target of this (host, port)
        self.available = True      # active and passive health; pick() skips it when False
        # None, or admit(ctx) -> bool asked last, for the candidate pick() is about to return: a
        # False skips it for this request (a breaker that is open, or half-open with its probes
        # taken, answers from shared memory; it may note a ticket on ctx for record()).
        self.admit: Any = None
        self.slot = -1             # index in its service's targets (and picker)
        self.active_ok = True      # the node's health checker's verdict (health.py)
        self.passive_fails = 0     # consecutive failures seen by this worker
        self.passive_until = 0.0   # loop time until which passive health keeps it out (0: not out)
        self.passive_trips = 0     # exclusions since its last success (the next one lasts 5 s x 2^trips)
        self.source = "config"     # or "registered" (admin API)
        self.reg_id: str | None = None
        self.metadata: Any = None
        self.breaker: Any = None   # the breaker helper's object, for GET /services (None: no breaker)
        self.health: Any = None    # its node-memory health record (health.HealthRecord), when checked
        self.errors: Any = None    # CounterArray in node memory: upstream errors by kind (ERROR_KINDS)

    @classmethod
    def from_config(cls, tc: TargetConfig, pool: Any) -> Target:
        return cls(tc.host, tc.port, pool, url=tc.url, weight=tc.weight, version=tc.version)

    def __repr__(self) -> str:
        return f"Target({self.id}{'' if self.available else ', unavailable'})"


class Service(ServiceCore):
    """A named group of targets; `pick` rotates over the available ones (round_robin)."""

    # Every balancer's fields are here (balancers.py's subclasses add none), so a round_robin
    # service can switch class in place when registered weights make it weighted. targets,
    # observers and observed are ServiceCore's C fields (read per request; service_core.pxd).
    __slots__ = ("name", "balancer", "passive", "_picker", "_key", "_maglev")

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
        self.balancer = "round_robin"
        self.passive = False       # passive health on (make_service: unless a breaker replaces it)
        self._picker: Any = None
        for i, t in enumerate(targets):
            t.slot = i
        self._rebuild()

    # --- target list -----------------------------------------------------------------------------
    def set_targets(self, targets: list[Target]) -> None:
        """Swap the target list (dynamic registration); the balancer is rebuilt for it. Runs on the
        loop between requests, so a pick never sees half of it."""
        for i, t in enumerate(targets):
            t.slot = i
        self.targets = targets
        self._rebuild()

    def _rebuild(self) -> None:
        """Build the balancer's state for self.targets (subclasses)."""

    def _availability_changed(self, target: Target) -> None:
        """target.available changed (subclasses mirror it into their picker)."""

    def set_active(self, target: Target, ok: bool) -> None:
        """The node's checker says the target is (un)healthy. A transition to healthy also ends a
        passive exclusion (the checker just saw it answer)."""
        if ok == target.active_ok:
            return
        target.active_ok = ok
        if ok:
            target.passive_fails = 0
            target.passive_until = 0.0
            target.passive_trips = 0
        self._update(target)

    def _update(self, target: Target) -> None:
        avail = target.active_ok and target.passive_until == 0.0
        if avail != target.available:
            target.available = avail
            self._availability_changed(target)

    def expire_passive(self, now: float) -> None:
        """Called by the worker's health tick: targets whose passive exclusion ended rejoin on
        trial (one more failure takes them out again)."""
        for t in self.targets:
            if t.passive_until and now >= t.passive_until:
                t.passive_until = 0.0
                t.passive_fails = PASSIVE_FAILURES - 1
                self._update(t)

    # --- outcomes --------------------------------------------------------------------------------
    # record(ctx, target, kind) is ServiceCore's (service_core.pyx): the observers, then a
    # success's reset of passive health here in C, a failure's bookkeeping below.
    def _record_failure(self, ctx: RequestContext, target: Target, kind: str) -> None:
        """record()'s rest for a failed or aborted attempt: its error counter, passive health."""
        errors = target.errors
        if errors is not None:
            i = _ERROR_INDEX.get(kind)
            if i is not None:
                errors.inc(i)
        if self.passive and kind in PASSIVE_KINDS:
            self._passive_failure(target, ctx.upstream_end)

    def _passive_failure(self, target: Target, now: float) -> None:
        target.passive_fails += 1
        if target.passive_fails >= PASSIVE_FAILURES and target.passive_until == 0.0:
            # 5 s, then 10, 20... up to 60 s while its trials keep failing: a dead target costs one
            # request per worker per minute at most, and is never out for longer than that.
            target.passive_until = (now or 1.0) + min(PASSIVE_MAX_DOWN, PASSIVE_DOWN * 2.0 ** min(target.passive_trips, 8))
            target.passive_trips += 1
            self._update(target)
            from .health import passive_down  # (events and the log: off the common path)

            passive_down(self, target)

    # --- picks -----------------------------------------------------------------------------------
    # pick(ctx) is ServiceCore's (service_core.pyx): the round robin, compiled.

    def pick_retry(self, ctx: RequestContext | None, failed: Target | None) -> Target | None:
        """Another usable target for a retry: never `failed`, never an unavailable one, and one
        whose admit() agrees; None when there is none. The balancer's own choice among the rest
        (the next on the ring for a hash, the next in rotation otherwise)."""
        if failed is None or failed.slot < 0 or failed.slot >= len(self.targets) or \
                self.targets[failed.slot] is not failed or not failed.available:
            return self.pick(ctx)
        failed.available = False
        self._availability_changed(failed)
        try:
            return self.pick(ctx)
        finally:
            failed.available = True
            self._availability_changed(failed)

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.targets!r})"
