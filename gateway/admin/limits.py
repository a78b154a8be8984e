"""Admin endpoints of rate limits and quotas (SPEC §5, §8).

GET    /limits                         what is in force: the TOML plus live overrides
PUT    /limits/routes/{route}          {"rate_limits": [...]} replaces a route's policies
PUT    /limits/quotas/orgs/{org}       {"limit", "window", "user_limit"?} sets an org's override
DELETE /limits/quotas/orgs/{org}       removes it
PUT    /limits/quotas/users/{user}     {"limit", "window"} sets a user's override
DELETE /limits/quotas/users/{user}     removes it

Bodies are validated by the TOML's own rules (gateway/config/limits_schema.py): a bad one answers
400 naming the field (`rate_limits[0].burst: ...`). A valid change goes through
`state.control.put/delete` (with Redis: persisted and published first, so it reaches every
instance and survives restarts; 503 and no change while Redis is unreachable); each worker then
rebuilds its runtime with it (gateway/worker.py), within milliseconds. Every change is audited
(a `gateway.audit` log line: admin_change, the key and the new value).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.admin.api import AdminError, AdminRequest, AdminResponse, json_response
from gateway.admin.changes import audit_change, write_state
from gateway.config.limits_schema import parse_name, parse_policy, parse_quota
from gateway.filters import limits_live

if TYPE_CHECKING:
    from gateway.admin.api import AdminRoutes
    from gateway.admin.features import AdminContext


_POLICY_SCHEMA = {
    "type": "object", "required": ["key", "limit", "window"],
    "properties": {
        "key": {"type": "string", "description": "ip | user | org | api_key | route | header:NAME"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        "window": {"type": "number", "minimum": 0.001, "maximum": 2678400},
        "algorithm": {"type": "string", "enum": ["sliding_window", "token_bucket"]},
        "burst": {"type": "integer", "minimum": 0, "description": "token_bucket only"},
    },
}
_QUOTA_SCHEMA = {
    "type": "object", "required": ["limit", "window"],
    "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        "window": {"type": "number", "minimum": 0.001, "maximum": 2678400},
        "user_limit": {"type": "integer", "minimum": 1, "description": "orgs only: each user's share"},
    },
}
_BAD = {"400": {"description": "invalid body: the message names the field"}}


class _Problems:
    """The collector limits_schema expects, raising the first problem as a 400."""

    def __init__(self) -> None:
        from gateway.config.schema import _Collector

        self._c = _Collector()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def raise_first(self) -> None:
        if self._c.problems:
            raise AdminError(400, "bad_request", "; ".join(self._c.problems))


def _body(request: AdminRequest) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise AdminError(400, "bad_request", "expected a JSON object")
    return body


def install(routes: AdminRoutes, ctx: AdminContext) -> None:
    async def write(key: str, value: Any) -> AdminResponse:
        await write_state(ctx, key, value)
        audit_change(None, "limits_delete" if value is None else "limits_put", key=key, value=value)
        return json_response({"key": key, "value": value})

    def get_limits(request: AdminRequest) -> AdminResponse:
        view = ctx.state.view
        return json_response(limits_live.describe(ctx.config(), view.items(limits_live.PREFIX)))

    async def put_route(request: AdminRequest) -> AdminResponse:
        name = request.params["route"]
        if name not in {r.name for r in ctx.config().routes}:
            raise AdminError(404, "not_found", f"no route named {name!r}")
        body = _body(request)
        c = _Problems()
        c.unknown_keys("", body, {"rate_limits"})
        raw = body.get("rate_limits")
        if not isinstance(raw, list):
            c.error("rate_limits", "required: an array of policies (the TOML's [[routes.rate_limits]] shape)")
            c.raise_first()
            raw = []
        policies = [parse_policy(c, f"rate_limits[{i}]", p) for i, p in enumerate(raw)]
        c.raise_first()
        value = [p.as_dict() for p in policies if p is not None]
        return await write(limits_live.ROUTES + name, value)

    def quota_handlers(kind: str, prefix: str, param: str) -> tuple[Any, Any]:
        async def put(request: AdminRequest) -> AdminResponse:
            who = request.params[param]
            c = _Problems()
            parse_name(c, param, who)
            q = parse_quota(c, "", _body(request), org=kind == "orgs")
            c.raise_first()
            assert q is not None
            return await write(prefix + who, q.as_dict())

        async def delete(request: AdminRequest) -> AdminResponse:
            who = request.params[param]
            if ctx.state.view.get(prefix + who) is None:
                raise AdminError(404, "not_found", f"no live override for {kind[:-1]} {who!r}")
            return await write(prefix + who, None)

        return put, delete

    def get_top(request: AdminRequest) -> AdminResponse:
        import time
        from urllib.parse import parse_qs

        from gateway._fast.heavy_hitters import HeavyHitters
        from gateway.filters.ratelimit import TOP_K, TOP_NAME, TOP_PERIOD

        try:
            n = int(parse_qs(request.query).get("n", ["20"])[0])
        except ValueError:
            raise AdminError(400, "bad_request", "n: expected an integer 1-256") from None
        if not 1 <= n <= TOP_K:
            raise AdminError(400, "bad_request", "n: expected an integer 1-256")
        memory = ctx.state.memory
        info = memory.info(TOP_NAME) if memory is not None else None
        if memory is None or info is None or info.quarantined:
            return json_response({"period": TOP_PERIOD, "rejections": 0, "top": []})
        sketch = HeavyHitters(TOP_K, TOP_PERIOD, buffer=memory._view[info.offset:info.offset + info.size])
        top = []
        for text, count, error in sketch.top(n, time.monotonic()):
            route, policy, key = (text.split("|", 2) + ["", ""])[:3]
            top.append({"route": route, "policy": policy, "key": key, "rejections": count,
                        "error": error})
        return json_response({"period": TOP_PERIOD, "rejections": sketch.total, "top": top})

    routes.add("GET", "/ratelimit/top", get_top, tag="limits",
               summary="The most rate-limited keys of the last 1-2 minutes, node-wide (a space-saving "
                       "sketch: `rejections` is an upper bound, `rejections - error` a lower one)")
    routes.add("GET", "/limits", get_limits, tag="limits",
               summary="Rate limits and quotas in force (TOML plus live overrides)")
    routes.add("PUT", "/limits/routes/{route}", put_route, tag="limits",
               summary="Replace a route's rate-limit policies",
               request_body={"type": "object", "required": ["rate_limits"],
                             "properties": {"rate_limits": {"type": "array", "items": _POLICY_SCHEMA}}},
               responses={"200": {"description": "applied"}, "404": {"description": "no such route"}, **_BAD})
    for kind, prefix, param in (("orgs", limits_live.ORGS, "org"), ("users", limits_live.USERS, "user")):
        put, delete = quota_handlers(kind, prefix, param)
        routes.add("PUT", f"/limits/quotas/{kind}/{{{param}}}", put, tag="limits",
                   summary=f"Set a quota override for one {param}", request_body=_QUOTA_SCHEMA,
                   responses={"200": {"description": "applied"}, **_BAD})
        routes.add("DELETE", f"/limits/quotas/{kind}/{{{param}}}", delete, tag="limits",
                   summary=f"Remove a {param}'s quota override",
                   responses={"200": {"description": "removed"}, "404": {"description": "no override"}})


def decision_samples(ctx: AdminContext) -> Any:
    """METRIC_SOURCES: gateway_ratelimit_decisions_total{route,policy,result}, node totals read
    from the counters the workers keep in node memory (found by name, see
    gateway/filters/ratelimit.py decisions_name)."""
    from gateway._fast.counters import CounterArray
    from gateway.filters.ratelimit import decisions_name, policy_labels

    memory = ctx.state.memory
    if memory is None:
        return
    routes, _ = limits_live.effective(ctx.config(), ctx.state.view.items(limits_live.PREFIX))
    for route, policies in routes.items():
        info = memory.info(decisions_name(route, policies))
        if info is None or info.quarantined:
            continue
        labels = policy_labels(policies)
        # Read-only use of the placed bytes: the scrape must not become a holder of them.
        cells = CounterArray(2 * len(labels), buffer=memory._view[info.offset:info.offset + info.size])
        values = cells.values()
        for i, label in enumerate(labels):
            for j, result in enumerate(("allowed", "rejected")):
                yield ("gateway_ratelimit_decisions_total", "counter",
                       "Rate-limit and quota decisions, per route, policy and result",
                       {"route": route, "policy": label, "result": result}, float(values[2 * i + j]))
