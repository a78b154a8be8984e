"""Admin API and metrics of the circuit breakers (SPEC §5, §6; issue 9).

  GET  /breakers                               every circuit: state, counts, failure ratio, since,
                                               next probe, forced or not
  POST /breakers/{service}/{target}/open       force it open (held until a close)
  POST /breakers/{service}/{target}/close      close it now (a fresh window; ends a forced open)

`{target}` is the target's id (`127.0.0.1:9001`) or its URL, percent-encoded. A forced state is one
write to the dynamic state (`breakers/forced/<service>/<target id>`): with Redis it is persisted
and reaches every instance, and each node's control process applies it to the breaker in node
memory that all its workers read (breaker_control.py), so it holds everywhere within a second and
survives a restart. Writes need the admin token and are audited.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from gateway.admin.api import AdminError, AdminRequest, AdminResponse, json_response
from gateway.admin.changes import audit_change
from gateway.discovery.breaker_control import FORCED_PREFIX, OPEN_PREFIX, NodeBreakers

if TYPE_CHECKING:
    from gateway.admin.api import AdminRoutes
    from gateway.admin.features import AdminContext, MetricSample


# One NodeBreakers per admin context (one per process that serves the admin API).
_NODES: dict[int, tuple[Any, NodeBreakers]] = {}


def node_breakers(ctx: AdminContext) -> NodeBreakers:
    found = _NODES.get(id(ctx))
    if found is not None and found[0] is ctx:
        return found[1]
    nb = NodeBreakers(ctx.state, ctx.config)
    _NODES[id(ctx)] = (ctx, nb)
    try:
        nb.start(asyncio.get_running_loop())
    except RuntimeError:
        pass    # built outside a loop (a test reading metrics): no watcher
    return nb


_TARGET = {"type": "object", "properties": {
    "id": {"type": "string"}, "url": {"type": "string"},
    "state": {"type": "string", "enum": ["closed", "half_open", "open"]},
    "code": {"type": "integer", "description": "0 closed, 1 half-open, 2 open"},
    "forced": {"type": "boolean"}, "since": {"type": ["number", "null"]},
    "next_probe": {"type": ["number", "null"]}, "consecutive_failures": {"type": "integer"},
    "window_requests": {"type": "integer"}, "window_failures": {"type": "integer"},
    "failure_ratio": {"type": "number"}, "probes_admitted": {"type": "integer"},
    "probe_successes": {"type": "integer"}, "open_timeout": {"type": "number"},
}}


def install(routes: AdminRoutes, ctx: AdminContext) -> None:
    nb = node_breakers(ctx)

    def get_breakers(req: AdminRequest) -> AdminResponse:
        return json_response({"services": nb.by_service()})

    def force(state: str) -> Any:
        async def handler(req: AdminRequest) -> AdminResponse:
            from gateway.state.control import StateLimit, StateUnavailable

            service, target = unquote(req.params["service"]), unquote(req.params["target"])
            e = nb.find(service, target)
            if e is None:
                raise AdminError(404, "not_found", f"no circuit breaker for target {target!r} of service "
                                 f"{service!r} (services with [services.breaker] have one per target)")
            control = ctx.state.control
            if control is None:
                raise AdminError(503, "unavailable", "this process holds no control plane")
            value = {"state": state, "at": round(time.time(), 3), "instance": ctx.state.instance}
            try:
                await control.put(FORCED_PREFIX + e.key, value)
                if state == "closed":
                    # An opening published from here must not reopen the others after the close.
                    await control.delete(OPEN_PREFIX + e.key)
            except StateUnavailable as exc:
                raise AdminError(503, "state_unavailable", str(exc)) from None
            except StateLimit as exc:
                raise AdminError(400, "bad_request", str(exc)) from None
            audit_change(req, f"breaker_force_{'open' if state == 'open' else 'close'}",
                         service=e.service, target=e.url)
            return json_response({"service": e.service, "target": e.url, "id": e.id, **nb.describe(e),
                                  "requested": state})
        return handler

    routes.add("GET", "/breakers", get_breakers, tag="breakers",
               summary="Every circuit breaker: state, counts, failure ratio, since, next probe, forced",
               responses={"200": {"description": "per service, its targets' circuits", "content": {
                   "application/json": {"schema": {"type": "object", "properties": {"services": {
                       "type": "array", "items": {"type": "object", "properties": {
                           "name": {"type": "string"}, "targets": {"type": "array", "items": _TARGET}}}}}}}}}})
    for action, state in (("open", "open"), ("close", "closed")):
        routes.add("POST", f"/breakers/{{service}}/{{target}}/{action}", force(state), tag="breakers",
                   summary=("Force the circuit open until a close" if state == "open"
                            else "Close the circuit now (ends a forced open)"),
                   responses={"200": {"description": "the circuit after the change, as GET /breakers shows it",
                                      "content": {"application/json": {"schema": _TARGET}}},
                              "401": {"description": "missing or wrong admin token"},
                              "404": {"description": "no such service, target, or no breaker on it"},
                              "503": {"description": "the state store (Redis) is unavailable: nothing changed"}})


def samples(ctx: AdminContext) -> Iterable[MetricSample]:
    """gateway_circuit_state and gateway_circuit_transitions_total, node totals from node memory."""
    return node_breakers(ctx).samples()
