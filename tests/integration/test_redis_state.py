"""The gateway with GATEWAY_REDIS_URL, as real processes against a redis-server of the test's own:
readiness follows Redis, the data plane never waits for it, changes made on another instance reach
every worker, and the dynamic state survives a restart of every instance."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from gateway.config import load_settings
from gateway.state.node import make_control_plane
from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)
from tests.support.redis_server import RedisProcess


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def health(admin_port: int) -> dict[str, Any]:
    status, _, body = http_get(admin_port, "/health", timeout=5)
    assert status == 200
    return dict(json.loads(body))


def ready(admin_port: int) -> int:
    return http_get(admin_port, "/ready", timeout=5)[0]


def in_sync(admin_port: int, keys: int) -> bool:
    st = health(admin_port)["state"]
    workers = st.get("workers", {})
    return st["keys"] == keys and len(workers) == 2 and all(w["applied"] == st["seq"] and w["synced"]
                                                             for w in workers.values())


def test_ready_follows_redis_while_requests_keep_flowing(gateway, upstream, redis) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_REDIS_URL": redis.url})
    wait_until(lambda: ready(gw.admin_port) == 200, 10)
    for action, back in ((redis.kill, redis.start), (redis.pause, redis.resume)):
        action()
        for _ in range(20):                       # the data plane never waits for Redis
            s0 = time.monotonic()
            assert http_get(gw.port, "/hello", timeout=5)[0] == 200
            assert time.monotonic() - s0 < 1.0      # a request held for Redis would wait seconds
        wait_until(lambda: ready(gw.admin_port) == 503, 10)
        assert health(gw.admin_port)["state"]["redis"] == "down"
        back()
        t1 = time.monotonic()
        wait_until(lambda: ready(gw.admin_port) == 200, 10)
        assert time.monotonic() - t1 < 5.0, "not ready again within 5 s of Redis' return"
    wait_until(lambda: gw.stderr.count("event redis_down") >= 1 and gw.stderr.count("event redis_up") >= 1)
    assert gw.stop() == 0


def test_changes_on_another_instance_reach_every_worker(gateway, upstream, redis) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_REDIS_URL": redis.url})
    wait_until(lambda: ready(gw.admin_port) == 200 and in_sync(gw.admin_port, 0), 10)

    async def other_instance() -> list[float]:
        loop = asyncio.get_running_loop()
        cp = make_control_plane(loop, load_settings({"GATEWAY_REDIS_URL": redis.url}), "test-instance")
        await cp.start()
        await cp.store.wait_synced(5)
        latencies = []
        for i in range(100):
            t0 = time.perf_counter()
            await cp.put(f"limits/routes/r{i}", {"limit": i})
            # Poll the gateway (blocking HTTP in a thread) until both its workers applied it.
            await loop.run_in_executor(None, lambda i=i: wait_until(lambda: in_sync(gw.admin_port, i + 1), 5, 0.002))
            latencies.append(time.perf_counter() - t0)
        await cp.close()
        return latencies

    loop = uvloop.new_event_loop()
    try:
        latencies = loop.run_until_complete(other_instance())
    finally:
        loop.close()
    assert max(latencies) < 1.0
    print(f"\nadmin change on another instance -> applied in both workers through Redis: "
          f"p50 {statistics.median(latencies) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms "
          f"over {len(latencies)} changes (includes polling /health)")
    assert health(gw.admin_port)["state"]["instances"] >= 1
    assert gw.stop() == 0


def test_dynamic_state_survives_a_restart_of_every_instance(gateway, upstream, redis) -> None:  # noqa: F811
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_PREFIX": "surv:"}
    first = gateway(routes_toml(upstream.url, ["/"]), env=env)

    async def write() -> None:
        cp = make_control_plane(asyncio.get_running_loop(),
                                load_settings({"GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_PREFIX": "surv:"}), "writer")
        await cp.start()
        await cp.store.wait_synced(5)
        for i in range(10):
            await cp.put(f"keys/k{i}", {"org": "acme", "n": i})
        await cp.delete("keys/k0")
        await cp.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(write())
    finally:
        loop.close()
    wait_until(lambda: in_sync(first.admin_port, 9), 5)
    assert first.stop() == 0
    second = gateway(routes_toml(upstream.url, ["/"]), env=env)   # nobody left running: Redis has it
    wait_until(lambda: in_sync(second.admin_port, 9), 10)
    assert second.stop() == 0


def test_a_malformed_redis_url_exits_2_naming_the_variable(gateway) -> None:  # noqa: F811
    gw = gateway(None, env={"GATEWAY_REDIS_URL": "redis://host:99999/0"}, wait=False)
    assert gw.wait(15) == 2
    assert "GATEWAY_REDIS_URL" in gw.stderr


def test_a_node_starts_and_serves_while_redis_refuses_connections(gateway, upstream) -> None:  # noqa: F811
    from tests.support.gateway_proc import free_port

    closed = free_port()                          # nothing listens there: every connect is refused
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2",
                                                          "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    assert http_get(gw.port, "/hello", timeout=5)[0] == 200
    wait_until(lambda: ready(gw.admin_port) == 503, 10)
    wait_until(lambda: "event redis_down" in gw.stderr, 10)
    assert gw.stop() == 0
