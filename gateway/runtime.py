"""Runtime: a GatewayConfig compiled into the objects the data plane uses.

Built once at start and again on every SIGHUP reload (the worker swaps `worker.runtime` whole). A
request keeps the Route it matched, and through it the service, targets and pools, so in-flight
requests finish on the runtime they started on.

Pools are keyed by upstream (host, port), plus the TLS trust for an https:// target: two targets
naming the same address the same way (in one service or several) share one pool, and a reload that still names an address reuses the previous runtime's
pool, so warm keep-alive connections survive the reload. `close_unused(previous)` closes the pools
the new config dropped.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .discovery import breakers
from .discovery.balancers import make_service
from .discovery.fallback import Unavailable
from .discovery.service import Service, Target
from .pipeline.chain import EMPTY_CHAIN, FilterChain
from .routing import Route, Router
from .runtime_core import RuntimeCore

if TYPE_CHECKING:
    import asyncio

    from .config.env import Settings
    from .config.model import GatewayConfig, RouteConfig
    from .state.node import NodeState, Placer

# Test-only: when set, every route first runs TestIdentityFilter (identity from X-Test-User /
# X-Test-Org), standing in for the auth filters in tests of identity-keyed limits. Underscored like
# the other internal variables: not a setting, never documented for operators.
TEST_IDENTITY_ENV = "_GATEWAY_TEST_IDENTITY"

# (host, port) for a plain upstream; (host, port, UpstreamTLS) for an https:// one, so that two
# targets naming one address with different trust (or one plain, one TLS) never share connections.
PoolKey = tuple[Any, ...]
PoolFactory = Callable[..., Any]     # (loop, host, port, settings[, tls]) -> pool


def build_chain(route_config: RouteConfig, settings: Settings, placer: Placer | None = None,
                quotas: Any = None, emit: Callable[..., Any] | None = None, state: NodeState | None = None,
                loop: Any = None) -> FilterChain:
    """The route's filters in order: auth first (the identity is what limits and canaries read),
    then the other policies. The empty chain is one shared instance, which the data plane checks
    to skip every phase. `quotas`: the runtime's compiled `[quotas]`
    (gateway.filters.ratelimit.Quotas), shared by every route."""
    filters: list[Any] = []
    if os.environ.get(TEST_IDENTITY_ENV):
        from .filters.test_identity import TestIdentityFilter

        filters.append(TestIdentityFilter())
    if route_config.auth:
        from .security.auth_filter import AuthFilter
        from .security.context import security_for

        security = security_for(settings, state, loop)
        security.place(placer)
        filters.append(AuthFilter(route_config.name, route_config.auth, route_config.scopes, security))
    if route_config.content_types is not None or route_config.security_headers:
        from .security.hygiene import ContentTypeFilter, SecurityHeadersFilter

        if route_config.security_headers:      # first in the chain: its response phase runs last
            filters.insert(0, SecurityHeadersFilter())
        if route_config.content_types is not None:
            filters.append(ContentTypeFilter(route_config.name, route_config.content_types))
    if route_config.rate_limits or quotas is not None:
        from .filters.ratelimit import build_filter

        # With Redis (and a running node), route policies count across instances through leases.
        redis = ((settings, lambda: state.status) if settings.redis_url and state is not None else None)
        limiter = build_filter(route_config.name, route_config.rate_limits, quotas,
                               settings.ratelimit_keys, placer, emit=emit, surge=settings.ratelimit_surge,
                               redis=redis, audit_log=settings.audit_log)
        if limiter is not None:
            filters.append(limiter)
    body_check = None
    if route_config.json_check:
        from .security.hygiene import JsonBodyCheck

        body_check = JsonBodyCheck(route_config.name, route_config.json_max_bytes)
    if not filters and body_check is None:
        return EMPTY_CHAIN
    # Tracing on: each filter's access phase is timed for the span (pipeline/chain.pyx).
    return FilterChain(filters, timed=settings.tracing, body_check=body_check)


def _route_service(rc: RouteConfig, services: dict[str, Service]) -> Service:
    """The route's service; a route with a canary gets its own wrapper (gateway/discovery/canary.py)."""
    if rc.canary is None:
        return services[rc.service]
    from .discovery.canary import wrap

    return wrap(services[rc.service], rc.canary)


