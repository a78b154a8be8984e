"""Discovery's node-wide duties, run once per node in the control plane's process (the supervisor,
or the lone worker of GATEWAY_WORKERS=1): the active health checker (health.NodeHealth) and the
expiry of TTL registrations (registry.expire).

`config()` returns the GatewayConfig in force; when it returns another object (a reload), the set
of checked targets is recomputed; a registration or deregistration recomputes it too. Checked
targets that stay keep their probe loop and their verdict.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..state.memory import SUPERVISOR
from . import registry
from .health import NodeHealth

log = logging.getLogger("gateway.discovery")


class NodeDiscovery:
    def __init__(self, loop: asyncio.AbstractEventLoop, memory: Any, control: Any,
                 config: Callable[[], Any]) -> None:
        self.loop = loop
        self.control = control
        self._config = config
        self._seen: Any = None
        self.health = NodeHealth(loop, memory, SUPERVISOR, self._checked_targets, control.hub.emit)
        self._pending: asyncio.Handle | None = None
        control.view.subscribe(registry.PREFIX, self._registration_changed, replay=False)
        self._closed = False
        self._expiry: asyncio.Task[None] | None = None
        self._expiring: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tend()

    def _checked_targets(self) -> Iterator[tuple[Any, ...]]:
        from gateway.tls import UpstreamTLS

        config = self._config()
        for sc in getattr(config, "services", ()):
            if sc.health is None:
                continue
            seen = set()
            for tc in sc.targets:
                seen.add(tc.url)
                tls = UpstreamTLS.of(sc.tls_verify, sc.ca_file) if tc.tls else None
                yield sc.name, tc.url, tc.host, tc.port, sc.health, tls
            for _tid, value in registry.registered(self.control.view, sc.name):
                try:
                    if value["url"] not in seen:
                        seen.add(value["url"])
                        yield sc.name, value["url"], value["host"], int(value["port"]), sc.health
                except (KeyError, TypeError, ValueError):
                    continue

    def _registration_changed(self, key: str, value: Any) -> None:
        if self._pending is None:
            self._pending = self.loop.call_soon(self._refresh)

    def _refresh(self) -> None:
        self._pending = None
        try:
            self.health.refresh()
        except Exception:  # noqa: BLE001 - a bad config object must not stop the checks already running
            log.exception("health: refreshing the checked targets failed")

    def _tend(self) -> None:
        # A timer, not a task: nothing is left pending if the loop stops without closing us.
        self._timer = None
        if self._closed:
            return
        try:
            config = self._config()
            if config is not self._seen:
                self._seen = config
                self._refresh()
            if self._expiry is None and registry.expire(self.control.view):
                self._expiry = self.loop.create_task(self._expire())
                self._expiry.add_done_callback(self._expired)
        except Exception:  # noqa: BLE001
            log.exception("discovery: tending failed")
        self._timer = self.loop.call_later(registry.EXPIRE_EVERY, self._tend)

    def _expired(self, task: asyncio.Task[None]) -> None:
        self._expiry = None

    async def _expire(self) -> None:
        for key in registry.expire(self.control.view):
            if key in self._expiring:
                continue
            self._expiring.add(key)
            try:
                log.info("registry: %s expired (no heartbeat within its ttl): removed", key)
                await self.control.delete(key)
            except Exception as exc:  # noqa: BLE001 - Redis down: try again on the next round
                log.warning("registry: could not remove expired %s: %s", key, exc)
            finally:
                self._expiring.discard(key)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._pending is not None:
            self._pending.cancel()
        self.control.view.unsubscribe(self._registration_changed)
        self.health.close()
