"""StateView: one process's copy of the node's dynamic state, and who to tell when it changes.

The dynamic state is what the admin API (and, with Redis, every other instance) writes at run
time: registered targets, limit overrides, API keys, revocations, forced breaker states. It is a
flat map of string keys to JSON values, namespaced by the first path segment (`targets/...`,
`limits/...`, `revoked/...`): each feature subscribes to its prefix and keeps whatever compiled
structure its hot path reads (a revocation set, a target list). The hot path never reads the
view itself, so a request pays nothing for it.

Changes arrive in order, numbered by `seq` (the control plane's sequence, gapless per process).
`replace()` installs a whole snapshot (a worker's start, a resync) and tells the subscribers only
about the keys that actually differ, so a subscriber sees the same stream of (key, value) changes
however the state reached it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger("gateway.state")

Subscriber = Callable[[str, Any], None]   # (key, new value or None when deleted)


class StateView:
    __slots__ = ("data", "seq", "_subscribers", "errors")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.seq = 0
        self._subscribers: list[tuple[str, Subscriber]] = []
        self.errors = 0          # subscriber callbacks that raised (logged; the change still applies)

    def subscribe(self, prefix: str, callback: Subscriber, *, replay: bool = True) -> None:
        """Call `callback(key, value)` for every change of a key starting with `prefix`; with
        `replay`, at once for every key already present (a feature built after the state arrived
        starts from it, not only from future changes)."""
        self._subscribers.append((prefix, callback))
        if replay:
            for key, value in self.items(prefix):
                self._notify_one(prefix, callback, key, value)

    def unsubscribe(self, callback: Subscriber) -> None:
        self._subscribers = [(p, cb) for p, cb in self._subscribers if cb is not callback]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return ((k, v) for k, v in list(self.data.items()) if k.startswith(prefix))

    def __len__(self) -> int:
        return len(self.data)

    def apply(self, seq: int, key: str, value: Any) -> bool:
        """One change (value None deletes). Returns whether the state changed."""
        self.seq = seq
        if value is None:
            if key not in self.data:
                return False
            del self.data[key]
        else:
            if self.data.get(key, _MISSING) == value:
                return False
            self.data[key] = value
        self._notify(key, value)
        return True

    def replace(self, seq: int, data: Mapping[str, Any]) -> int:
        """Install a full snapshot; notify only the keys that differ. Returns how many did."""
        self.seq = seq
        old = self.data
        self.data = dict(data)
        changed = 0
        for key in old.keys() - self.data.keys():
            self._notify(key, None)
            changed += 1
        for key, value in self.data.items():
            if old.get(key, _MISSING) != value:
                self._notify(key, value)
                changed += 1
        return changed

    def _notify(self, key: str, value: Any) -> None:
        for prefix, callback in self._subscribers:
            if key.startswith(prefix):
                self._notify_one(prefix, callback, key, value)

    def _notify_one(self, prefix: str, callback: Subscriber, key: str, value: Any) -> None:
        try:
            callback(key, value)
        except Exception:  # noqa: BLE001 - one broken feature must not stop the others' updates
            self.errors += 1
            log.exception("state subscriber for %r failed on %r", prefix, key)


_MISSING = object()
