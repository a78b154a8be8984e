"""Admin routes of the gateway's features (discovery, breakers, limits, keys, metrics...).

The admin listener runs in the supervisor, or in the only process when GATEWAY_WORKERS=1; the
supervisor has no runtime of its own. So a feature's admin routes see the node through an
`AdminContext` that both kinds of process can build:

  settings   the process's Settings
  config()   the GatewayConfig in force (the last valid one; parsed again after a reload)
  state      NodeState (gateway/state/node.py): `control` (ControlPlane: put/delete/view, the way an
             admin change reaches every worker and instance), `memory` (node memory: objects the
             workers placed, found by name), `view`, `emit(...)`
  runtime()  the process's Runtime when it serves traffic itself (single process), else None

A feature adds one installer to FEATURES: `install(routes, ctx)` calls `routes.add(...)` for its
endpoints (writes use `auth=True`, the admin token). One list, so both processes install the same
table and /openapi.json documents every route.

A feature's metrics: its counters live in node memory (`_fast` counters placed by name while the
runtime builds, incremented on the hot path by index), and it adds one function to METRIC_SOURCES,
`samples(ctx)` → iterable of (name, type, help, labels dict, value), type "counter" or "gauge",
which the /metrics exporter calls at scrape time. Label values come from config (route, service,
target, policy...), never from a user, key or token.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.admin.api import AdminRoutes
    from gateway.config.env import Settings
    from gateway.state.node import NodeState


class AdminContext:
    __slots__ = ("settings", "config", "state", "runtime")

    def __init__(self, settings: Settings, config: Callable[[], Any], state: NodeState,
                 runtime: Callable[[], Any] = lambda: None) -> None:
        self.settings = settings
        self.config = config
        self.state = state
        self.runtime = runtime


Installer = Callable[["AdminRoutes", AdminContext], None]

def _breakers(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.admin.breakers import install

    install(routes, ctx)


def _breaker_samples(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.admin.breakers import samples

    return samples(ctx)


# Each feature's installer, in the order its routes appear in /openapi.json.
FEATURES: list[Installer] = [_breakers]


MetricSample = tuple[str, str, str, dict[str, str], float]
# Each feature's metrics, read at scrape time by the /metrics exporter.
METRIC_SOURCES: list[Callable[[AdminContext], Iterable[MetricSample]]] = [_breaker_samples]


def install_features(routes: AdminRoutes, ctx: AdminContext) -> AdminRoutes:
    for install in FEATURES:
        install(routes, ctx)
    return routes
