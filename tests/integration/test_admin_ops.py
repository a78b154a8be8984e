"""Admin endpoints an operator reaches for (issue 13.2, 13.7): GET /config and GET /routes behind the
admin token, and one /health and /ready shape, described in /openapi.json, for 1 worker and for N."""
from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from gateway import __version__
from gateway.admin.health import HEALTH_SCHEMA, READY_SCHEMA
from tests.integration.test_cli_ops import FULL_TOML, SECRET_VALUES
from tests.support.gateway_proc import gateway, http_get, wait_until  # noqa: F401 - `gateway` is a fixture
from tests.support.schema_check import problems

TOKEN = "admintoken-SECRET-1"
ENV = {"GATEWAY_ADMIN_TOKEN": TOKEN,
       "GATEWAY_JWT_SECRET": "jwtsecret-SECRET-2-0123456789abcdefghijkl",
       "GATEWAY_ALERT_SECRET": "alertsecret-SECRET-3",
       "GATEWAY_ALERT_WEBHOOKS": "https://hooks.example.com/T0/B0/hookpath-SECRET-6"}


def call(port: int, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None
    finally:
        c.close()


def _openapi_schema(doc: dict[str, Any], path: str, status: str) -> dict[str, Any]:
    ref = doc["paths"][path]["get"]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _bodies(gw: Any, n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    # Ready once one worker serves; every worker listens shortly after.
    wait_until(lambda: (r := call(gw.admin_port, "GET", "/ready"))[0] == 200 and r[1]["workers"] == n, 15)
    _, doc = call(gw.admin_port, "GET", "/openapi.json")
    health_status, health = call(gw.admin_port, "GET", "/health")
    ready_status, ready = call(gw.admin_port, "GET", "/ready")
    assert (health_status, ready_status) == (200, 200)
    return doc, health, ready


def _conforms(body: dict[str, Any], schema: dict[str, Any]) -> None:
    assert problems(body, schema) == []
    assert set(body) <= set(schema["properties"]), "a field the schema does not describe"


def test_health_and_ready_have_one_shape_whatever_the_worker_count(gateway) -> None:  # noqa: F811
    shapes = {}
    for n in (1, 2):
        gw = gateway(FULL_TOML, env={"GATEWAY_WORKERS": str(n)})
        doc, health, ready = _bodies(gw, n)
        # The published schemas are the code's, and the bodies conform to them.
        assert _openapi_schema(doc, "/health", "200") == HEALTH_SCHEMA
        assert _openapi_schema(doc, "/ready", "200") == _openapi_schema(doc, "/ready", "503") == READY_SCHEMA
        _conforms(health, HEALTH_SCHEMA)
        _conforms(ready, READY_SCHEMA)
        assert health["role"] == ("standalone" if n == 1 else "supervisor") and health["pid"] == gw.pid
        assert health["version"] == __version__ and len(health["workers"]) == len(health["slots"]) == n
        assert all(s["listening"] for s in health["slots"])
        assert {k: ready[k] for k in READY_SCHEMA["required"]} == {
            "status": "ready", "reasons": [], "draining": False, "workers": n, "expected": n, "missing": 0,
            "stalled": 0, "services": 1, "routes": 2, "redis": "off"}
        shapes[n] = (set(health), set(ready), set(health["slots"][0]))
        assert gw.stop() == 0
    assert shapes[1] == shapes[2], "one worker and two give different fields"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_config_and_routes_need_the_token_and_show_what_is_in_force(gateway, workers: str) -> None:  # noqa: F811
    gw = gateway(FULL_TOML, env={"GATEWAY_WORKERS": workers, **ENV})
    wait_until(lambda: http_get(gw.admin_port, "/ready")[0] == 200, 15)
    for path in ("/config", "/routes"):
        assert call(gw.admin_port, "GET", path)[0] == 401
        assert call(gw.admin_port, "GET", path, token="wrong")[0] == 401
    status, config = call(gw.admin_port, "GET", "/config", token=TOKEN)
    assert status == 200
    text = json.dumps(config)
    for secret in SECRET_VALUES:
        assert secret not in text
    assert config["environment"]["GATEWAY_ADMIN_TOKEN"] == "<set, hidden>"
    assert config["environment"]["GATEWAY_WORKERS"] == workers
    assert config["config_file"] == str(gw.config_path) and config["version"] == __version__
    assert [r["name"] for r in config["routes"]] == ["api", "rest"] and config["overrides"] == {}
    assert config["services"][0]["health"]["interval"] == 5.0        # defaults filled in
    # A live change shows in /routes as in force and overridden, and in /config's overrides.
    canary = {"version": "v1", "weight": 40, "header": "x-canary"}
    assert call(gw.admin_port, "PUT", "/routes/api/canary", token=TOKEN, body=canary)[0] == 200
    limits = {"rate_limits": [{"key": "ip", "limit": 7, "window": 1}]}
    assert call(gw.admin_port, "PUT", "/limits/routes/rest", token=TOKEN, body=limits)[0] == 200
    status, table = call(gw.admin_port, "GET", "/routes", token=TOKEN)
    assert status == 200
    api, rest = table["routes"]
    assert (api["name"], api["path"], api["host"], api["methods"]) == ("api", "=/api", "api.example.com",
                                                                       ["GET", "POST"])
    assert api["canary"] == canary and api["overridden"] == ["canary"]
    assert api["targets"] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert rest["rate_limits"] == [{"key": "ip", "limit": 7, "window": 1.0, "algorithm": "sliding_window"}]
    assert rest["overridden"] == ["rate_limits"] and rest["canary"] is None
    _, config = call(gw.admin_port, "GET", "/config", token=TOKEN)
    assert set(config["overrides"]) == {"canary/api", "limits/routes/rest"}
    # /openapi.json documents both, with the token requirement.
    _, doc = call(gw.admin_port, "GET", "/openapi.json")
    for path in ("/config", "/routes"):
        assert doc["paths"][path]["get"]["security"] == [{"adminToken": []}]
    assert problems(config, doc["paths"]["/config"]["get"]["responses"]["200"]["content"]["application/json"]
                    ["schema"]) == []
    assert gw.stop() == 0


def test_config_without_an_admin_token_configured_is_refused(gateway) -> None:  # noqa: F811
    gw = gateway(FULL_TOML)
    status, body = call(gw.admin_port, "GET", "/config")
    assert status == 403 and "GATEWAY_ADMIN_TOKEN is not set" in body["message"]
    assert call(gw.admin_port, "GET", "/health")[0] == 200       # other reads stay open
    assert gw.stop() == 0


@pytest.mark.parametrize(("kw", "reasons"), [
    ({"draining": True, "serving": 0, "stalled": 0, "redis": "off"}, ["draining"]),
    ({"draining": False, "serving": 0, "stalled": 0, "redis": "off"}, ["no worker serves yet"]),
    ({"draining": False, "serving": 1, "stalled": 1, "redis": "off"}, ["1 worker stalled (listening but silent)"]),
    ({"draining": False, "serving": 2, "stalled": 0, "redis": "down"}, ["redis unreachable"]),
    ({"draining": False, "serving": 2, "stalled": 0, "redis": "up"}, []),
])
def test_not_ready_bodies_keep_the_shape_and_say_why(kw: dict[str, Any], reasons: list[str]) -> None:
    from gateway.admin.health import readiness

    ok, body = readiness(expected=2, config=None, **kw)
    assert ok is (reasons == []) and body["reasons"] == reasons
    assert body["status"] == ("ready" if ok else "not_ready")
    _conforms(body, READY_SCHEMA)
    assert set(READY_SCHEMA["required"]) <= set(body)
