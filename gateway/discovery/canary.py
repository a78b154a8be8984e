"""Canary and A/B routing: a route's `canary = { version, weight, header }`.

A route with a canary gets its own `CanaryService` (the route's service wrapped): `weight` % of
users go to the targets whose `version` is the canary's, the others to the rest. The cohort is
sticky per user: xxh64 of the identity (ctx.consumer_id, the JWT `sub` or the API key's user,
once the security filters set it; else the client IP after GATEWAY_TRUSTED_PROXIES) decides, so a
user stays on one side while the weight stays, and raising the weight only moves users from
stable to canary, never back. The request header named by `header` overrides: `always` → canary,
`never` → stable.

When the chosen side has no available target, the other side serves (a canary that is down costs
its users nothing). Inside a side the pick is rotation over available targets (admit asked last,
as everywhere): the wrapped service's balancer keeps deciding for the route's other traffic and
for routes without a canary.

Run-time changes: `PUT /routes/{name}/canary` writes `canary/<route>` in the dynamic state; every
worker's CanaryService of that route applies it on arrival (within the state layer's delivery,
well under 1 s). Such a value overrides the file's canary until it is deleted (or replaced).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._fast.hashing import xxh64
from ..http.head import first_value
from .service import Service, Target

if TYPE_CHECKING:
    from ..config.model import CanaryConfig

log = logging.getLogger("gateway.discovery")

PREFIX = "canary/"
SCALE = 10000        # weight percent x 100: the cohort boundary on xxh64(identity) % SCALE


class _Side:
    """A rotation over a subset of the wrapped service's targets (shared Target objects; their
    slot numbers belong to the wrapped service and are left alone)."""

    __slots__ = ("targets", "_next")

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self._next = 0

    def pick(self, ctx: Any, skip: Target | None = None) -> Target | None:
        targets = self.targets
        n = len(targets)
        i = self._next if self._next < n else 0
        for _ in range(n):
            t = targets[i]
            i = i + 1 if i + 1 < n else 0
            if t is not skip and t.available and (t.admit is None or t.admit(ctx)):
                self._next = i
                return t
        return None


class CanaryService(Service):
    __slots__ = ()
    # Fields reused from Service's slots: _picker → the wrapped service; _key → (version, cut,
    # header name bytes); _maglev → (seen target list, canary side, stable side).

    def __init__(self, base: Service, version: str, weight: int, header: str | None) -> None:
        # Not Service.__init__: the targets' slot numbers are the wrapped service's.
        self.name = base.name
        self._picker = base
        self.targets = base.targets
        self._next = 0
        self.observed = base.observed
        self.balancer = base.balancer
        self.passive = base.passive
        self._maglev = None
        self.configure(version, weight, header)

    @property
    def base(self) -> Service:
        return self._picker

    def configure(self, version: str, weight: int, header: str | None) -> None:
        self._key = (version, int(weight) * SCALE // 100, header.lower().encode("latin-1") if header else None)
        self._maglev = None      # sides rebuilt on the next pick

    @property
    def setting(self) -> dict[str, Any]:
        version, cut, header = self._key
        return {"version": version, "weight": cut * 100 // SCALE,
                "header": header.decode("latin-1") if header else None}

    def _sides(self) -> tuple[_Side, _Side]:
        base = self._picker
        sides: Any = self._maglev
        if sides is None or sides[0] is not base.targets:
            version = self._key[0]
            current = base.targets
            sides = (current, _Side([t for t in current if t.version == version]),
                     _Side([t for t in current if t.version != version]))
            self._maglev = sides
            self.targets = current
        return sides[1], sides[2]

    def cohort(self, ctx: Any) -> bool:
        """True: this request goes to the canary side."""
        _version, cut, header = self._key
        if ctx is None:
            return False
        if header is not None:
            v = first_value(ctx.headers, header)
            if v is not None:
                v = v.strip().lower()
                if v == b"always":
                    return True
                if v == b"never":
                    return False
        if cut <= 0:
            return False
        if cut >= SCALE:
            return True
        ident = ctx.consumer_id or ctx.client_ip
        if not ident:
            return False
        return xxh64(ident) % SCALE < cut

    def pick(self, ctx: Any = None) -> Target | None:
        canary, stable = self._sides()
        first, second = (canary, stable) if self.cohort(ctx) else (stable, canary)
        t = first.pick(ctx)
        return t if t is not None else second.pick(ctx)

    def pick_retry(self, ctx: Any, failed: Target | None) -> Target | None:
        canary, stable = self._sides()
        first, second = (canary, stable) if self.cohort(ctx) else (stable, canary)
        t = first.pick(ctx, failed)
        return t if t is not None else second.pick(ctx, failed)

    def record(self, ctx: Any, target: Target, kind: str | None) -> None:
        # Passive health of the shared targets; not the wrapped balancer's counts (its picker did
        # not pick these).
        Service.record(self._picker, ctx, target, kind)

    def set_active(self, target: Target, ok: bool) -> None:
        self._picker.set_active(target, ok)

    def expire_passive(self, now: float) -> None:
        pass          # the wrapped service (in runtime.services) does it


def validate(value: Any, where: str = "body") -> dict[str, Any]:
    """{version, weight, header?} → normalized; ValueError("<field>: message")."""
    from ..config.schema import _NAME, _TOKEN

    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object {{version, weight, header}}")
    for k in value:
        if k not in ("version", "weight", "header"):
            raise ValueError(f"{str(k)[:64]}: unknown field")
    version = value.get("version")
    if not isinstance(version, str) or not _NAME.fullmatch(version):
        raise ValueError("version: expected a version name (letters, digits, '.', '_', '-')")
    weight = value.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ValueError(f"weight: expected an integer 0-100 (a percentage of users), got {weight!r}"[:200])
    header = value.get("header")
    if header is not None and (not isinstance(header, str) or not _TOKEN.fullmatch(header) or len(header) > 128):
        raise ValueError("header: expected a header name")
    return {"version": version, "weight": weight, "header": header}


def wrap(base: Service, cc: CanaryConfig) -> CanaryService:
    return CanaryService(base, cc.version, cc.weight, cc.header)


class CanaryUpdates:
    """One per process: applies `canary/<route>` changes to the current runtime's canary services."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.routes: dict[str, CanaryService] = {}
        self.defaults: dict[str, tuple[str, int, str | None]] = {}
        state.view.subscribe(PREFIX, self._changed, replay=False)

    def use(self, routes: dict[str, CanaryService], defaults: dict[str, tuple[str, int, str | None]]) -> None:
        self.routes = routes
        self.defaults = defaults
        for name, svc in routes.items():
            self._apply(name, svc, self.state.view.get(PREFIX + name))

    def _changed(self, key: str, value: Any) -> None:
        name = key[len(PREFIX):]
        svc = self.routes.get(name)
        if svc is not None:
            self._apply(name, svc, value)

    def _apply(self, name: str, svc: CanaryService, value: Any) -> None:
        if isinstance(value, dict):
            try:
                v = validate(value)
            except ValueError as exc:
                log.warning("canary of route %s: ignoring %s", name, exc)
                return
            svc.configure(v["version"], v["weight"], v["header"])
        elif name in self.defaults:
            svc.configure(*self.defaults[name])
        log.info("canary of route %s: %s", name, svc.setting)
