"""The node's circuits as the control plane's process sees them (issue 9).

The process that owns the admin listener (the supervisor, or the lone worker) maps the same
breakers the workers use (breakers.py names them; this process places them as SUPERVISOR) and is
the one place where a circuit meets the rest of the node and the other instances:

- **Events and propagation.** Workers bump one node-wide counter on every transition; a timer here
  (POLL seconds) looks at the breakers only when it moved, compares each breaker's node-wide
  transition counts with what it saw last, and emits `circuit_opened` / `circuit_closed` once per
  node (the hub deduplicates further per its cooldown). An opening that happened on this node's
  traffic is published, with Redis configured, as `breakers/open/<service>/<target id>` =
  {"until": wall-clock end of the open period, "instance": ...}: every other instance's control
  process opens its own breaker for what is left of that period (`open_for`), then probes on its
  own. The key is TTL-like: readers ignore it once `until` has passed, its writer deletes it when
  its circuit closes, and anyone deletes keys left expired by a dead writer. The opening this
  process applied for another instance is not published again (no echo between instances).
- **Forced states.** `breakers/forced/<service>/<target id>` = {"state": "open" | "closed", ...},
  written by the admin API (every instance gets it through the state layer), applied here to the
  node's breaker: open holds it open until a close; close closes it once (a fresh window).

Hot-path decisions never wait for any of this: each worker decides on its own breaker in node
memory. With Redis down, publishing is retried on later ticks while the circuit is still open
and the rest goes on locally (README).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._fast.breaker import SHM_SIZE, STATE_NAMES, CircuitBreaker
from .._fast.counters import Counter
from .breakers import KIND, TRANSITIONS_NAME, breaker_name, policy

if TYPE_CHECKING:
    from ..state.node import NodeState

log = logging.getLogger("gateway.breakers")

POLL = 0.05             # seconds between looks at the transition counter (a word read when idle)
SWEEP = 5.0             # seconds between sweeps for expired keys of dead writers
EXPIRED_GRACE = 60.0    # an open key this long past its `until` is deleted by anyone
OPEN_PREFIX = "breakers/open/"
FORCED_PREFIX = "breakers/forced/"
SUPERVISOR_HOLDER = 62  # gateway.state.layout.SUPERVISOR: control-plane objects


class Entry:
    """One target's circuit, and what this process last saw of it."""

    __slots__ = ("service", "id", "url", "name", "breaker", "seen", "own_opens", "cause", "published")

    def __init__(self, service: str, target_id: str, url: str, name: str, breaker: CircuitBreaker) -> None:
        self.service = service
        self.id = target_id
        self.url = url
        self.name = name
        self.breaker = breaker
        self.seen = breaker.transitions()
        self.own_opens = 0           # openings this process caused (remote, forced): not published
        self.cause: dict[str, Any] = {}
        self.published = False       # an open key of ours is out there

    @property
    def key(self) -> str:
        return f"{self.service}/{self.id}"


