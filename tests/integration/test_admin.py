"""The admin listener: /health, /ready, /openapi.json, JSON errors, the route table, bearer writes."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from gateway.admin.api import AdminRequest, AdminResponse, json_response
from gateway.admin.openapi import build_openapi
from gateway.admin.server import AdminApp, base_routes
from tests.support.gateway_proc import gateway, http_get, wait_until  # noqa: F401 - `gateway` is a fixture


def _app(token: str | None) -> AdminApp:
    routes = base_routes(lambda: (True, {}), lambda: {"pid": 1})

    def create_target(req: AdminRequest) -> AdminResponse:
        return json_response({"service": req.params["name"], "body": req.json()}, 201)

    routes.add("POST", "/services/{name}/targets", create_target, summary="Register a target",
               request_body={"type": "object"})
    return AdminApp(routes, token)


def _call(app: AdminApp, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> AdminResponse:
    return asyncio.run(app.handle(AdminRequest(method, path, "", headers or {}, body)))


def test_writes_need_the_bearer_token() -> None:
    app = _app("s3cret")
    assert _call(app, "POST", "/services/users/targets").status == 401
    assert _call(app, "POST", "/services/users/targets", {"authorization": "Bearer wrong"}).status == 401
    ok = _call(app, "POST", "/services/users/targets", {"authorization": "Bearer s3cret"}, b'{"url": "x"}')
    assert ok.status == 201
    assert json.loads(ok.body) == {"service": "users", "body": {"url": "x"}}
    bad = _call(app, "POST", "/services/users/targets", {"authorization": "Bearer s3cret"}, b"{nope")
    assert bad.status == 400 and json.loads(bad.body)["error"] == "bad_request"


def test_without_a_token_admin_is_read_only() -> None:
    app = _app(None)
    r = _call(app, "POST", "/services/users/targets", {"authorization": "Bearer anything"})
    assert r.status == 403 and json.loads(r.body)["error"] == "read_only"
    assert _call(app, "GET", "/health").status == 200


def test_openapi_is_generated_from_the_table() -> None:
    app = _app("t")
    doc = build_openapi(app.routes)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {"/health", "/ready", "/openapi.json", "/services/{name}/targets"}
    op = doc["paths"]["/services/{name}/targets"]["post"]
    assert op["security"] == [{"adminToken": []}]
    assert op["parameters"][0]["name"] == "name"
    assert "security" not in doc["paths"]["/health"]["get"]
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"


def test_admin_over_http(gateway) -> None:  # noqa: F811
    gw = gateway(None)
    status, headers, body = http_get(gw.admin_port, "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["pid"] == gw.pid
    status, _, body = http_get(gw.admin_port, "/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _, body = http_get(gw.admin_port, "/openapi.json")
    doc = json.loads(body)
    assert status == 200 and doc["openapi"] == "3.1.0"
    assert {"/health", "/ready", "/openapi.json"} <= set(doc["paths"])
    status, _, body = http_get(gw.admin_port, "/nope")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, headers, body = http_get(gw.admin_port, "/health", method="DELETE")
    assert status == 405 and headers["allow"] == "GET" and json.loads(body)["error"] == "method_not_allowed"
    status, headers, body = http_get(gw.admin_port, "/health", method="HEAD")
    assert status == 200 and body == b""
    assert gw.stop() == 0


def test_admin_keep_alive_pipelining_and_garbage(gateway) -> None:  # noqa: F811
    gw = gateway(None)
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.index(b'"status":"ok"') < data.index(b'"status":"ready"')
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 400")
        assert s.recv(65536) == b""  # closed after the error


@pytest.mark.parametrize("workers", ["2"])
def test_admin_in_the_supervisor_lists_workers(gateway, workers: str) -> None:  # noqa: F811
    gw = gateway(None, env={"GATEWAY_WORKERS": workers})
    status, _, body = http_get(gw.admin_port, "/health")
    health = json.loads(body)
    assert status == 200 and health["role"] == "supervisor" and health["pid"] == gw.pid
    assert len(health["workers"]) == 2 and gw.pid not in health["workers"]
    # /ready counts workers that serve (listening, heard from in the last 3 s): both, shortly.
    wait_until(lambda: (r := http_get(gw.admin_port, "/ready"))[0] == 200 and json.loads(r[2])["workers"] == 2)
    assert gw.stop() == 0


def test_feature_admin_routes_see_config_and_state_in_both_kinds_of_process() -> None:
    """gateway/admin/features.py: one installer list, the same context in the supervisor and in a
    lone worker (settings, the config in force, node state)."""
    from typing import Any

    from gateway.admin import features
    from gateway.config import Settings, loads_config
    from gateway.state.node import NodeState

    seen: list[features.AdminContext] = []

    def install(routes: Any, ctx: features.AdminContext) -> None:
        def handler(req: AdminRequest) -> Any:
            cfg = ctx.config()
            return json_response({"routes": [r.name for r in cfg.routes], "memory": ctx.state.memory is not None})
        routes.add("GET", "/test-feature", handler, summary="test")
        seen.append(ctx)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = await NodeState.standalone(loop, Settings())
        try:
            cfg = loads_config('[[services]]\nname="s"\ntargets=[{url="http://127.0.0.1:1"}]\n'
                               '[[routes]]\nname="r1"\npath="/"\nservice="s"\n')
            features.FEATURES.append(install)
            try:
                routes = features.install_features(base_routes(lambda: (True, {}), dict),
                                                   features.AdminContext(Settings(), lambda: cfg, state))
            finally:
                features.FEATURES.remove(install)
            route, _ = routes.resolve("GET", "/test-feature")
            resp = route.handler(AdminRequest("GET", "/test-feature", "", {}, b""))
            assert resp.status == 200 and b'"routes":["r1"]' in resp.body and b'"memory":true' in resp.body
        finally:
            await state.close()

    asyncio.run(main())
    assert len(seen) == 1
