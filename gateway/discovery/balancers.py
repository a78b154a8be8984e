"""The balancers of SPEC §3 as Service subclasses over the `_fast` pickers (ARCHITECTURE.md's map).

    round_robin      Service (plain rotation in Python: for the common one-target service that is
                     one index and one compare, cheaper than a call into any picker)
    weighted         SmoothWeightedRR(weights)          nginx's smooth weighted round robin
    least_conn       LeastConnections(n, weights)       in-flight counts of THIS worker
    p2c_ewma         P2CEwma(n)                         fed with upstream latency by record()
    ip_hash          Maglev(weights, names=urls)        keyed by ctx.client_ip (after trusted proxies)
    consistent_hash  HashRing(weights, names=urls)      keyed by hash_key (ip, header:, cookie:, claim:)

Targets are placed by URL (the names given to the hash tables), so every worker, every instance
and every reload agree on a key's target, and adding one target to N moves about 1/(N+1) keys.

Every pick keeps the two seams of service.py: an unavailable target is never returned, and
`admit(ctx)` is asked last for the candidate; a refusal takes the candidate out of the picker for
the rest of this pick and the picker is asked again, at most once per target. Availability is
mirrored into the picker when it changes (health, registration), never checked per request.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import reduce
from typing import Any

from .._fast.balancer import LeastConnections, P2CEwma, SmoothWeightedRR
from .._fast.hashing import HashRing, Maglev
from ..http.head import all_values, first_value
from .service import Service, Target

BALANCERS = ("round_robin", "weighted", "least_conn", "ip_hash", "consistent_hash", "p2c_ewma")
HASH_KEY_KINDS = ("ip", "header:", "cookie:", "claim:")
FAILURE_LATENCY = 1.0     # seconds a failed attempt counts as in p2c_ewma's score (at least)
_RING_POINTS = 1 << 22    # HashRing's cap on points (gateway/_fast/hashing.pyx MAX_POINTS)


class PickerService(Service):
    """A Service whose pick asks a `_fast` picker for an index. Subclasses set _make and _choose."""

    __slots__ = ()

    def _rebuild(self) -> None:
        self._picker = self._make()
        for t in self.targets:
            if not t.available:
                self._picker.set_available(t.slot, False)

    def _make(self) -> Any:
        raise NotImplementedError

    def _choose(self, ctx: Any) -> int:
        raise NotImplementedError

    def _availability_changed(self, target: Target) -> None:
        if 0 <= target.slot < len(self.targets) and self.targets[target.slot] is target:
            self._picker.set_available(target.slot, target.available)

    def _picked(self, target: Target) -> None:
        """The pick returns `target` (least_conn and p2c count it in flight)."""

    def pick(self, ctx: Any = None) -> Target | None:
        i = self._choose(ctx)
        if i < 0:
            return None
        t = self.targets[i]
        if t.admit is None or t.admit(ctx):
            self._picked(t)
            return t
        return self._pick_admitted(ctx, i)

    def _pick_admitted(self, ctx: Any, refused: int) -> Target | None:
        # Rare path (a breaker refused): refused candidates leave the picker for this pick only.
        picker = self._picker
        out: list[int] = [refused]
        picker.set_available(refused, False)
        try:
            for _ in range(len(self.targets) - 1):
                i = self._choose(ctx)
                if i < 0:
                    return None
                t = self.targets[i]
                if t.admit is None or t.admit(ctx):
                    self._picked(t)
                    return t
                out.append(i)
                picker.set_available(i, False)
            return None
        finally:
            for i in out:
                picker.set_available(i, self.targets[i].available)


class WeightedService(PickerService):
    __slots__ = ()

    def _make(self) -> Any:
        return SmoothWeightedRR([t.weight for t in self.targets])

    def _choose(self, ctx: Any) -> int:
        return self._picker.pick()


class LeastConnService(PickerService):
    """Fewest in-flight requests per weight. The counts are this worker's own (not node-wide):
    acquired when the pick returns a target, released when record() hears the attempt end."""

    __slots__ = ()

    def _make(self) -> Any:
        return LeastConnections(len(self.targets), [t.weight for t in self.targets])

    def _choose(self, ctx: Any) -> int:
        return self._picker.pick()

    def _picked(self, target: Target) -> None:
        self._picker.acquire(target.slot)

    def record(self, ctx: Any, target: Target, kind: str | None) -> None:
        if 0 <= target.slot < len(self.targets) and self.targets[target.slot] is target:
            self._picker.release(target.slot)    # (a target replaced by a rebuild: counts started anew)
        Service.record(self, ctx, target, kind)


class P2CService(PickerService):
    """Power of two choices over peak-EWMA latency x (in flight + 1), this worker's view."""

    __slots__ = ()

    def _make(self) -> Any:
        # Prior latency 0: a target never observed wins its comparisons until its first response
        # comes back (a small burst), instead of losing them all for good to targets observed
        # faster than the primitive's default prior (the observed cost decays, the prior does not).
        return P2CEwma(len(self.targets), 10.0, initial_latency=0.0)

    def _choose(self, ctx: Any) -> int:
        now = ctx.start if ctx is not None and ctx.start else time.monotonic()
        return self._picker.pick(now)

    def _picked(self, target: Target) -> None:
        self._picker.acquire(target.slot)

    def record(self, ctx: Any, target: Target, kind: str | None) -> None:
        if 0 <= target.slot < len(self.targets) and self.targets[target.slot] is target:
            p = self._picker
            p.release(target.slot)
            end = ctx.upstream_end
            latency = max(0.0, end - ctx.upstream_start)
            if kind is not None and kind != "aborted":
                latency = max(latency, FAILURE_LATENCY)   # a fast refusal must not look fast
            if kind != "aborted" and math.isfinite(latency) and end > 0:
                p.observe(target.slot, latency, end)
        Service.record(self, ctx, target, kind)


