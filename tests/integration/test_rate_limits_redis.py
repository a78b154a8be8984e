"""Rate limits across instances (GATEWAY_REDIS_URL): real gateway processes on the suite's own
redis-server. One user's requests spread over many instances are admitted within
[limit, 1.02 x limit]; Redis killed mid-test: nothing fails, each instance keeps to its share;
Redis back: shared counting resumes within 5 s."""
from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    upstream,
    wait_until,
)
from tests.support.redis_server import RedisProcess


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def _config(upstream_url: str, limit: int, window: float) -> str:
    return (f'[[services]]\nname = "up"\ntargets = [{{ url = "{upstream_url}" }}]\n'
            f'[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n'
            f'[[routes.rate_limits]]\nkey = "user"\nlimit = {limit}\nwindow = {window}\n')


def _instances(gateway, upstream, redis, n: int, limit: int, window: float) -> list:  # noqa: F811
    env = {"GATEWAY_REDIS_URL": redis.url, "GATEWAY_REUSE_PORT": "shared", "_GATEWAY_TEST_IDENTITY": "1",
           "GATEWAY_REDIS_TIMEOUT": "0.5"}
    gws = [gateway(_config(upstream.url, limit, window), env=env) for _ in range(n)]

    def live() -> bool:
        return all(json.loads(http_get(g.admin_port, "/health")[2])["state"]["instances"] == n
                   for g in gws)
    wait_until(live, 30)
    return gws


def _get(port: int, user: str = "alice") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/x", headers={"X-Test-User": user})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_one_users_requests_over_ten_instances_stay_within_the_limit(gateway, upstream, redis) -> None:  # noqa: F811
    limit = 200
    gws = _instances(gateway, upstream, redis, 10, limit, 3600.0)   # one window: no boundary
    statuses = [_get(gws[i % len(gws)].port) for i in range(2 * limit)]
    assert set(statuses) <= {200, 429}
    admitted = statuses.count(200)
    print(f"admitted {admitted} of {2 * limit} requests, limit {limit}, 10 instances")
    assert limit <= admitted <= 1.02 * limit, admitted
    # Another user has their own count.
    assert _get(gws[3].port, "bob") == 200
    for g in gws:
        assert g.stop() == 0


def test_redis_killed_and_restarted_mid_test(gateway, upstream, redis) -> None:  # noqa: F811
    limit, n = 60, 3
    gws = _instances(gateway, upstream, redis, n, limit, 3600.0)
    first = [_get(gws[i % n].port) for i in range(30)]
    assert first.count(200) == 30
    redis.kill()
    # The outage: every request is answered (no failure), each instance admits at most its share
    # (limit / instances = 20 in its own window), never unlimited and never 429 for everyone.
    during = {i: [_get(g.port) for _ in range(40)] for i, g in enumerate(gws)}
    for i, sts in during.items():
        assert set(sts) <= {200, 429}, sts
        # + the tokens a lease put in hand before the kill (block = 1 % of the limit, at least 1):
        # counted in Redis already, so spending them is no overshoot.
        assert 1 <= sts.count(200) <= limit // n + 1, (i, sts.count(200))
    redis.start()                          # empty again: no persistence in the test server
    t0 = time.monotonic()
    # Shared mode resumes within 5 s: the links reconnect (the first calls on connections that
    # died with the server fail and are decided by the fallback), then leases flow again.
    wait_until(lambda: all(http_get(g.admin_port, "/ready")[0] == 200 for g in gws), 10)
    for i in range(20):
        for g in gws:
            _get(g.port, f"probe{i}")
    assert time.monotonic() - t0 < 5.0 + 3.0
    # The promise is "within 5 s": on a loaded machine the probes above can finish sooner than a
    # worker's link has come back (its reconnect backoff), and what the fallback admits meanwhile
    # would be counted against carol below. Judge exactness once the 5 s have passed.
    time.sleep(max(0.0, t0 + 5.5 - time.monotonic()))
    for g in gws:
        _get(g.port, "probe-last")
    # Counted in Redis again: over all instances exactly `limit` of a fresh user's requests pass
    # (the fallback alone would admit 20 per instance, 60 + 20 x 3 with the leases).
    statuses = [_get(gws[i % n].port, "carol") for i in range(2 * limit)]
    assert limit <= statuses.count(200) <= 1.02 * limit, statuses.count(200)
    for g in gws:
        assert g.stop() == 0
