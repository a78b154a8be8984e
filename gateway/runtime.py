"""Runtime: a GatewayConfig compiled into the objects the data plane uses.

Built once at start and again on every SIGHUP reload (the worker swaps `worker.runtime` whole). A
request keeps the Route it matched, and through it the service, targets and pools, so in-flight
requests finish on the runtime they started on.

Pools are keyed by upstream (host, port): two targets naming the same address (in one service or
several) share one pool, and a reload that still names an address reuses the previous runtime's
pool, so warm keep-alive connections survive the reload. `close_unused(previous)` closes the pools
the new config dropped.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .discovery import breakers
from .discovery.fallback import Unavailable
from .discovery.service import Service, Target
from .pipeline.chain import EMPTY_CHAIN, FilterChain
from .routing import Route, Router

if TYPE_CHECKING:
    import asyncio

    from .config.env import Settings
    from .config.model import GatewayConfig, RouteConfig
    from .state.node import NodeState, Placer

PoolKey = tuple[str, int]
PoolFactory = Callable[[Any, str, int, "Settings"], Any]


def build_chain(route_config: RouteConfig, settings: Settings, placer: Placer | None = None) -> FilterChain:
    """The route's filters in order. Empty until policies exist: later issues add auth, rate
    limits, breaker... here, each behind the route keys that schema.py now refuses as not supported.
    The empty chain is one shared instance, which the data plane checks to skip every phase."""
    filters: list[Any] = []
    return FilterChain(filters) if filters else EMPTY_CHAIN


def _default_pool_factory(loop: Any, host: str, port: int, settings: Settings) -> Any:
    # Imported lazily: gateway.http sits below runtime in the layering and is built separately;
    # config-only users (gateway check) never import the data plane.
    from .http.pool import UpstreamPool

    return UpstreamPool(loop, host, port, settings)


class Runtime:
    __slots__ = ("settings", "config", "router", "services", "pools", "placed", "_closed")

    def __init__(
        self,
        settings: Settings,
        config: GatewayConfig,
        router: Router,
        services: dict[str, Service],
        pools: dict[PoolKey, Any],
        placed: set[str] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.router = router
        self.services = services
        self.pools = pools
        self.placed = placed if placed is not None else set()   # node-memory names this runtime uses
        self._closed = False

    def close_unused(self, previous: Runtime | None) -> None:
        """Close the pools of `previous` that this runtime no longer uses (after a reload)."""
        if previous is None or previous is self:
            return
        keep = {id(p) for p in self.pools.values()}
        for pool in previous.pools.values():
            if id(pool) not in keep:
                pool.close()
        # `previous` owns nothing any more: its dropped pools are closed and the others now belong
        # to this runtime, so a later previous.close() (or a second call) closes nothing twice and
        # never a pool this runtime still serves from. In-flight requests hold their pools through
        # their Route's targets, not through runtime.pools.
        previous.pools = {}

    def close(self) -> None:
        """Close every pool (worker shutdown). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pool in self.pools.values():
            pool.close()

    def __repr__(self) -> str:
        return f"Runtime(routes={len(self.router.routes)}, services={len(self.services)}, pools={len(self.pools)})"


def build_runtime(
    config: GatewayConfig,
    settings: Settings,
    loop: asyncio.AbstractEventLoop | Any,
    previous: Runtime | None = None,
    pool_factory: PoolFactory | None = None,
    state: NodeState | None = None,
) -> Runtime:
    """Compile a validated config. Reuses `previous`'s pools for the same (host, port).

    With `state`, the filters and services built here place their shared objects (breakers,
    limiter tables, counters) in node memory through one Placer, whose names the runtime keeps so
    a reload can release the ones it dropped; SharedMemoryFull (naming GATEWAY_SHM_SIZE) refuses
    the config at start or reload, never mid-request."""
    factory = pool_factory or _default_pool_factory
    placer = state.placer() if state is not None else None
    old_pools = previous.pools if previous is not None else {}
    pools: dict[PoolKey, Any] = {}
    services: dict[str, Service] = {}
    for sc in config.services:
        targets: list[Target] = []
        for tc in sc.targets:
            key = (tc.host, tc.port)
            pool = pools.get(key)
            if pool is None:
                pool = old_pools.get(key)
                if pool is None:
                    pool = factory(loop, tc.host, tc.port, settings)
                pools[key] = pool
            targets.append(Target.from_config(tc, pool))
        services[sc.name] = Service(sc.name, targets)
    breakers.install(services, config, placer)
    routes = [
        Route.from_config(rc, services[rc.service], build_chain(rc, settings, placer)) for rc in config.routes
    ]
    for route, rc in zip(routes, config.routes, strict=True):
        route.unavailable = Unavailable(rc.fallback)   # prepared once: its fallback or the 503 JSON
    return Runtime(settings, config, Router(routes), services, pools, placer.names if placer is not None else None)
