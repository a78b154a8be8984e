"""Discovery's admin routes (SPEC §5) and metrics.

    GET    /services                                   every service's targets: health, breaker,
                                                       weight, version, source, last heartbeat
    POST   /services/{name}/targets                    register {"url", "weight"?, "version"?,
                                                       "metadata"?, "ttl"?} → 201 {"id", ...}
    DELETE /services/{name}/targets/{id}               deregister
    PUT    /services/{name}/targets/{id}/heartbeat     renew a TTL registration
    PUT    /routes/{name}/canary                       {"version", "weight", "header"?} at run time

Writes go through `state.control.put/delete("targets/<service>/<id>")` (gateway/discovery/
registry.py says how they reach every worker and instance); they need the admin token (the admin
app checks it before the handler runs) and leave an audit line on the `gateway.audit` logger.
Bad input is a 400 whose message starts with the field's name.

Health shown: the node checker's verdict from node memory for checked services (the same bytes
every worker reads); passive health is per worker and shown only where the listener is the
worker itself (GATEWAY_WORKERS=1). Breaker state: `target.breaker.state` when the breaker
feature hangs an object there (lone worker), else the `breaker_state` hook below, else null.
"""
from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from ..admin.api import AdminError, AdminRequest, AdminResponse, json_response
from . import health, registry

if TYPE_CHECKING:
    from ..admin.api import AdminRoutes
    from ..admin.features import AdminContext

log = logging.getLogger("gateway.discovery")

FIELDS = {"url", "weight", "version", "metadata", "ttl"}
MAX_METADATA = 4096          # bytes of JSON
MAX_TTL = 86400.0
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

# (service, target url) → breaker state name, or None. The breaker feature may replace it to show
# circuits in GET /services where no runtime is at hand (the supervisor).
breaker_state: Callable[[AdminContext, str, str], str | None] = lambda ctx, service, url: None  # noqa: E731


def _bad(field: str, message: str) -> AdminError:
    return AdminError(400, "bad_request", f"{field}: {message}")


def validate(body: Any) -> dict[str, Any]:
    """The registration body → the fields to store; AdminError(400) naming the first bad field."""
    from ..config.ranges import RANGES
    from ..config.schema import _Collector, _parse_target_url

    if not isinstance(body, dict):
        raise AdminError(400, "bad_request", "body: expected a JSON object with at least \"url\"")
    for key in body:
        if key not in FIELDS:
            raise _bad(str(key)[:64], "unknown field")
    if "url" not in body:
        raise _bad("url", "required")
    c = _Collector()
    hp = _parse_target_url(c, "url", body["url"])
    if hp is None:
        raise AdminError(400, "bad_request", c.problems[0] if c.problems else "url: invalid")
    weight = body.get("weight", 1)
    rng = RANGES["services[].targets[].weight"]
    if isinstance(weight, bool) or not isinstance(weight, int) or weight not in rng:
        raise _bad("weight", f"expected {rng.form}, got {weight!r}"[:200])
    version = body.get("version")
    if version is not None and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
        raise _bad("version", "expected letters, digits, '.', '_', '+' or '-' (max 64)")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata", "expected a JSON object")
        if len(orjson.dumps(metadata)) > MAX_METADATA:
            raise _bad("metadata", f"at most {MAX_METADATA} bytes of JSON")
    ttl = body.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl)
                            or not 0 < ttl <= MAX_TTL):
        raise _bad("ttl", f"expected seconds in (0, {MAX_TTL:.0f}], got {ttl!r}"[:200])
    url = body["url"].rstrip("/")
    return {"url": url, "host": hp[0], "port": hp[1], "weight": weight, "version": version,
            "metadata": metadata, "ttl": float(ttl) if ttl is not None else None}


def _service_config(ctx: AdminContext, name: str) -> Any:
    sc = ctx.config().service_map.get(name)
    if sc is None:
        raise _bad("name", f"unknown service {name!r}")
    return sc


def _control(ctx: AdminContext) -> Any:
    control = ctx.state.control
    if control is None:
        raise AdminError(503, "unavailable", "this process holds no control plane")
    return control


async def _write(ctx: AdminContext, key: str, value: Any) -> None:
    from gateway.admin.changes import write_state

    await write_state(ctx, key, value)


def _audit(action: str, service: str, target_id: str, **details: Any) -> None:
    from gateway.admin.changes import audit_change

    audit_change(None, action, service=service, target=target_id, **details)


