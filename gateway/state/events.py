"""Operational events (SPEC §7): one place to emit them, deduplicated per node, delivered once.

Any process may notice that a circuit opened or Redis went away; with N workers each would notice
it N times. So events flow to the one process that owns the node (the supervisor, or the single
worker), whose `EventHub` drops an event whose key, (event, service, target), was delivered less
than `cooldown` seconds ago (SPEC §7: at most once per 60 s per node, however many workers saw it)
and hands the rest to its sinks. Until the webhook sender exists (the observability issue) the
sink is the log: one WARNING (or INFO for recoveries) line per delivered event.

Workers emit through an `EventSender` (gateway/state/client.py) that applies the same cooldown
locally first, so a flapping target cannot flood the channel, and drops (and counts) events when
the channel is congested: events are signals for humans, never worth unbounded memory.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.events")

COOLDOWN = 60.0
MAX_KEYS = 10_000          # distinct event keys remembered for deduplication (oldest forgotten first)

# SPEC §7's events and their severity, and the node's own (`worker_stalled`: a worker silent past
# GATEWAY_WORKER_WATCHDOG was killed and replaced); an unknown name is a programming error,
# refused at emit.
SEVERITY = {
    "circuit_opened": "critical",
    "circuit_closed": "info",
    "target_down": "warning",
    "target_up": "info",
    "redis_down": "critical",
    "redis_up": "info",
    "ratelimit_surge": "warning",
    "auth_failure_surge": "warning",
    "worker_stalled": "warning",
}

EventKey = tuple[str, str | None, str | None]
Sink = Callable[[dict[str, Any]], None]


def make_event(event: str, *, service: str | None = None, target: str | None = None,
               details: dict[str, Any] | None = None, at: float | None = None) -> dict[str, Any]:
    """The event as SPEC §7's webhook body has it, minus `gateway` (the hub adds its instance)."""
    if event not in SEVERITY:
        raise ValueError(f"unknown event {event!r} (one of {', '.join(SEVERITY)})")
    return {"event": event, "severity": SEVERITY[event], "service": service, "target": target,
            "details": details or {}, "time": time.time() if at is None else at}


class Deduplicator:
    """Remembers when each event key last passed; bounded LRU of MAX_KEYS keys."""

    __slots__ = ("cooldown", "max_keys", "_last", "suppressed")

    def __init__(self, cooldown: float = COOLDOWN, max_keys: int = MAX_KEYS) -> None:
        self.cooldown = cooldown
        self.max_keys = max_keys
        self._last: OrderedDict[EventKey, float] = OrderedDict()
        self.suppressed = 0

    def admit(self, key: EventKey, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.cooldown:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True


def event_key(ev: dict[str, Any]) -> EventKey:
    return (ev["event"], ev.get("service"), ev.get("target"))


def log_sink(ev: dict[str, Any]) -> None:
    level = logging.INFO if ev["severity"] == "info" else logging.WARNING
    where = "/".join(p for p in (ev.get("service"), ev.get("target")) if p)
    log.log(level, "event %s%s %s", ev["event"], f" {where}" if where else "",
            " ".join(f"{k}={v}" for k, v in sorted(ev.get("details", {}).items())))


class EventHub:
    """The node's single delivery point (see the module docstring)."""

    def __init__(self, instance: str, *, cooldown: float = COOLDOWN, max_keys: int = MAX_KEYS,
                 sinks: list[Sink] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.instance = instance
        self.dedup = Deduplicator(cooldown, max_keys)
        self.sinks: list[Sink] = [log_sink] if sinks is None else sinks
        self.clock = clock
        self.delivered = 0
        self.sink_errors = 0

    def emit(self, event: str, *, service: str | None = None, target: str | None = None,
             details: dict[str, Any] | None = None) -> bool:
        return self.deliver(make_event(event, service=service, target=target, details=details))

    def deliver(self, ev: dict[str, Any]) -> bool:
        """An event from this process or a worker; True when it passed deduplication."""
        if ev.get("event") not in SEVERITY:
            log.warning("dropping an event of unknown type %r", ev.get("event"))
            return False
        if not self.dedup.admit(event_key(ev), self.clock()):
            return False
        ev = dict(ev, gateway=self.instance)
        self.delivered += 1
        for sink in self.sinks:
            try:
                sink(ev)
            except Exception:  # noqa: BLE001 - a broken sink must not lose the event for the others
                self.sink_errors += 1
                log.exception("event sink failed for %s", ev["event"])
        return True

    @property
    def suppressed(self) -> int:
        return self.dedup.suppressed
