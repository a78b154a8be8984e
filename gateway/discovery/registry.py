"""Dynamic registration: targets added at run time through the admin API.

A registered target is one key of the dynamic state, `targets/<service>/<id>` → {"url", "host",
"port", "weight", "version", "metadata", "ttl", "registered", "heartbeat"} (wall-clock seconds),
written with `state.control.put` by the admin handler (gateway/discovery/admin.py). The state layer
takes it to every worker's StateView (and, with Redis, to every instance); each worker's
`WorkerRegistry` is subscribed to `targets/` and rebuilds the named service's target list and
balancer when one of its keys changes: on the loop, between requests, never on the hot path.

A service's targets are its config targets (in file order) followed by its registered ones (by
id); a registered URL that the config already names is ignored (the config's wins). A reload
keeps the registered targets: they live in the dynamic state, not in the file, and the runtime
built by the reload reads them again.

TTL: a registration with `ttl` must be renewed by PUT .../heartbeat within ttl seconds; the control
plane's process (`expire()` every EXPIRE_EVERY s) deletes the keys whose heartbeat is older, so an
expired target leaves every worker within ttl + EXPIRE_EVERY + the state layer's delivery.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .service import Target

if TYPE_CHECKING:
    from ..runtime import Runtime
    from .service import Service

log = logging.getLogger("gateway.discovery")

PREFIX = "targets/"
_ROUTING = ("url", "host", "port", "weight", "version", "metadata")
_NONE = object()
EXPIRE_EVERY = 0.25
MAX_TARGETS_PER_SERVICE = 1000     # registered ones (the admin handler refuses more: 409)


def key_of(service: str, target_id: str) -> str:
    return f"{PREFIX}{service}/{target_id}"


def split_key(key: str) -> tuple[str, str] | None:
    rest = key[len(PREFIX):]
    service, sep, tid = rest.partition("/")
    return (service, tid) if sep and service and tid else None


def registered(view: Any, service: str) -> list[tuple[str, dict[str, Any]]]:
    """(id, value) of the service's registered targets, by id."""
    prefix = f"{PREFIX}{service}/"
    out = [(k[len(prefix):], v) for k, v in view.items(prefix) if isinstance(v, dict)]
    out.sort()
    return out


def target_from(tid: str, value: dict[str, Any], pool: Any) -> Target:
    t = Target(value["host"], int(value["port"]), pool, url=value["url"], weight=int(value.get("weight", 1)),
               version=value.get("version"))
    t.source = "registered"
    t.reg_id = tid
    t.metadata = value.get("metadata")
    return t


class WorkerRegistry:
    """One per process: keeps the current runtime's services in step with the registered targets."""

    def __init__(self, state: Any, pool_for: Callable[[Runtime, str, int], Any]) -> None:
        self.state = state
        self.runtime: Runtime | None = None
        self._pool_for = pool_for
        self._attach: Callable[[Runtime, Service, list[Target]], None] | None = None
        self._seen: dict[str, Any] = {}
        state.view.subscribe(PREFIX, self._changed, replay=False)

    def use(self, runtime: Runtime, attach: Callable[[Runtime, Service, list[Target]], None]) -> None:
        self.runtime = runtime
        self._attach = attach

    def _changed(self, key: str, value: Any) -> None:
        parts = split_key(key)
        if parts is None or self.runtime is None:
            return
        # A heartbeat rewrites the whole value; only a change of what routing uses rebuilds.
        routing = {k: value.get(k) for k in _ROUTING} if isinstance(value, dict) else None
        if self._seen.get(key, _NONE) == routing:
            return
        if routing is None:
            self._seen.pop(key, None)
        else:
            if len(self._seen) > 100_000:   # bounded: forget and rebuild rather than grow
                self._seen.clear()
            self._seen[key] = routing
        service = self.runtime.services.get(parts[0])
        if service is not None:
            self.rebuild(service)

    def rebuild(self, service: Service) -> None:
        from .balancers import set_targets

        runtime = self.runtime
        assert runtime is not None
        targets = self.targets_for(runtime, service.name, service.targets)
        if self._attach is not None:
            self._attach(runtime, service, targets)
        before = len(service.targets)
        set_targets(service, targets)
        n_reg = sum(t.source == "registered" for t in targets)
        if n_reg or len(targets) != before:
            log.info("service %s: %d targets (%d registered)", service.name, len(targets), n_reg)

    def targets_for(self, runtime: Runtime, name: str, current: list[Target]) -> list[Target]:
        """Config targets (kept as they are) + the registered ones now in the view; a registered
        target already present (same id and URL) is kept, so its health and counts carry on."""
        config_targets = [t for t in current if t.source == "config"]
        urls = {t.url for t in config_targets} | {t.id for t in config_targets}
        old = {t.reg_id: t for t in current if t.source == "registered"}
        out = list(config_targets)
        for tid, value in registered(self.state.view, name):
            try:
                if value["url"] in urls or f"{value['host']}:{value['port']}" in urls:
                    continue
                prev = old.get(tid)
                if prev is not None and prev.url == value["url"]:
                    prev.weight = int(value.get("weight", 1))
                    prev.version = value.get("version")
                    prev.metadata = value.get("metadata")
                    out.append(prev)
                else:
                    out.append(target_from(tid, value, self._pool_for(runtime, value["host"], int(value["port"]))))
            except (KeyError, TypeError, ValueError):
                log.warning("service %s: ignoring malformed registration %s", name, tid)
        return out

    def close(self) -> None:
        self.state.view.unsubscribe(self._changed)


def expire(view: Any, now: float | None = None) -> list[str]:
    """Keys of TTL registrations whose last heartbeat is older than their ttl."""
    now = time.time() if now is None else now
    out = []
    for key, value in view.items(PREFIX):
        if isinstance(value, dict):
            ttl = value.get("ttl")
            beat = value.get("heartbeat") or value.get("registered") or 0
            if isinstance(ttl, int | float) and ttl > 0 and now > beat + ttl:
                out.append(key)
    return out
