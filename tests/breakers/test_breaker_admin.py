"""Forced circuit states through the admin API, and circuits shared between two instances over the
test suite's own Redis (issue 9): an opening on one instance opens the target on the other within
a second, forced states reach every worker of every instance, and with Redis gone each instance
still decides on its own."""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.breakers.conftest import FaultUpstream
from tests.breakers.test_breaker_faults import circuit, config, get
from tests.support.gateway_proc import http_get, wait_until
from tests.support.redis_server import RedisProcess

TOKEN = "breaker-admin-token-" + "x" * 16


def post(gw: Any, path: str, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    c.request("POST", path, body=b"", headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, json.loads(body) if body else {}


def served_by_every_worker(gw: Any, n: int = 12) -> list[tuple[int, str | None]]:
    """n requests, each on a new connection (SO_REUSEPORT spreads them over the workers)."""
    out = []
    for _ in range(n):
        st, headers, _ = get(gw)
        out.append((st, headers.get("x-gateway-fallback")))
    return out


def test_forced_open_and_close_reach_every_worker_and_are_audited(gateway: Any, fault: FaultUpstream) -> None:
    gw = gateway(config(fault, "failure_threshold = 5\nopen_timeout = 30.0\n"),
                 env={"GATEWAY_WORKERS": "2", "GATEWAY_ADMIN_TOKEN": TOKEN})
    assert get(gw)[0] == 200
    path = f"/breakers/up/{fault.id}/open"
    assert post(gw, path, token=None)[0] == 401
    assert post(gw, path, token="wrong")[0] == 401
    assert circuit(gw, fault)["state"] == "closed"
    assert post(gw, "/breakers/nope/1.2.3.4:5/open")[0] == 404
    assert post(gw, "/breakers/up/127.0.0.1:1/open")[0] == 404
    fault.zero()
    t0 = time.monotonic()
    status, body = post(gw, path)
    assert status == 200 and body["requested"] == "open"
    wait_until(lambda: circuit(gw, fault)["forced"], timeout=2)
    assert time.monotonic() - t0 < 1.0
    assert served_by_every_worker(gw) == [(503, "circuit-open")] * 12
    assert fault.stats() == {"connections": 0, "requests": 0, "mode": "ok"}
    c = circuit(gw, fault)
    assert c["state"] == "open" and c["forced"] and c["next_probe"] is None
    assert c["forced_by"]["state"] == "open"
    # Held: no half-open however long it stays.
    time.sleep(0.5)
    assert get(gw)[0] == 503
    # The target's URL, percent-encoded, names it too.
    from urllib.parse import quote

    status, body = post(gw, f"/breakers/up/{quote(fault.url, safe='')}/close")
    assert status == 200 and body["requested"] == "closed"
    wait_until(lambda: circuit(gw, fault)["state"] == "closed", timeout=2)
    assert [s for s, _ in served_by_every_worker(gw)] == [200] * 12
    err = gw.stderr
    assert err.count('"action":"breaker_force_open"') == 1 and err.count('"action":"breaker_force_close"') == 1
    assert "event circuit_opened up/" in err and "event circuit_closed up/" in err


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def ready(gw: Any) -> bool:
    return http_get(gw.admin_port, "/ready", timeout=5)[0] == 200


def test_an_opening_reaches_the_other_instance_within_a_second(gateway: Any, fault: FaultUpstream,
                                                              redis: RedisProcess) -> None:
    env = {"GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_PREFIX": f"brk-{secrets.token_hex(4)}:",
           "GATEWAY_ADMIN_TOKEN": TOKEN}
    text = config(fault, "failure_threshold = 2\nopen_timeout = 30.0\n")
    a = gateway(text, env={**env, "GATEWAY_WORKERS": "2"})
    b = gateway(text, env={**env, "GATEWAY_WORKERS": "1"})
    wait_until(lambda: ready(a) and ready(b), timeout=10)
    assert get(b)[0] == 200
    fault.mode("status", 500)
    assert [get(a)[0] for _ in range(2)] == [500, 500]
    opened = time.monotonic()
    assert circuit(a, fault)["state"] == "open"
    wait_until(lambda: circuit(b, fault)["state"] == "open", timeout=3, interval=0.02)
    took = time.monotonic() - opened
    assert took < 1.0, f"the other instance opened after {took:.3f} s"
    print(f"\nthe other instance opened {took * 1000:.0f} ms after the opening (GET /breakers polled every 20 ms)")
    fault.zero()
    assert served_by_every_worker(b, 5) == [(503, "circuit-open")] * 5
    assert fault.stats()["requests"] == 0
    # B opened for what was left of A's period, not a fresh 30 s of its own doubling.
    assert 25 < circuit(b, fault)["next_probe"] - time.time() <= 30.5

    # A forced close on B closes A (and B); a forced open on A holds B open.
    fault.mode("ok")
    assert post(b, f"/breakers/up/{fault.id}/close")[0] == 200
    wait_until(lambda: circuit(a, fault)["state"] == "closed" and circuit(b, fault)["state"] == "closed", timeout=2)
    assert [s for s, _ in served_by_every_worker(a, 6)] == [200] * 6
    assert post(a, f"/breakers/up/{fault.id}/open")[0] == 200
    wait_until(lambda: circuit(b, fault)["forced"], timeout=2)
    assert get(b)[0] == 503
    assert post(a, f"/breakers/up/{fault.id}/close")[0] == 200
    wait_until(lambda: circuit(b, fault)["state"] == "closed", timeout=2)

    # Redis gone: writes are refused (nothing changes), each instance still opens on its own traffic.
    redis.kill()
    wait_until(lambda: not ready(a) and not ready(b), timeout=10)
    assert post(a, f"/breakers/up/{fault.id}/open")[0] == 503
    fault.mode("status", 500)
    assert [get(b)[0] for _ in range(2)] == [500, 500]
    assert get(b)[1]["x-gateway-fallback"] == "circuit-open"
    assert circuit(a, fault)["state"] == "closed"        # nothing travels while Redis is down
    assert get(a)[0] == 500
