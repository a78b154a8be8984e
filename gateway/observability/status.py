"""GET /status: the JSON the dashboard renders (SPEC §5), built at request time from what exists.

Sources, each optional, so the page works whatever features a node runs:
- the config in force (services, targets with weight and version, routes);
- node memory's request metrics (metrics.py): per route the request and error counts and the
  duration histogram (cumulative: the page takes rates and windowed quantiles from two polls);
  per target the upstream counts and when it last answered and last failed;
- the features' METRIC_SOURCES: `gateway_target_healthy` (health checks) and
  `gateway_circuit_state` (breakers) when those features publish them, rate-limit decisions, auth
  failures;
- dynamic targets: any target the metrics or the view (`targets/<service>/...`) know that the
  config does not name;
- `state.status`: Redis up/down/off, live instances.

`healthy` is the health feature's verdict when it publishes one; otherwise the passive verdict of
live traffic: false when the target's last upstream attempt failed (connect, timeout, reset,
protocol), true once one succeeded after it, null while no request has reached it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from .metrics import read_request_metrics

log = logging.getLogger("gateway.status")

CIRCUIT = {0: "closed", 1: "half_open", 2: "open"}


def _feature_samples(ctx: Any, sources: Iterable[Any]) -> list[tuple[str, str, str, dict[str, str], float]]:
    out: list[tuple[str, str, str, dict[str, str], float]] = []
    for source in list(sources):
        try:
            out += list(source(ctx))
        except Exception:  # noqa: BLE001 - a broken feature leaves its columns empty
            log.exception("status: metrics source %s failed", getattr(source, "__qualname__", source))
    return out


def _target_id(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_status(ctx: Any, sources: Iterable[Any]) -> dict[str, Any]:
    memory = ctx.state.memory if ctx.state is not None else None
    requests, upstream, _ = read_request_metrics(memory) if memory is not None else ([], [], {})
    samples = _feature_samples(ctx, sources)
    health: dict[tuple[str, str], bool] = {}
    circuit: dict[tuple[str, str], str] = {}
    limits: dict[tuple[str, str], float] = {}
    auth_failures = 0.0
    for name, _kind, _help, labels, value in samples:
        key = (labels.get("service", ""), labels.get("target", ""))
        if name == "gateway_target_healthy":
            health[key] = bool(value)
        elif name == "gateway_circuit_state":
            circuit[key] = CIRCUIT.get(int(value), str(value))
        elif name == "gateway_ratelimit_decisions_total":
            k = (labels.get("route", ""), labels.get("result", ""))
            limits[k] = limits.get(k, 0.0) + value
        elif name == "gateway_auth_failures_total":
            auth_failures += value
    up = {(u.service, u.target): u for u in upstream}
    now = time.monotonic()

    def target_entry(service: str, url: str, weight: Any = None, version: Any = None) -> dict[str, Any]:
        u = up.get((service, url))
        healthy: bool | None = health.get((service, url))
        if healthy is None and u is not None and (u.last_ok or u.last_error):
            healthy = u.last_ok >= u.last_error
        return {
            "id": _target_id(url), "url": url, "healthy": healthy, "circuit": circuit.get((service, url)),
            "weight": weight, "version": version,
            "requests": u.duration.count if u is not None else 0,
            "errors": dict(u.errors) if u is not None else {},
            "last_ok_ago": round(now - u.last_ok, 3) if u is not None and u.last_ok else None,
            "last_error_ago": round(now - u.last_error, 3) if u is not None and u.last_error else None,
        }

    config = _config(ctx)
    services: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for sc in getattr(config, "services", ()):
        targets = []
        for tc in sc.targets:
            targets.append(target_entry(sc.name, tc.url, tc.weight, tc.version))
            seen.add((sc.name, tc.url))
        services.append({"name": sc.name, "balancer": getattr(sc, "balancer", None), "targets": targets})
    by_name = {s["name"]: s for s in services}
    extra = set(up) | set(health) | set(circuit) | _view_targets(ctx)
    for service, url in sorted(extra - seen):
        if not service or not url:
            continue
        entry = by_name.get(service)
        if entry is None:
            entry = by_name[service] = {"name": service, "balancer": None, "targets": []}
            services.append(entry)
        entry["targets"].append(target_entry(service, url))
        seen.add((service, url))

    routes = []
    for s in sorted(requests, key=lambda r: (r.route == "", r.route)):
        total = sum(s.counts.values())
        errors = sum(n for (_, code), n in s.counts.items() if code.startswith("5"))
        client_errors = sum(n for (_, code), n in s.counts.items() if code.startswith("4"))
        routes.append({"name": s.route or None, "service": s.service or None, "requests": total,
                       "errors": errors, "client_errors": client_errors,
                       "buckets": [[le if le != float("inf") else None, n] for le, n in s.duration.buckets],
                       "duration_sum": round(s.duration.sum, 6)})
    status = ctx.state.status if ctx.state is not None else {"redis": "off", "instances": 1}
    return {
        "time": time.time(),
        "services": services,
        "routes": routes,
        "ratelimit": [{"route": r, "result": res, "count": n} for (r, res), n in sorted(limits.items())],
        "auth_failures": auth_failures,
        "redis": status.get("redis"),
        "instances": status.get("instances"),
    }


def _config(ctx: Any) -> Any:
    try:
        return ctx.config()
    except Exception:  # noqa: BLE001 - no config readable: services come from what is observed
        log.exception("status: the config could not be read")
        return None


def _view_targets(ctx: Any) -> set[tuple[str, str]]:
    """Targets registered at run time, as the view holds them (`targets/<service>/<id>` → {url})."""
    out: set[tuple[str, str]] = set()
    view = ctx.state.view if ctx.state is not None else None
    data = getattr(view, "data", None)
    if not isinstance(data, dict):
        return out
    for key, value in list(data.items()):
        if isinstance(key, str) and key.startswith("targets/") and isinstance(value, dict):
            parts = key.split("/")
            url = value.get("url")
            if len(parts) >= 3 and isinstance(url, str):
                out.add((parts[1], url))
    return out
