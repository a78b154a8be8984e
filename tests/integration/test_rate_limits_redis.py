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


def _instances(gateway, upstream, redis, n: int, limit: int, window: float,  # noqa: F811
               config: str | None = None, env: dict[str, str] | None = None) -> list:
    env = {"GATEWAY_REDIS_URL": redis.url, "GATEWAY_REUSE_PORT": "shared", "_GATEWAY_TEST_IDENTITY": "1",
           "GATEWAY_REDIS_TIMEOUT": "0.5", **(env or {})}
    gws = [gateway(config or _config(upstream.url, limit, window), env=env) for _ in range(n)]

    def live() -> bool:
        return all(json.loads(http_get(g.admin_port, "/health")[2])["state"]["instances"] == n
                   for g in gws)
    wait_until(live, 30)
    return gws


def _get(port: int, user: str = "alice", org: str | None = None) -> int:
    return _request(port, user, org)[0]


def _request(port: int, user: str = "alice", org: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"X-Test-User": user}
    if org:
        headers["X-Test-Org"] = org
    try:
        conn.request("GET", "/x", headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
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


def test_hierarchical_quotas_hold_across_instances(gateway, upstream, redis) -> None:  # noqa: F811
    # [quotas] in Redis mode: the user's and the org's counts are shared by every instance (leases,
    # as route policies), and a request refused at one level consumes nothing at the other.
    n, user_limit, org_limit = 4, 40, 60
    config = (f'[[services]]\nname = "up"\ntargets = [{{ url = "{upstream.url}" }}]\n'
              f'[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n'
              f'[quotas]\ndefault_user = {{ limit = {user_limit}, window = 3600.0 }}\n'
              f'[quotas.orgs.acme]\nlimit = {org_limit}\nwindow = 3600.0\n')
    gws = _instances(gateway, upstream, redis, n, 0, 0.0, config)

    def over_all(user: str, org: str, count: int) -> list[tuple[int, bytes]]:
        return [_request(gws[i % n].port, user, org) for i in range(count)]

    # The user's share, over all instances: exactly 40 of alice's 80 (40 of acme's 60 used).
    alice = over_all("alice", "acme", 2 * user_limit)
    assert {s for s, _ in alice} <= {200, 429}
    assert user_limit <= [s for s, _ in alice].count(200) <= 1.02 * user_limit, [s for s, _ in alice]
    assert all(json.loads(b)["error"] == "quota_exceeded" for s, b in alice if s == 429)
    # The org's total: bob has room (40) but acme has only 20 left. Alice's 40 refusals took
    # nothing from the org, or bob would get fewer.
    bob = [s for s, _ in over_all("bob", "acme", 2 * user_limit)]
    assert org_limit - user_limit <= bob.count(200) <= org_limit * 1.02 - user_limit, bob
    # Carol: acme is exhausted, so each of her requests is refused by the org; her user share
    # must be untouched by those: in another org she still gets her full 40.
    carol_in_acme = [s for s, _ in over_all("carol", "acme", 12)]
    assert carol_in_acme == [429] * 12, carol_in_acme
    carol = [s for s, _ in over_all("carol", "other", 2 * user_limit)]
    assert user_limit <= carol.count(200) <= 1.02 * user_limit, carol
    for g in gws:
        assert g.stop() == 0


def _admin(gw, method: str, path: str, body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def _org_quota(gw, org: str) -> object:
    """GET /limits's quota for an org on this instance; None while it has none. Until the first
    quota change reaches an instance without [quotas], its "quotas" is null: a poll that comes
    first (a loaded machine) must wait, not fail."""
    status, doc = _admin(gw, "GET", "/limits")
    assert status == 200, doc
    quotas = doc["quotas"]
    return None if quotas is None else quotas["orgs"].get(org)


def _limit_header(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/x")
        r = conn.getresponse()
        r.read()
        return r.getheader("RateLimit-Limit")
    finally:
        conn.close()


def _applied_at(gw, workers: int, timeout: float) -> list[float]:
    """When each of `gw`'s workers logged its first "live limits applied" (epoch seconds)."""
    import datetime
    import re

    pattern = re.compile(r"^(\S+Z) gateway\[(\d+)\] INFO worker: live limits applied", re.M)

    def first_per_worker() -> dict[str, float] | None:
        seen: dict[str, float] = {}
        for stamp, pid in pattern.findall(gw.stderr):
            when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
            seen.setdefault(pid, when.timestamp())
        return seen if len(seen) >= workers else None

    return sorted(wait_until(first_per_worker, timeout).values())  # type: ignore[union-attr]


def test_a_live_limit_change_reaches_another_instance_within_a_second_and_survives_restarts(
        gateway, upstream, redis) -> None:  # noqa: F811
    config = (f'[[services]]\nname = "up"\ntargets = [{{ url = "{upstream.url}" }}]\n'
              f'[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n')
    env = {"GATEWAY_ADMIN_TOKEN": "t0ken", "GATEWAY_WORKERS": "2"}
    a, b = _instances(gateway, upstream, redis, 2, 0, 0.0, config, env)
    assert _limit_header(b.port) is None                          # unlimited so far
    status, doc = _admin(a, "PUT", "/limits/routes/api", {"rate_limits": [{"key": "ip", "limit": 500, "window": 60}]})
    assert status == 200, doc
    answered = time.time()
    # SPEC §8: every worker of every instance applies it within 1 s. Judged by when b's workers
    # logged it (their clock is ours): a loaded machine can slow the requests below by more.
    applied = _applied_at(b, 2, 5.0)
    print(f"instance b's workers applied the change {[round(t - answered, 3) for t in applied]} s after the PUT")
    assert all(t - answered < 1.0 for t in applied), (applied, answered)
    # Fresh connections spread over b's two workers: all of them answer with the new limit.
    assert all(_limit_header(b.port) == "500" for _ in range(6))
    status, doc = _admin(a, "PUT", "/limits/quotas/orgs/acme", {"limit": 7, "window": 3600})
    assert status == 200, doc
    wait_until(lambda: _org_quota(b, "acme") == {"limit": 7, "window": 3600.0}, 1.0, 0.02)
    # Restart: every instance stopped, a fresh one on the same Redis finds the overrides.
    for g in (a, b):
        assert g.stop() == 0
    c = gateway(config, env={"GATEWAY_REDIS_URL": redis.url, "GATEWAY_REUSE_PORT": "shared", **env})
    status, doc = _admin(c, "GET", "/limits")
    assert status == 200 and doc["routes"]["api"] == [
        {"key": "ip", "limit": 500, "window": 60.0, "algorithm": "sliding_window"}], doc
    assert doc["quotas"]["orgs"]["acme"] == {"limit": 7, "window": 3600.0}
    assert doc["overrides"] == ["limits/quotas/orgs/acme", "limits/routes/api"]
    assert all(_limit_header(c.port) == "500" for _ in range(6))
    assert c.stop() == 0