class NodeBreakers:
    """See the module docstring. `config` returns the GatewayConfig in force."""

    def __init__(self, state: NodeState, config: Callable[[], Any], *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.state = state
        self.config = config
        self.clock = clock
        self.wall = wall
        self.entries: dict[str, Entry] = {}
        self._config: Any = None
        self._counter: Counter | None = None
        self._generation = -1
        self._outbox: dict[str, Any] = {}      # state key -> value to put (None: delete); one per key
        self._flushing = False
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_sweep = 0.0
        self.sync()
        if state.view is not None:
            state.view.subscribe("breakers/", self._on_change)

    # --- the breakers of the config in force ------------------------------------------------------
    def sync(self) -> bool:
        """Map the breakers of the config in force (after a reload: the new set). True if it changed."""
        config = self.config()
        if config is self._config:
            return False
        self._config = config
        memory = self.state.memory
        entries: dict[str, Entry] = {}
        services = [sc for sc in getattr(config, "services", ()) if sc.breaker is not None]
        if memory is not None and services and self._counter is None:
            self._counter = Counter(memory.place(TRANSITIONS_NAME, Counter.NBYTES, SUPERVISOR_HOLDER, kind="counter"))
        # Transitions caused here (an allow() past the timeout from the admin view never happens,
        # but forced and remote moves do) bump the node's counter like the workers' do.
        bump = (lambda old, new, now, inc=self._counter.inc: inc()) if self._counter is not None else None
        for sc in services:
            kw = policy(sc.breaker)
            for tc in sc.targets:
                name = breaker_name(sc.name, tc.id, sc.breaker)
                old = self.entries.get(f"{sc.name}/{tc.id}")
                if old is not None and old.name == name:
                    entries[old.key] = old
                    continue
                if memory is not None:
                    b = CircuitBreaker(**kw, on_transition=bump,
                                       buffer=memory.place(name, SHM_SIZE, SUPERVISOR_HOLDER, kind=KIND))
                else:
                    b = CircuitBreaker(**kw)
                e = Entry(sc.name, tc.id, tc.url, name, b)
                entries[e.key] = e
        self.entries = entries
        if memory is not None:
            self._release_dropped(memory)
        # Forced states and live openings from elsewhere apply to new circuits too.
        view = self.state.view
        if view is not None:
            for prefix in (FORCED_PREFIX, OPEN_PREFIX):
                for k, v in view.items(prefix):
                    self._on_change(k, v)
        return True

    def _release_dropped(self, memory: Any) -> None:
        # Release the breakers this process held and the config no longer names; keep every other
        # object this holder holds (other features of the control plane place as SUPERVISOR too).
        mine = {e.name for e in self.entries.values()}
        bit = 1 << SUPERVISOR_HOLDER
        keep = {o.name for o in memory.objects()
                if o.holders & bit and not o.quarantined and (not o.name.startswith("breaker/") or o.name in mine)}
        memory.sync_holder(SUPERVISOR_HOLDER, keep)

    # --- the watcher ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._handle is None:
            self._handle = loop.call_later(POLL, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        try:
            self.poll()
        except Exception:  # noqa: BLE001 - the watcher must outlive one bad look
            log.exception("circuit breaker watcher failed")
        self._handle = self._loop.call_later(POLL, self._tick)

    def poll(self) -> None:
        """One look: a reload, transitions since the last look, expired keys, the outbox."""
        changed = self.sync()
        now = self.clock()
        generation = self._counter.value if self._counter is not None else 0
        if changed or generation != self._generation:
            self._generation = generation
            for e in self.entries.values():
                self._observe(e)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP
            self._sweep()
        if self._outbox and not self._flushing:
            self._flush()

    def _observe(self, e: Entry) -> None:
        seen = e.breaker.transitions()
        opened, closed = seen[0] - e.seen[0], seen[2] - e.seen[2]
        e.seen = seen
        if not opened and not closed:
            return
        snap = e.breaker.snapshot()
        own = min(opened, e.own_opens)
        e.own_opens -= own
        cause, e.cause = e.cause, {}
        if opened:
            details = {"opened": opened, "state": snap["state"], "open_timeout": snap["open_timeout"],
                       "consecutive_failures": snap["consecutive_failures"], **cause}
            self.state.emit("circuit_opened", service=e.service, target=e.url, details=details)
            if opened > own and snap["state"] == "open" and snap["open_until"] is not None:
                self._publish_open(e, snap["open_until"])
        if closed:
            self.state.emit("circuit_closed", service=e.service, target=e.url, details={"closed": closed})
            if e.published and snap["state"] == "closed":
                e.published = False
                self._send(OPEN_PREFIX + e.key, None)

    # --- between instances ------------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        control = self.state.control
        return control is not None and control.store is not None

    def _publish_open(self, e: Entry, open_until: float) -> None:
        if not self.shared:
            return      # one instance: nobody to tell
        remaining = open_until - self.clock()
        if remaining <= 0:
            return
        e.published = True
        self._send(OPEN_PREFIX + e.key, {"until": round(self.wall() + remaining, 3), "instance": self.state.instance,
                                         "open_timeout": round(e.breaker.snapshot()["open_timeout"], 3)})

    def _send(self, key: str, value: Any) -> None:
        self._outbox[key] = value
        if not self._flushing and self._loop is not None:
            self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        self._flushing = True
        self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        from ..state.control import StateUnavailable

        control = self.state.control
        try:
            while self._outbox and control is not None:
                key = next(iter(self._outbox))
                value = self._outbox.pop(key)
                try:
                    if value is None:
                        await control.delete(key)
                    else:
                        await control.put(key, value)
                except StateUnavailable as exc:
                    # Redis is down: keep it (unless superseded meanwhile) for a later tick, and
                    # go on deciding locally.
                    self._outbox.setdefault(key, value)
                    log.warning("circuit %s: not published (%s); retrying", key, exc)
                    await asyncio.sleep(1.0)
                    return
        except Exception:  # noqa: BLE001
            log.exception("publishing a circuit change failed")
        finally:
            self._flushing = False

    def _sweep(self) -> None:
        view = self.state.view
        if view is None or not self.shared:
            return
        wall = self.wall()
        for k, v in view.items(OPEN_PREFIX):
            if isinstance(v, dict) and isinstance(v.get("until"), int | float) and v["until"] < wall - EXPIRED_GRACE:
                self._send(k, None)

    # --- changes from the state layer (admin writes, other instances) ------------------------------
    def _on_change(self, key: str, value: Any) -> None:
        if key.startswith(FORCED_PREFIX):
            e = self.entries.get(key[len(FORCED_PREFIX):])
            if e is None or not isinstance(value, dict):
                return
            now = self.clock()
            if value.get("state") == "open":
                if e.breaker.force_open(now):
                    e.own_opens += 1
                    e.cause = {"cause": "forced"}
                    self._observe(e)
            elif value.get("state") == "closed":
                if e.breaker.force_close(now):
                    self._observe(e)
        elif key.startswith(OPEN_PREFIX):
            e = self.entries.get(key[len(OPEN_PREFIX):])
            if e is None or not isinstance(value, dict) or value.get("instance") == self.state.instance:
                return
            until = value.get("until")
            if not isinstance(until, int | float):
                return
            remaining = until - self.wall()
            if remaining > 0 and e.breaker.open_for(self.clock(), min(remaining, 86400.0)):
                e.own_opens += 1
                e.cause = {"cause": "remote", "instance": value.get("instance")}
                self._observe(e)

    # --- reading ----------------------------------------------------------------------------------
    def describe(self, e: Entry) -> dict[str, Any]:
        """One circuit for GET /breakers (times as wall-clock seconds since the epoch)."""
        s = e.breaker.snapshot()
        now, wall = self.clock(), self.wall()
        forced = self.state.view.get(FORCED_PREFIX + e.key) if self.state.view is not None else None
        requests, failures = s["window_requests"], s["window_failures"]
        return {
            "id": e.id, "url": e.url, "state": s["state"], "code": s["code"],
            "forced": s["forced_open"],
            "forced_by": forced if isinstance(forced, dict) and forced.get("state") == "open" else None,
            "since": round(wall - (now - s["changed_at"]), 3) if s["changed_at"] > 0 else None,
            "next_probe": round(wall + (s["open_until"] - now), 3)
            if s["state"] == "open" and s["open_until"] is not None else None,
            "consecutive_failures": s["consecutive_failures"],
            "window_requests": requests, "window_failures": failures,
            "failure_ratio": round(failures / requests, 4) if requests else 0.0,
            "probes_admitted": s["probes_admitted"], "probe_successes": s["probe_successes"],
            "open_timeout": s["open_timeout"], "trips": s["trips"],
            "transitions": s["transitions"],
        }

    def by_service(self) -> list[dict[str, Any]]:
        self.sync()
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.entries.values():
            out.setdefault(e.service, []).append(self.describe(e))
        return [{"name": name, "targets": targets} for name, targets in out.items()]

    def find(self, service: str, target: str) -> Entry | None:
        """By target id ("127.0.0.1:9001") or URL."""
        self.sync()
        e = self.entries.get(f"{service}/{target}")
        if e is not None:
            return e
        for e in self.entries.values():
            if e.service == service and e.url.rstrip("/") == target.rstrip("/"):
                return e
        return None

    def samples(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """gateway_circuit_state and gateway_circuit_transitions_total (SPEC §6)."""
        self.sync()
        out: list[tuple[str, str, str, dict[str, str], float]] = []
        for e in self.entries.values():
            labels = {"service": e.service, "target": e.url}
            out.append(("gateway_circuit_state", "gauge", "Circuit state per target: 0 closed, 1 half-open, 2 open.",
                        labels, float(e.breaker.state)))
            counts = e.breaker.transitions()
            for to, n in zip((STATE_NAMES[2], STATE_NAMES[1], STATE_NAMES[0]), counts, strict=True):
                out.append(("gateway_circuit_transitions_total", "counter",
                            "Circuit transitions per target, by the state entered.", {**labels, "to": to}, float(n)))
        return out
