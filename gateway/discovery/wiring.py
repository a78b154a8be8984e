"""How discovery joins a runtime being built: registered targets, health records, the worker's
health tick and registry subscription, and (in the control plane's process) the node's checker.

Called by gateway/runtime.py::build_runtime when the process has node state; without it (unit
tests, `gateway check`) services are exactly what the config says, all healthy.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._fast.counters import CounterArray
from . import health
from .registry import WorkerRegistry
from .service import ERROR_KINDS

if TYPE_CHECKING:
    from ..runtime import Runtime
    from .service import Service, Target

_registry: WorkerRegistry | None = None
ERRORS_SIZE = CounterArray.nbytes(len(ERROR_KINDS))


def errors_name(service: str, url: str) -> str:
    return f"upstream_errors/{service}/{url}"


def attach_runtime(runtime: Runtime, loop: Any, state: Any, placer: Any, previous: Runtime | None,
                   pool_factory: Callable[[Any, str, int, Any], Any]) -> None:
    global _registry
    old_pools = previous.pools if previous is not None else {}

    def pool_for(rt: Runtime, host: str, port: int) -> Any:
        key = (host, port)
        pool = rt.pools.get(key)
        if pool is None:
            pool = old_pools.get(key)
            if pool is None:
                pool = pool_factory(loop, host, port, rt.settings)
            rt.pools[key] = pool
        return pool

    def place(rt: Runtime, name: str) -> None:
        if placer is not None and rt is runtime:
            placer.names.add(name)
        rt.placed.add(name)

    def attach(rt: Runtime, service: Service, targets: list[Target]) -> None:
        if state.memory is None:
            return
        for t in targets:
            if t.errors is None:
                name = errors_name(service.name, t.url)
                place(rt, name)
                t.errors = CounterArray(len(ERROR_KINDS), state.memory.place(name, ERRORS_SIZE, state.holder,
                                                                             kind="errors"))
        # Health records of a checked service's targets: the checker writes them, we read them.
        sc = rt.config.service_map.get(service.name)
        if sc is None or sc.health is None:
            return
        for t in targets:
            if t.health is None:
                name = health.record_name(service.name, t.url)
                place(rt, name)
                t.health = health.place_record(state.memory, state.holder, service.name, t.url)
                t.active_ok = not t.health.down
                t.available = t.active_ok

    if _registry is None or _registry.state is not state:
        if _registry is not None:
            _registry.close()
        _registry = WorkerRegistry(state, pool_for)
    reg = _registry
    reg._pool_for = pool_for
    reg.use(runtime, attach)
    for service in runtime.services.values():
        reg.rebuild(service)
    health.worker_health(loop, state).use(runtime.services.values())
    _canaries(runtime, state)
    if state.control is not None and getattr(state, "discovery", None) is None and hasattr(loop, "create_task"):
        from .node import NodeDiscovery

        rt_holder = [runtime]
        state.discovery = NodeDiscovery(loop, state.memory, state.control, lambda: rt_holder[0].config)
        state.discovery_runtime = rt_holder
    elif getattr(state, "discovery_runtime", None) is not None:
        state.discovery_runtime[0] = runtime


_canary_updates: Any = None


def _canaries(runtime: Runtime, state: Any) -> None:
    """Run-time canary settings (PUT /routes/{name}/canary) for this runtime's canary routes."""
    global _canary_updates
    from .canary import CanaryService, CanaryUpdates

    if _canary_updates is None or _canary_updates.state is not state:
        _canary_updates = CanaryUpdates(state)
    routes = {r.name: r.service for r in runtime.router.routes if isinstance(r.service, CanaryService)}
    defaults = {rc.name: (rc.canary.version, rc.canary.weight, rc.canary.header)
                for rc in runtime.config.routes if rc.canary is not None}
    _canary_updates.use(routes, defaults)
