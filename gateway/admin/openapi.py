"""/openapi.json: an OpenAPI 3.1 document generated from the admin route table.

Generated, not hand-written, so it can never describe an endpoint that does not exist or miss
one that does: every `AdminRoutes.add()` of a later issue appears here with its summary, path
parameters, request body schema and the bearer-token requirement of writes.
"""
from __future__ import annotations

from typing import Any

import orjson

from gateway.admin.api import AdminRequest, AdminResponse, AdminRoutes
from gateway.admin.health import SCHEMAS as HEALTH_SCHEMAS

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable error code"},
        "message": {"type": "string", "description": "one human sentence"},
        "request_id": {"type": ["string", "null"]},
    },
}


def build_openapi(routes: AdminRoutes, version: str | None = None) -> dict[str, Any]:
    if version is None:
        from gateway import __version__ as version
    paths: dict[str, dict[str, Any]] = {}
    for r in routes.routes:
        op: dict[str, Any] = {
            "summary": r.summary or f"{r.method} {r.pattern}",
            "operationId": _operation_id(r.method, r.pattern),
            "tags": [r.tag],
            "responses": dict(r.responses),
        }
        op["responses"].setdefault("default", {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        })
        if r.params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in r.params
            ]
        if r.request_body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": r.request_body}},
            }
        if r.auth:
            op["security"] = [{"adminToken": []}]
            op["responses"].setdefault("401", {"description": "Missing or wrong bearer token"})
            op["responses"].setdefault("403", {"description": "GATEWAY_ADMIN_TOKEN is unset (admin is read-only)"})
        paths.setdefault(r.pattern, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway admin API",
            "version": version,
            "description": "Operator API of the gateway. Reads are open on the admin listener, except "
            "those that show the configuration (`/config`, `/routes`); writes and those need "
            "`Authorization: Bearer $GATEWAY_ADMIN_TOKEN` (the token's UTF-8 bytes, "
            "exactly one Authorization field). Every request must name a Host the listener "
            "answers: its own address, `localhost` or a name in GATEWAY_ADMIN_HOSTS (any port), "
            "else 421 `misdirected_request`. Connections beyond GATEWAY_ADMIN_MAX_CONNECTIONS get "
            "503 `too_many_connections` with Retry-After. Heads over the limits get 414/431, "
            "bodies over 1 MiB 413, Upgrade 400, CONNECT 501.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **HEALTH_SCHEMAS},
            "securitySchemes": {"adminToken": {
                "type": "http", "scheme": "bearer",
                "description": "GATEWAY_ADMIN_TOKEN, compared byte for byte with the credentials "
                "(UTF-8; only spaces and tabs around them are ignored)"}},
        },
    }


def _operation_id(method: str, pattern: str) -> str:
    words = [w.strip("{}") for w in pattern.strip("/").replace(".", "_").split("/") if w]
    return method.lower() + "_" + "_".join(words or ["root"])


def openapi_handler(routes: AdminRoutes) -> Any:
    """A handler serving the document, re-rendered only when the route table changed."""
    cache: dict[str, Any] = {"version": -1, "body": b""}

    def handler(req: AdminRequest) -> AdminResponse:
        if cache["version"] != routes.version:
            cache["body"] = orjson.dumps(build_openapi(routes), option=orjson.OPT_INDENT_2)
            cache["version"] = routes.version
        return AdminResponse(200, cache["body"], "application/json")

    return handler