# --- hashing ---------------------------------------------------------------------------------------

KeyFn = Callable[[Any], "str | bytes | None"]


def _client_ip(ctx: Any) -> str | None:
    return (ctx.client_ip or None) if ctx is not None else None


def key_function(hash_key: str) -> KeyFn:
    """ctx → the hash key, or None when the request has none (then the pick is round robin).
    hash_key: "ip", "header:NAME", "cookie:NAME" or "claim:NAME" (validated by schema.py)."""
    if hash_key == "ip":
        return _client_ip
    kind, _, name = hash_key.partition(":")
    if kind == "header":
        lname = name.lower().encode("latin-1")

        def header(ctx: Any) -> bytes | None:
            if ctx is None:
                return None
            return first_value(ctx.headers, lname) or None
        return header
    if kind == "cookie":
        prefix = name.encode("latin-1") + b"="

        def cookie(ctx: Any) -> bytes | None:
            if ctx is None:
                return None
            for v in all_values(ctx.headers, b"cookie"):
                for part in v.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix):
                        return part[len(prefix):] or None
            return None
        return cookie
    if kind == "claim":
        # The identity the security filters put on the context: sub and org have fields of their
        # own; other claims are read from ctx.vars["claims"] when the JWT filter leaves them there.
        field = {"sub": "consumer_id", "org": "consumer_org"}.get(name)

        def claim(ctx: Any) -> str | None:
            if ctx is None:
                return None
            if field is not None:
                v = getattr(ctx, field, None)
                if v:
                    return str(v)
            claims = (ctx.vars or {}).get("claims") if ctx.vars is not None else None
            if isinstance(claims, dict):
                v = claims.get(name)
                if isinstance(v, str | int) and not isinstance(v, bool) and v != "":
                    return str(v)
            return None
        return claim
    raise ValueError(f"unknown hash_key {hash_key!r}")


def _scaled_weights(targets: list[Target]) -> list[int]:
    ws = [max(0, t.weight) for t in targets]
    g = reduce(math.gcd, ws, 0) or 1
    return [w // g for w in ws]


class HashService(PickerService):
    """ip_hash (Maglev) and consistent_hash (ketama ring): the key's target, the next one when it
    is unavailable or refused; a request without a key is served in rotation."""

    __slots__ = ()

    def __init__(self, name: str, targets: list[Target], key: KeyFn, maglev: bool) -> None:
        self._key = key
        self._maglev = maglev
        super().__init__(name, targets)

    def _make(self) -> Any:
        weights = _scaled_weights(self.targets)
        names = [t.url for t in self.targets]
        if self._maglev:
            return Maglev(weights, names=names)
        total = sum(weights) or 1
        vnodes = max(1, min(160, _RING_POINTS // total))
        return HashRing(weights, names=names, vnodes=vnodes)

    def _choose(self, ctx: Any) -> int:
        key = self._key(ctx)
        if key is None:
            t = self._rotate()
            return -1 if t is None else t.slot
        return self._picker.lookup(key)

    def _rotate(self) -> Target | None:
        # Rotation over the available targets the picker would take (no admit here: pick asks it).
        targets = self.targets
        n = len(targets)
        picker = self._picker
        i = self._next if self._next < n else 0
        for _ in range(n):
            t = targets[i]
            i = i + 1 if i + 1 < n else 0
            if picker.is_available(t.slot):
                self._next = i
                return t
        return None


def make_service(name: str, targets: list[Target], balancer: str = "round_robin",
                 hash_key: str | None = None, *, passive: bool = True) -> Service:
    """The Service for a config's `balancer` (schema.py has checked the name and hash_key).
    `passive`: passive health from proxied traffic (off when a breaker replaces it)."""
    if balancer == "round_robin" and all(t.weight == 1 for t in targets):
        s: Service = Service(name, targets)
    elif balancer in ("round_robin", "weighted"):
        # round_robin honours weights as nginx's does: it is the weighted rotation then.
        s = WeightedService(name, targets)
    elif balancer == "least_conn":
        s = LeastConnService(name, targets)
        s.observed = True
    elif balancer == "p2c_ewma":
        s = P2CService(name, targets)
        s.observed = True
    elif balancer == "ip_hash":
        s = HashService(name, targets, _client_ip, maglev=True)
    elif balancer == "consistent_hash":
        s = HashService(name, targets, key_function(hash_key or "ip"), maglev=False)
    else:
        raise ValueError(f"unknown balancer {balancer!r}")
    s.balancer = balancer
    s.passive = passive
    s.observed = s.observed or passive
    return s


def set_targets(service: Service, targets: list[Target]) -> None:
    """Give a running service a new target list (registration): round_robin becomes the weighted
    rotation while some target weighs more than 1, and back."""
    if service.balancer == "round_robin":
        plain = all(t.weight == 1 for t in targets)
        cls = Service if plain else WeightedService
        if type(service) is not cls and type(service) in (Service, WeightedService):
            service.__class__ = cls
    service.set_targets(targets)
