"""Live limits (SPEC §8): the admin API's overrides, kept in the dynamic state, on top of the TOML.

Keys in the state (written only by gateway/admin/limits.py, validated like the TOML):

  limits/routes/<route>          [{key, limit, window, algorithm, burst?}, ...]  replaces the route's policies
  limits/quotas/orgs/<org>       {limit, window, user_limit?}                    an org's override
  limits/quotas/users/<user>     {limit, window}                                 a user's override

`effective()` merges them into what is in force; build_runtime compiles that, so a worker that
starts (or reloads) later applies the same overrides. A change reaches each worker's StateView
(with Redis: every instance's, and it survives restarts), and the worker rebuilds its runtime off
the hot path (gateway/worker.py subscribes): the tables are placed by name, so unchanged policies
keep their counts and a changed one starts a fresh table.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.config.model import GatewayConfig, QuotaLimit, QuotasConfig, RateLimitConfig

PREFIX = "limits/"
ROUTES = "limits/routes/"
ORGS = "limits/quotas/orgs/"
USERS = "limits/quotas/users/"


def policy_from_dict(d: dict[str, Any]) -> RateLimitConfig:
    return RateLimitConfig(key=d["key"], limit=int(d["limit"]), window=float(d["window"]),
                           algorithm=d.get("algorithm", "sliding_window"), burst=int(d.get("burst", 0)))


def quota_from_dict(d: dict[str, Any]) -> QuotaLimit:
    ul = d.get("user_limit")
    return QuotaLimit(limit=int(d["limit"]), window=float(d["window"]),
                      user_limit=int(ul) if ul is not None else None)


def effective(config: GatewayConfig, items: Iterable[tuple[str, Any]]
              ) -> tuple[dict[str, tuple[RateLimitConfig, ...]], QuotasConfig | None]:
    """(route name → policies in force, quotas in force) for `config` plus the state's overrides."""
    routes = {r.name: r.rate_limits for r in config.routes}
    base = config.quotas
    orgs = dict(base.orgs) if base is not None else {}
    users = dict(base.users) if base is not None else {}
    touched = False
    for key, value in items:
        if value is None:
            continue
        if key.startswith(ROUTES):
            name = key[len(ROUTES):]
            if name in routes:              # a route the config no longer has: nothing to limit
                routes[name] = tuple(policy_from_dict(d) for d in value)
        elif key.startswith(ORGS):
            orgs[key[len(ORGS):]] = quota_from_dict(value)
            touched = True
        elif key.startswith(USERS):
            users[key[len(USERS):]] = quota_from_dict(value)
            touched = True
    if not touched:
        return routes, base
    return routes, QuotasConfig(default_user=base.default_user if base else None,
                                default_org=base.default_org if base else None, orgs=orgs, users=users)


def describe(config: GatewayConfig, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """GET /limits: what is in force, and which parts are live overrides."""
    items = list(items)
    routes, quotas = effective(config, items)
    out: dict[str, Any] = {
        "routes": {name: [p.as_dict() for p in ps] for name, ps in routes.items()},
        "quotas": None,
        "overrides": sorted(k for k, v in items if v is not None and k.startswith(PREFIX)),
    }
    if quotas is not None:
        out["quotas"] = {
            "default_user": quotas.default_user.as_dict() if quotas.default_user else None,
            "default_org": quotas.default_org.as_dict() if quotas.default_org else None,
            "orgs": {k: v.as_dict() for k, v in sorted(quotas.orgs.items())},
            "users": {k: v.as_dict() for k, v in sorted(quotas.users.items())},
        }
    return out
