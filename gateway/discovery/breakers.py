"""Circuit breakers per target, from `[services.breaker]` (SPEC §3, issue 9).

One `gateway._fast.breaker.CircuitBreaker` per target of a service with a breaker table, laid in
node memory under `breaker_name(service, target, policy)`: every worker, and the control plane's
process (breaker_control.py: admin, metrics, events, propagation between instances), maps the
same bytes, so a circuit is one circuit per node, its half-open probes counted node-wide.

The two seams of the service layer carry it:

- `Target.admit` = an `Admission`: pick() asks it last for the candidate it is about to return;
  its `allow(now)` is lock-free while the circuit is closed. The ticket it returns is noted on
  ctx.breaker_ticket (-1 when it refused, which is how the route's 503 says circuit-open).
- `Service.observers` gets a `BreakerObserver`: the data plane reports each attempt's outcome once
  (Service.record); connect errors, timeouts, resets, garbage and the failure statuses (default:
  every 5xx) count as failures, the result is recorded with the attempt's ticket (a slow call from
  an earlier epoch moves nothing), and an abandoned attempt hands its probe slot back.

Every transition bumps one node-wide counter (TRANSITIONS_NAME), so the control plane's watcher
looks at the breakers only when one of them moved.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from .._fast.breaker import SHM_SIZE, CircuitBreaker
from .._fast.counters import Counter
from .admission import Admission, BreakerObserver  # compiled: they run on every request

__all__ = ["Admission", "BreakerObserver", "breaker_name", "failure_table", "install", "policy"]

if TYPE_CHECKING:
    from ..config.model import BreakerConfig, GatewayConfig, ServiceConfig
    from ..state.node import Placer
    from .service import Service, Target

KIND = "breaker"
TRANSITIONS_NAME = "breakers/transitions"   # node-wide count of every circuit transition
# open_timeout doubles on every repeated trip up to this multiple of itself (SPEC §3 names no key
# for the cap: 8x keeps a default 60 s circuit probing at least every 8 minutes).
MAX_OPEN_FACTOR = 8.0

def policy(bc: BreakerConfig) -> dict[str, Any]:
    """CircuitBreaker keyword arguments for a [services.breaker] table."""
    return {
        "failure_threshold": bc.failure_threshold,
        "error_rate": bc.error_rate,
        "min_requests": bc.min_requests,
        "window": bc.window,
        "open_timeout": bc.open_timeout,
        "max_open_timeout": bc.open_timeout * MAX_OPEN_FACTOR,
        "half_open_requests": bc.half_open_requests,
        "success_threshold": bc.success_threshold,
    }


def breaker_name(service: str, target_id: str, bc: BreakerConfig) -> str:
    """`breaker/<service>/<target id>/<policy tag>`. The tag (8 hex digits of the policy) is part
    of the name because the bytes hold the policy they were made with: a reload that changes the
    policy starts a fresh circuit under a new name (the old one is released with the old runtime)
    instead of being refused, and a reload that keeps it keeps the circuit's state."""
    raw = repr(sorted(policy(bc).items())).encode()
    return f"breaker/{service}/{target_id}/{hashlib.sha256(raw).hexdigest()[:8]}"


def failure_table(bc: BreakerConfig) -> bytes:
    """One byte per status 0..599: 1 when a complete response with it counts as a failure."""
    failing = set(range(500, 600)) if bc.failure_statuses is None else set(bc.failure_statuses)
    return bytes(1 if s in failing else 0 for s in range(600))


def transitions_counter(placer: Placer | None) -> Counter:
    if placer is None:
        return Counter()
    return Counter(placer.place(TRANSITIONS_NAME, Counter.NBYTES, kind="counter"))


def make_breaker(sc: ServiceConfig, target_id: str, placer: Placer | None,
                 on_transition: Any = None) -> CircuitBreaker:
    """The target's breaker: in node memory when there is a placer, else private (tests)."""
    assert sc.breaker is not None
    kw = policy(sc.breaker)
    if placer is None:
        return CircuitBreaker(**kw, on_transition=on_transition)
    view = placer.place(breaker_name(sc.name, target_id, sc.breaker), SHM_SIZE, kind=KIND)
    return CircuitBreaker(**kw, on_transition=on_transition, buffer=view)


def install(services: dict[str, Service], config: GatewayConfig, placer: Placer | None) -> None:
    """Give every target of a service with [services.breaker] its breaker (build_runtime)."""
    counter: Counter | None = None
    for sc in config.services:
        if sc.breaker is None:
            continue
        if counter is None:
            counter = transitions_counter(placer)
        bump = _bumper(counter)
        service = services[sc.name]
        table: dict[Target, CircuitBreaker] = {}
        for t in service.targets:
            b = make_breaker(sc, t.id, placer, bump)
            t.admit = Admission(b)
            table[t] = b
        service.observers = (*service.observers, BreakerObserver(table, failure_table(sc.breaker)))
        service.observed = True


def _bumper(counter: Counter) -> Any:
    inc = counter.inc

    def on_transition(old: int, new: int, now: float) -> None:
        inc()
    return on_transition