def install(routes: AdminRoutes, ctx: AdminContext) -> None:
    async def register(req: AdminRequest) -> AdminResponse:
        name = req.params["name"]
        sc = _service_config(ctx, name)
        fields = validate(req.json())
        view = ctx.state.view
        if any(t.url.rstrip("/") == fields["url"] or (t.host, t.port) == (fields["host"], fields["port"])
               for t in sc.targets):
            raise AdminError(409, "conflict", f"url: {fields['url']} is a configured target of {name}")
        existing = registry.registered(view, name)
        found = next((i for i, v in existing if v.get("url") == fields["url"]), None)
        now = time.time()
        created = found is None
        tid = found or ""
        if created:
            if len(existing) >= registry.MAX_TARGETS_PER_SERVICE:
                raise AdminError(409, "conflict", f"{name} already has {registry.MAX_TARGETS_PER_SERVICE} "
                                                  "registered targets")
            tid = secrets.token_hex(6)
            registered_at = now
        else:
            registered_at = view.get(registry.key_of(name, tid), {}).get("registered", now)
        value = {**fields, "registered": registered_at, "heartbeat": now}
        await _write(ctx, registry.key_of(name, tid), value)
        _audit("register" if created else "update", name, tid, url=fields["url"])
        return json_response({"id": tid, "service": name, **_public(value)}, 201 if created else 200)

    async def deregister(req: AdminRequest) -> AdminResponse:
        name, tid = req.params["name"], req.params["id"]
        _service_config(ctx, name)
        key = registry.key_of(name, tid)
        if ctx.state.view.get(key) is None:
            raise AdminError(404, "not_found", f"id: no registered target {tid!r} in {name}")
        await _write(ctx, key, None)
        _audit("deregister", name, tid)
        return json_response({"id": tid, "service": name, "removed": True})

    async def heartbeat(req: AdminRequest) -> AdminResponse:
        name, tid = req.params["name"], req.params["id"]
        _service_config(ctx, name)
        key = registry.key_of(name, tid)
        value = ctx.state.view.get(key)
        if not isinstance(value, dict):
            raise AdminError(404, "not_found", f"id: no registered target {tid!r} in {name}")
        now = time.time()
        await _write(ctx, key, {**value, "heartbeat": now})
        ttl = value.get("ttl")
        return json_response({"id": tid, "service": name, "heartbeat": now,
                              "expires_in": ttl})

    async def set_canary(req: AdminRequest) -> AdminResponse:
        from . import canary

        name = req.params["name"]
        rc = next((r for r in ctx.config().routes if r.name == name), None)
        if rc is None:
            raise _bad("name", f"unknown route {name!r}")
        if rc.canary is None:
            raise AdminError(409, "conflict", f"name: route {name!r} has no canary in its config "
                                              "(add `canary = {{ version, weight }}` and reload)")
        try:
            value = canary.validate(req.json())
        except ValueError as exc:
            raise AdminError(400, "bad_request", str(exc)) from None
        await _write(ctx, canary.PREFIX + name, value)
        from gateway.admin.changes import audit_change

        audit_change(req, "canary", route=name, **value)
        return json_response({"route": name, **value})

    def services(req: AdminRequest) -> AdminResponse:
        return json_response({"services": list(describe(ctx))})

    body = {"content": {"application/json": {"schema": {
        "type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "example": "http://10.0.0.5:8080"},
            "weight": {"type": "integer", "minimum": 1, "maximum": 65535},
            "version": {"type": "string"}, "metadata": {"type": "object"},
            "ttl": {"type": "number", "description": "seconds; renew with PUT .../heartbeat"}}}}}}
    errors = {"400": {"description": "bad input; the message names the field"},
              "401": {"description": "admin token missing or wrong"}}
    routes.add("GET", "/services", services, tag="discovery",
               summary="Every service's targets with health, breaker state, weight, version, source, heartbeat")
    routes.add("POST", "/services/{name}/targets", register, tag="discovery", request_body=body,
               summary="Register a target (same url again: update); it takes traffic everywhere within 1 s",
               responses={"201": {"description": "registered: {id, ...}"}, "200": {"description": "updated"},
                          "409": {"description": "a configured target, or too many"}, **errors})
    routes.add("DELETE", "/services/{name}/targets/{id}", deregister, tag="discovery",
               summary="Deregister a target", responses={"200": {"description": "removed"},
                                                         "404": {"description": "no such registration"}, **errors})
    routes.add("PUT", "/routes/{name}/canary", set_canary, tag="discovery", request_body={
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["version", "weight"], "properties": {
                "version": {"type": "string", "example": "v2"},
                "weight": {"type": "integer", "minimum": 0, "maximum": 100,
                           "description": "percent of users (sticky per user) sent to `version`"},
                "header": {"type": "string", "description": "request header whose value always/never overrides"}}}}}},
               summary="Change a route's canary at run time (every worker and instance within 1 s)",
               responses={"200": {"description": "applied: {route, version, weight, header}"},
                          "409": {"description": "the route has no canary in its config"}, **errors})
    routes.add("PUT", "/services/{name}/targets/{id}/heartbeat", heartbeat, tag="discovery",
               summary="Renew a TTL registration", responses={"200": {"description": "renewed"},
                                                              "404": {"description": "no such registration"},
                                                              **errors})


