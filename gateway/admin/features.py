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
MetricSample = tuple[str, str, str, dict[str, str], float]
MetricSource = Callable[[AdminContext], Iterable[MetricSample]]


def install_features(routes: AdminRoutes, ctx: AdminContext) -> AdminRoutes:
    for install in FEATURES:
        install(routes, ctx)
    return routes


# --- the features: each imports its module only when installed or scraped --------------------------
def _discovery(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.discovery.admin import install  # /services, registration, heartbeats, canary (issue 8)

    install(routes, ctx)


def _discovery_metrics(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.discovery.admin import metric_samples  # target health, upstream errors by kind

    return metric_samples(ctx)


def _breakers(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.admin.breakers import install  # /breakers (issue 9)

    install(routes, ctx)


def _breaker_metrics(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.admin.breakers import samples  # gateway_circuit_state, gateway_circuit_transitions_total

    return samples(ctx)


def _limits(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.admin.limits import install  # /limits, /ratelimit/top (issue 10)

    install(routes, ctx)


def _limits_metrics(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.admin.limits import decision_samples  # gateway_ratelimit_decisions_total

    return decision_samples(ctx)


def _security(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.security.admin import install  # /keys, /tokens/... (issue 11)

    install(routes, ctx)


def _security_metrics(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.security.admin import failure_samples  # gateway_auth_failures_total

    return failure_samples(ctx)


def _observability(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.observability.exporter import install  # /metrics, /status, /dashboard (issue 12)

    install(routes, ctx)


def _alert_metrics(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.observability.webhooks import metric_samples  # gateway_alerts_sent_total

    return metric_samples(ctx)


def _inspect(routes: AdminRoutes, ctx: AdminContext) -> None:
    from gateway.admin.inspect import install  # /config, /routes (issue 13)

    install(routes, ctx)


def _node_metrics(ctx: AdminContext) -> Iterable[MetricSample]:
    from gateway.observability.node_metrics import metric_samples  # connections, redis errors, reloads

    return metric_samples(ctx)


# Each feature's installer, in the order its routes appear in /openapi.json.
FEATURES: list[Installer] = [_inspect, _discovery, _breakers, _limits, _security, _observability]
# Each feature's metrics, read at scrape time by the /metrics exporter.
METRIC_SOURCES: list[MetricSource] = [_discovery_metrics, _breaker_metrics, _limits_metrics, _security_metrics,
                                      _alert_metrics, _node_metrics]
