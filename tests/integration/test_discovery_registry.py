"""Dynamic registration through the admin API, seen by 2 workers and by 2 instances over the test
suite's own Redis: registration, deregistration, TTL expiry, reload, validation, the admin token."""
from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_discovery_health import ENV, Up, served, settles
from tests.support.gateway_proc import gateway as gateway  # noqa: F401 - the fixture
from tests.support.gateway_proc import http_get, wait_until
from tests.support.redis_server import RedisProcess

TOKEN = "disc-admin-token-0123456789"


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[list[Up]]:
    out = [Up(n, tmp_path) for n in ("a", "b", "c")]
    yield out
    for u in out:
        u.kill()


def admin(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        c.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None
    finally:
        c.close()


def config(a: Up) -> str:
    return (f'[[services]]\nname = "svc"\ntargets = ["{a.url}"]\n'
            '[[routes]]\nname = "r"\npath = "/"\nservice = "svc"\n')


def env(**extra: str) -> dict[str, str]:
    return {**ENV, "GATEWAY_ADMIN_TOKEN": TOKEN, **extra}


def test_registered_target_reaches_both_workers_within_a_second_and_leaves(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, c = ups
    gw = gateway(config(a), env=env())
    settles(gw.port, lambda batch: set(batch) == {"a"})
    t0 = time.monotonic()
    status, reg = admin(gw.admin_port, "POST", "/services/svc/targets",
                        {"url": b.url, "weight": 1, "version": "v2", "metadata": {"zone": "z1"}})
    assert status == 201 and reg["id"] and reg["url"] == b.url
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    # Within 1 s, in both workers: each worker alternates a, b strictly (round robin), so b takes
    # half the requests, give or take one per worker; a worker still on [a] would pull it to 1/4.
    batch = served(gw.port, 60)
    assert abs(batch.count("b") - 30) <= 2, batch

    # GET /services lists both, with their source, version, metadata and health.
    status, body = admin(gw.admin_port, "GET", "/services", token=None)
    rows = {r["url"]: r for r in body["services"][0]["targets"]}
    assert rows[a.url]["source"] == "config" and rows[b.url]["source"] == "registered"
    assert rows[b.url]["version"] == "v2" and rows[b.url]["metadata"] == {"zone": "z1"}
    assert rows[b.url]["healthy"] is True and "breaker" in rows[b.url] and rows[b.url]["last_heartbeat"]

    # A reload keeps it.
    gw.reload()
    gw.wait_stderr("reloaded")
    assert set(served(gw.port, 30)) == {"a", "b"}

    # Writes without the token (or with a wrong one) are refused and change nothing.
    assert admin(gw.admin_port, "DELETE", f"/services/svc/targets/{reg['id']}", token=None)[0] == 401
    assert admin(gw.admin_port, "DELETE", f"/services/svc/targets/{reg['id']}", token="wrong")[0] == 401
    assert admin(gw.admin_port, "POST", "/services/svc/targets", {"url": c.url}, token="wrong")[0] == 401
    assert set(served(gw.port, 30)) == {"a", "b"}

    assert admin(gw.admin_port, "DELETE", f"/services/svc/targets/{reg['id']}")[0] == 200
    settles(gw.port, lambda batch: set(batch) == {"a"}, timeout=5)
    assert admin(gw.admin_port, "DELETE", f"/services/svc/targets/{reg['id']}")[0] == 404
    assert '"action":"register"' in gw.stderr and '"action":"deregister"' in gw.stderr


def test_ttl_target_is_dropped_when_heartbeats_stop(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, _ = ups
    gw = gateway(config(a), env=env())
    status, reg = admin(gw.admin_port, "POST", "/services/svc/targets", {"url": b.url, "ttl": 1.5})
    assert status == 201
    settles(gw.port, lambda batch: set(batch) == {"a", "b"}, timeout=5)
    # Heartbeats keep it for longer than its ttl.
    for _ in range(6):
        time.sleep(0.5)
        assert admin(gw.admin_port, "PUT", f"/services/svc/targets/{reg['id']}/heartbeat")[0] == 200
    assert "b" in served(gw.port, 20)
    stopped = time.monotonic()
    wait_until(lambda: set(served(gw.port, 10)) == {"a"}, timeout=8, interval=0.05)
    assert time.monotonic() - stopped < 1.5 + 1.0 + 1.0   # ttl + 1 s, plus our own batch of requests
    assert admin(gw.admin_port, "PUT", f"/services/svc/targets/{reg['id']}/heartbeat")[0] == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://x"}, "url"),
    ({"url": "http://a:99999"}, "url"),
    ({}, "url"),
    ({"url": "http://127.0.0.1:1", "weight": -1}, "weight"),
    ({"url": "http://127.0.0.1:1", "weight": "3"}, "weight"),
    ({"url": "http://127.0.0.1:1", "ttl": 0}, "ttl"),
    ({"url": "http://127.0.0.1:1", "version": "a b"}, "version"),
    ({"url": "http://127.0.0.1:1", "metadata": [1]}, "metadata"),
    ({"url": "http://127.0.0.1:1", "colour": "red"}, "colour"),
])
def test_bad_registrations_are_400_naming_the_field(gateway, ups: list[Up], body: Any, field: str) -> None:  # noqa: F811
    gw = _shared_gateway(gateway, ups)
    status, out = admin(gw.admin_port, "POST", "/services/svc/targets", body)
    assert status == 400 and out["message"].startswith(f"{field}:"), out


def test_unknown_service_is_400_naming_it(gateway, ups: list[Up]) -> None:  # noqa: F811
    gw = _shared_gateway(gateway, ups)
    status, out = admin(gw.admin_port, "POST", "/services/nope/targets", {"url": "http://127.0.0.1:1"})
    assert status == 400 and out["message"].startswith("name:") and "nope" in out["message"]
    status, body = admin(gw.admin_port, "GET", "/services", token=None)
    assert all(r["source"] == "config" for r in body["services"][0]["targets"])


def _shared_gateway(gateway, ups: list[Up]) -> Any:  # noqa: F811
    return gateway(config(ups[0]), env=env(GATEWAY_WORKERS="1"))


def test_two_instances_over_redis_see_each_others_registrations(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, c = ups
    with RedisProcess() as redis:
        e = env(GATEWAY_REDIS_URL=redis.url)
        gw1 = gateway(config(a), env=e)
        gw2 = gateway(config(a), env=e)
        status, reg = admin(gw1.admin_port, "POST", "/services/svc/targets", {"url": b.url, "ttl": 30})
        assert status == 201
        t0 = time.monotonic()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        # Within 1 s on both instances, in all 4 workers: strict a, b alternation per worker.
        for gw in (gw2, gw1):
            batch = served(gw.port, 60)
            assert abs(batch.count("b") - 30) <= 2, batch
        # Deregistered on the other instance: gone from both.
        assert admin(gw2.admin_port, "DELETE", f"/services/svc/targets/{reg['id']}")[0] == 200
        settles(gw1.port, lambda batch: set(batch) == {"a"}, timeout=5)
        settles(gw2.port, lambda batch: set(batch) == {"a"}, timeout=5)
        assert http_get(gw1.admin_port, "/services")[0] == 200


def get_as(port: int, ip: str, headers: dict[str, str] | None = None) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/x", headers={"X-Forwarded-For": ip, **(headers or {})})
        r = c.getresponse()
        body = r.read().decode()
        return body if r.status == 200 else f"status:{r.status}"
    finally:
        c.close()


def test_canary_weight_changes_at_run_time_in_every_worker(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, _ = ups
    text = (f'[[services]]\nname = "svc"\ntargets = [{{ url = "{a.url}", version = "v1" }}, '
            f'{{ url = "{b.url}", version = "v2" }}]\n'
            '[[routes]]\nname = "r"\npath = "/"\nservice = "svc"\n'
            'canary = { version = "v2", weight = 0, header = "x-canary" }\n')
    gw = gateway(text, env=env(GATEWAY_TRUSTED_PROXIES="127.0.0.1/32"))
    ips = [f"198.51.100.{i}" for i in range(1, 61)]
    assert {get_as(gw.port, ip) for ip in ips} == {"a"}
    assert get_as(gw.port, ips[0], {"X-Canary": "always"}) == "b"

    assert admin(gw.admin_port, "PUT", "/routes/r/canary", {"version": "v2", "weight": 50}, token=None)[0] == 401
    t0 = time.monotonic()
    status, out = admin(gw.admin_port, "PUT", "/routes/r/canary", {"version": "v2", "weight": 100, "header": "x-canary"})
    assert status == 200 and out["weight"] == 100
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    assert {get_as(gw.port, ip) for ip in ips} == {"b"}          # every request, both workers, after 1 s
    assert get_as(gw.port, ips[0], {"X-Canary": "never"}) == "a"

    status, _ = admin(gw.admin_port, "PUT", "/routes/r/canary", {"version": "v2", "weight": 50, "header": "x-canary"})
    time.sleep(1.0)
    first = {ip: get_as(gw.port, ip) for ip in ips}
    assert 10 <= list(first.values()).count("b") <= 50
    assert all(get_as(gw.port, ip) == first[ip] for ip in ips[:20])   # sticky per user, across workers
    assert admin(gw.admin_port, "PUT", "/routes/r/canary", {"version": "v2", "weight": 500})[1]["message"].startswith("weight:")
    assert admin(gw.admin_port, "PUT", "/routes/nope/canary", {"version": "v2", "weight": 5})[0] == 400
    status, doc = admin(gw.admin_port, "GET", "/openapi.json", token=None)
    assert "/routes/{name}/canary" in doc["paths"]