def _public(value: dict[str, Any]) -> dict[str, Any]:
    return {k: value.get(k) for k in ("url", "weight", "version", "metadata", "ttl", "registered", "heartbeat")}


def describe(ctx: AdminContext) -> Iterable[dict[str, Any]]:
    config = ctx.config()
    runtime = ctx.runtime()
    memory = ctx.state.memory
    for sc in config.services:
        live = runtime.services.get(sc.name) if runtime is not None else None
        live_targets = {t.url: t for t in live.targets} if live is not None else {}
        rows = []
        entries: list[tuple[str, str, dict[str, Any]]] = [
            (tc.id, "config", {"url": tc.url, "weight": tc.weight, "version": tc.version}) for tc in sc.targets]
        entries += [(tid, "registered", v) for tid, v in registry.registered(ctx.state.view, sc.name)]
        for tid, source, v in entries:
            url = str(v.get("url"))
            t = live_targets.get(url)
            row: dict[str, Any] = {"id": tid, "url": url, "source": source, "weight": v.get("weight", 1),
                                   "version": v.get("version"), "healthy": True, "breaker": None}
            if source == "registered":
                row.update(metadata=v.get("metadata"), ttl=v.get("ttl"), registered=v.get("registered"),
                           last_heartbeat=v.get("heartbeat"))
            if sc.health is not None and memory is not None:
                from ..state.memory import SUPERVISOR

                rec = health.place_record(memory, SUPERVISOR, sc.name, url)
                snap = rec.snapshot()
                row["healthy"] = snap["healthy"]
                row["check"] = snap
            if t is not None:
                row["healthy"] = bool(t.available)
                if t.passive_until:
                    row["passive"] = "down"
                br = t.breaker
                if br is not None:
                    row["breaker"] = getattr(br, "state_name", None) or str(getattr(br, "state", br))
            if row["breaker"] is None:
                row["breaker"] = breaker_state(ctx, sc.name, url)
            rows.append(row)
        yield {"name": sc.name, "balancer": sc.balancer, "hash_key": sc.hash_key,
               "health_checks": sc.health is not None, "targets": rows}


def _errors(ctx: AdminContext, service: str, url: str, keep: set[str]) -> list[int] | None:
    """The target's upstream error counters from node memory (placed by the workers), if any."""
    from .._fast.counters import CounterArray
    from ..state.memory import SUPERVISOR
    from .service import ERROR_KINDS
    from .wiring import ERRORS_SIZE, errors_name

    memory = ctx.state.memory
    name = errors_name(service, url)
    if memory is None or memory.info(name) is None:
        return None
    keep.add(name)
    holder = SUPERVISOR if ctx.runtime() is None else ctx.state.holder
    return CounterArray(len(ERROR_KINDS), memory.place(name, ERRORS_SIZE, holder, kind="errors")).values()


def _release_stale_errors(ctx: AdminContext, keep: set[str]) -> None:
    """The supervisor reads counters of targets that may since have gone: drop its hold on those."""
    from ..state.memory import SUPERVISOR

    memory = ctx.state.memory
    if memory is None or ctx.runtime() is not None:
        return
    bit = 1 << SUPERVISOR
    names = [o.name for o in memory.objects()
             if o.holders & bit and (not o.name.startswith("upstream_errors/") or o.name in keep)]
    memory.sync_holder(SUPERVISOR, names)


def metric_samples(ctx: AdminContext) -> Iterable[tuple[str, str, str, dict[str, str], float]]:
    """gateway_target_healthy{service,target} (1/0), the checker's probe counters and
    gateway_upstream_errors_total{service,target,kind}."""
    from .service import ERROR_KINDS

    keep: set[str] = set()
    for svc in list(describe(ctx)):
        for row in svc["targets"]:
            labels = {"service": svc["name"], "target": row["url"]}
            errs = _errors(ctx, svc["name"], row["url"], keep)
            if errs is not None:
                for kind, n in zip(ERROR_KINDS, errs, strict=True):
                    yield ("gateway_upstream_errors_total", "counter", "Upstream attempts that failed, by kind",
                           {**labels, "kind": kind}, float(n))
            yield ("gateway_target_healthy", "gauge", "1 when the target is in rotation (health checks and passive "
                   "health), else 0", labels, 1.0 if row["healthy"] else 0.0)
            check = row.get("check")
            if check is not None:
                yield ("gateway_health_checks_total", "counter", "Active health probes sent to the target",
                       labels, float(check["checks"]))
                yield ("gateway_health_check_failures_total", "counter", "Active health probes that failed",
                       labels, float(check["failures"]))
    _release_stale_errors(ctx, keep)
