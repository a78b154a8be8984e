"""GET /config and GET /routes: what is in force, for an operator (admin token required).

/config is `gateway check --dump` as JSON (gateway/config/effective.py): the version, the file, every
variable with secrets masked, the TOML's services, routes and quotas with every default filled in,
plus the live overrides an admin write has put on top (rate limits, quotas, canaries).
/routes is the route table as it answers now: each route with the rate limits and canary in force
(the TOML's, or a live override's, `overridden` naming which).

Both need the admin token even though they write nothing: the topology, the upstream addresses and
the policies are an attacker's map. Installed in both kinds of process through FEATURES
(gateway/admin/features.py), so they answer the same with one worker or many.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.admin.api import AdminRequest, AdminResponse, json_response

if TYPE_CHECKING:
    from gateway.admin.api import AdminRoutes
    from gateway.admin.features import AdminContext

_OBJECT = {"type": "object"}
CONFIG_SCHEMA = {
    "type": "object",
    "required": ["version", "config_file", "environment", "services", "routes", "quotas", "overrides"],
    "properties": {
        "version": {"type": "string"},
        "config_file": {"type": ["string", "null"], "description": "GATEWAY_CONFIG"},
        "environment": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "every GATEWAY_* variable as in force; secrets `<set, hidden>`, "
                                       "URL passwords `***`"},
        "services": {"type": "array", "items": _OBJECT, "description": "[[services]] under their TOML keys"},
        "routes": {"type": "array", "items": _OBJECT, "description": "[[routes]] under their TOML keys"},
        "quotas": {"type": ["object", "null"]},
        "overrides": {"type": "object", "description": "live admin changes on top of the file, by state key "
                                                       "(limits/..., canary/...)"},
    },
}
ROUTES_SCHEMA = {
    "type": "object", "required": ["routes"],
    "properties": {"routes": {"type": "array", "items": {
        "type": "object", "required": ["name", "path", "service", "rate_limits", "overridden"],
        "properties": {
            "name": {"type": "string"}, "path": {"type": "string", "description": "`=` prefix: exact match"},
            "host": {"type": "string"}, "methods": {"type": ["array", "null"], "items": {"type": "string"}},
            "service": {"type": "string"}, "targets": {"type": "array", "items": {"type": "string"}},
            "rate_limits": {"type": "array", "items": _OBJECT}, "canary": {"type": ["object", "null"]},
            "overridden": {"type": "array", "items": {"enum": ["rate_limits", "canary"]},
                           "description": "what a live admin change set, instead of the file"},
        }}}},
}


def _overrides(ctx: AdminContext) -> dict[str, Any]:
    from gateway.discovery.canary import PREFIX as CANARY_PREFIX
    from gateway.filters import limits_live

    view = ctx.state.view
    items = list(view.items(limits_live.PREFIX)) + list(view.items(CANARY_PREFIX))
    return {k: v for k, v in sorted(items) if v is not None}


def config_body(ctx: AdminContext) -> dict[str, Any]:
    from gateway.config.effective import effective

    return {**effective(ctx.settings, ctx.config()), "overrides": _overrides(ctx)}


def routes_body(ctx: AdminContext) -> dict[str, Any]:
    from gateway.config.effective import route_dict
    from gateway.discovery.canary import PREFIX as CANARY_PREFIX
    from gateway.filters import limits_live

    config = ctx.config()
    view = ctx.state.view
    limits, _ = limits_live.effective(config, view.items(limits_live.PREFIX))
    out = []
    for r in config.routes:
        d = route_dict(r)
        overridden = []
        if view.get(limits_live.ROUTES + r.name) is not None:
            overridden.append("rate_limits")
        d["rate_limits"] = [p.as_dict() for p in limits.get(r.name, r.rate_limits)]
        live_canary = view.get(CANARY_PREFIX + r.name)
        if r.canary is not None and isinstance(live_canary, dict):
            d["canary"] = live_canary
            overridden.append("canary")
        d.setdefault("canary", None)
        service = config.service_map.get(r.service)
        d["targets"] = [t.url for t in service.targets] if service is not None else []
        d["overridden"] = overridden
        out.append(d)
    return {"routes": out}


def install(routes: AdminRoutes, ctx: AdminContext) -> None:
    def get_config(req: AdminRequest) -> AdminResponse:
        return json_response(config_body(ctx))

    def get_routes(req: AdminRequest) -> AdminResponse:
        return json_response(routes_body(ctx))

    def ok(schema: dict[str, Any], what: str) -> dict[str, Any]:
        return {"200": {"description": what, "content": {"application/json": {"schema": schema}}}}

    routes.add("GET", "/config", get_config, auth=True, tag="config",
               summary="The configuration in force (gateway check --dump as JSON; secrets masked)",
               responses=ok(CONFIG_SCHEMA, "the effective configuration"))
    routes.add("GET", "/routes", get_routes, auth=True, tag="config",
               summary="The route table in force, with live rate-limit and canary overrides",
               responses=ok(ROUTES_SCHEMA, "every route, in file order"))
