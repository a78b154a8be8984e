"""Alert webhooks from a real 2-worker gateway: Redis goes away and comes back, the receiver gets
each event once, signed, and /metrics counts the deliveries."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.observability.receiver import Receiver
from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)
from tests.support.redis_server import RedisProcess

SECRET = "process-test-secret"


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def test_redis_down_and_up_are_posted_once_each_and_counted(gateway, upstream, redis) -> None:  # noqa: F811
    receiver = Receiver().start()
    try:
        gw = gateway(routes_toml(upstream.url, ["/"]), env={
            "GATEWAY_WORKERS": "2", "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_ALERT_WEBHOOKS": receiver.url, "GATEWAY_ALERT_SECRET": SECRET})
        wait_until(lambda: http_get(gw.admin_port, "/ready")[0] == 200, 10)
        # The link coming up at start is the first event.
        wait_until(lambda: [e["event"] for e in receiver.events()] == ["redis_up"], 15)
        redis.kill()
        wait_until(lambda: [e["event"] for e in receiver.events()] == ["redis_up", "redis_down"], 15)
        assert http_get(gw.port, "/x")[0] == 200          # requests never wait on alerts
        redis.start()
        wait_until(lambda: http_get(gw.admin_port, "/ready")[0] == 200, 15)
        time.sleep(1.5)
        # Back within the 60 s cooldown of the first redis_up: the node sends it once, not twice.
        assert [e["event"] for e in receiver.events()] == ["redis_up", "redis_down"]
        receiver.verify_all(SECRET)
        body = http_get(gw.admin_port, "/metrics")[2].decode()
        assert 'gateway_alerts_sent_total{event="redis_down",result="sent"} 1.0' in body
        assert 'gateway_alerts_sent_total{event="redis_up",result="sent"} 1.0' in body
        assert gw.stop() == 0
    finally:
        receiver.stop()