def _default_pool_factory(loop: Any, host: str, port: int, settings: Settings, tls: Any = None) -> Any:
    # Imported lazily: gateway.http sits below runtime in the layering and is built separately;
    # config-only users (gateway check) never import the data plane.
    from .http.pool import UpstreamPool

    return UpstreamPool(loop, host, port, settings, tls)


def upstream_tls(sc: Any, tc: Any) -> Any:
    """The UpstreamTLS of an https:// target of service config `sc` (None for http://)."""
    if not getattr(tc, "tls", False):
        return None
    from .tls import UpstreamTLS

    return UpstreamTLS.of(sc.tls_verify, sc.ca_file)


def make_pool(factory: PoolFactory, loop: Any, host: str, port: int, settings: Settings, tls: Any) -> Any:
    # A plain pool keeps the four-argument call, which the tests' fake pool factories take.
    return factory(loop, host, port, settings) if tls is None else factory(loop, host, port, settings, tls)


def pool_key(host: str, port: int, tls: Any) -> PoolKey:
    return (host, port) if tls is None else (host, port, tls)


class Runtime(RuntimeCore):
    # router and metrics are RuntimeCore's C fields (read per request; runtime_core.pxd).
    __slots__ = ("settings", "config", "services", "pools", "placed", "_closed")

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
        # The request metrics' Recorder (gateway/observability): the data plane calls
        # metrics.observe(ctx) once per finished exchange. None: not recorded (bare runtimes of tests).
        self.metrics: Any = None
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

    def pool_for(host: str, port: int, tls: Any = None) -> Any:
        key = pool_key(host, port, tls)
        pool = pools.get(key)
        if pool is None:
            pool = old_pools.get(key)
            if pool is None:
                pool = make_pool(factory, loop, host, port, settings, tls)
            pools[key] = pool
        return pool

    for sc in config.services:
        targets = [Target.from_config(tc, pool_for(tc.host, tc.port, upstream_tls(sc, tc))) for tc in sc.targets]
        # Passive health unless a breaker replaces it (SPEC §3).
        services[sc.name] = make_service(sc.name, targets, sc.balancer, sc.hash_key,
                                         passive=getattr(sc, "breaker", None) is None)
    breakers.install(services, config, placer)
    route_configs = config.routes
    quotas_config = config.quotas
    if settings.redis_url and state is not None:
        # Redis-mode limiters need redis-py (about 1 s to import on a loaded machine): imported at
        # the first build, never inside the swap of a live limit change (SPEC §8: within 1 s).
        from .filters import ratelimit_redis  # noqa: F401
        from .state import redis_link  # noqa: F401
    if state is not None and any(True for _ in state.view.items("limits/")):
        # Live limits (the admin API's overrides, gateway/filters/limits_live.py) on top of the TOML.
        import dataclasses

        from .filters.limits_live import effective

        policies, quotas_config = effective(config, state.view.items("limits/"))
        route_configs = tuple(dataclasses.replace(rc, rate_limits=policies[rc.name]) for rc in config.routes)
    quotas = None
    if quotas_config is not None:
        from .filters.ratelimit import build_quotas

        quotas = build_quotas(quotas_config, settings.ratelimit_keys, placer,
                              (settings, lambda: state.status) if settings.redis_url and state is not None else None)
    emit = state.emit if state is not None else None
    routes = [
        Route.from_config(rc, _route_service(rc, services), build_chain(rc, settings, placer, quotas, emit, state, loop))
        for rc in route_configs
    ]
    for route, rc in zip(routes, route_configs, strict=True):
        route.unavailable = Unavailable(rc.fallback)   # prepared once: its fallback or the 503 JSON
    # The gateway's own token service (POST /auth/token, /auth/refresh, /auth/revoke), exact routes.
    from .security.token_service import internal_routes

    routes = internal_routes(settings, state, config, pool_for) + routes
    runtime = Runtime(settings, config, Router(routes), services, pools, placer.names if placer is not None else None)
    if state is not None:
        # Registered targets, health records, the worker's health tick (gateway/discovery/wiring.py).
        from .discovery.wiring import attach_runtime

        attach_runtime(runtime, loop, state, placer, previous, factory)
    from .observability.metrics import build_recorder

    runtime.metrics = build_recorder(routes, services.values(), placer, settings.access_log, loop, settings.tracing)
    return runtime
