"""RateLimitFilter with injected clocks: answers against the reference models, keys, headers,
429 replies, and the hierarchical quotas' all-or-nothing consumption."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import QuotaLimit, QuotasConfig, RateLimitConfig
from gateway.filters.ratelimit import build_filter, build_quotas
from gateway.pipeline.context import RequestContext
from gateway.pipeline.reply import LocalReply
from tests.fast.reference import timeline
from tests.fast.reference.keyed_table import KeyedTableModel


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ctx(ip: str = "10.0.0.1", user: str | None = None, org: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
    c = RequestContext()
    c.client_ip = ip
    c.consumer_id = user
    c.consumer_org = org
    c.request_id = b"req-1"
    c.headers = headers or []
    return c


def limiter(policies: list[RateLimitConfig], clock: Clock, quotas: QuotasConfig | None = None):
    f = build_filter("r", tuple(policies), build_quotas(quotas, 1000, None), 1000, None, clock=clock)
    assert f is not None
    return f


def hdr(c: RequestContext) -> dict[bytes, bytes]:
    return dict(c.response_headers)


# ---------------------------------------------------------------- against the reference models


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["sliding_window", "token_bucket"]), st.integers(1, 20),
       st.sampled_from([0.5, 2.0, 60.0]), st.integers(0, 5), st.data())
def test_answers_match_the_reference_models_per_key(algorithm: str, limit: int, window: float,
                                                     burst: int, data: st.DataObject) -> None:
    clock = Clock()
    pc = RateLimitConfig("ip", limit, window, algorithm, burst if algorithm == "token_bucket" else 0)
    f = limiter([pc], clock)
    # The table's own model: per-key limiters plus idle forgetting (3 keys never fill it).
    model = (KeyedTableModel(1250, algorithm, limit=limit, window=window) if algorithm == "sliding_window"
             else KeyedTableModel(1250, algorithm, rate=limit / window, bucket=limit + pc.burst))
    times = data.draw(timeline(60, scale=window / limit))
    ips = data.draw(st.lists(st.sampled_from(["1.1.1.1", "2.2.2.2", "::1"]), min_size=60, max_size=60))
    for now, ip in zip(times, ips, strict=True):
        clock.now = now
        want = model.check("ip:" + ip, now, 1.0)
        c = ctx(ip)
        got = f.access(c)
        assert (got is None) == want[0], (now, ip)
        h = hdr(c)
        assert h[b"RateLimit-Limit"] == b"%d" % limit
        assert h[b"RateLimit-Remaining"] == b"%d" % int(want[1])
        if got is not None:
            assert got.status == 429 and got.code == "rate_limited"
            retry = want[2] if want[2] != math.inf else window
            assert dict(got.headers)[b"Retry-After"] == b"%d" % max(1, math.ceil(retry))


def test_a_long_run_admits_exactly_the_limit_per_window() -> None:
    clock = Clock(0.0)
    f = limiter([RateLimitConfig("ip", 100, 10.0)], clock)
    admitted = 0
    for i in range(1000):                  # 1000 requests spread over one aligned window
        clock.now = 10.0 + i * 0.0099
        admitted += f.access(ctx()) is None
    assert admitted == 100


# ---------------------------------------------------------------- keys


def test_a_request_without_the_policys_key_is_limited_by_ip() -> None:
    clock = Clock()
    f = limiter([RateLimitConfig("user", 2, 60.0)], clock)
    assert f.access(ctx("1.2.3.4")) is None and f.access(ctx("1.2.3.4")) is None
    assert isinstance(f.access(ctx("1.2.3.4")), LocalReply)       # anonymous: by its IP
    assert f.access(ctx("5.6.7.8")) is None                       # another IP: its own count
    assert f.access(ctx("1.2.3.4", user="alice")) is None         # alice: her own count
    assert f.access(ctx("9.9.9.9", user="alice")) is None         # ... from any address
    assert isinstance(f.access(ctx("8.8.8.8", user="alice")), LocalReply)
    # A user named like an address does not share the address's count.
    assert f.access(ctx("7.7.7.7", user="1.2.3.4")) is None


def test_header_route_and_org_keys() -> None:
    clock = Clock()
    f = limiter([RateLimitConfig("header:x-tenant", 1, 60.0)], clock)
    assert f.access(ctx(headers=[(b"x-tenant", b"a")])) is None
    assert isinstance(f.access(ctx("2.2.2.2", headers=[(b"x-tenant", b"a")])), LocalReply)
    assert f.access(ctx(headers=[(b"x-tenant", b"b")])) is None
    assert f.access(ctx("3.3.3.3")) is None                       # no header: by IP
    g = limiter([RateLimitConfig("route", 2, 60.0)], clock)
    assert g.access(ctx("1.1.1.1")) is None and g.access(ctx("2.2.2.2")) is None
    assert isinstance(g.access(ctx("3.3.3.3")), LocalReply)       # one count for the route
    o = limiter([RateLimitConfig("org", 1, 60.0)], clock)
    assert o.access(ctx(user="a", org="acme")) is None
    assert isinstance(o.access(ctx("4.4.4.4", user="b", org="acme")), LocalReply)


def test_api_key_policies_count_per_key_id_the_auth_filter_sets() -> None:
    # gateway/security/auth_filter.py sets ctx.api_key_id for an API-key request; a request
    # without one (JWT or anonymous) is limited by its IP, like every other missing key.
    def keyed(key_id: str | None, ip: str = "10.0.0.1") -> RequestContext:
        c = ctx(ip)
        c.api_key_id = key_id
        return c

    clock = Clock()
    f = limiter([RateLimitConfig("api_key", 1, 60.0)], clock)
    assert f.access(keyed("0123456789ab")) is None
    assert isinstance(f.access(keyed("0123456789ab", "2.2.2.2")), LocalReply)   # the key's count
    assert f.access(keyed("ba9876543210")) is None                              # another key
    assert f.access(keyed(None, "3.3.3.3")) is None                             # no key: by IP
    assert isinstance(f.access(keyed(None, "3.3.3.3")), LocalReply)


def test_headers_come_from_the_tightest_policy_and_refusal_refunds_the_others() -> None:
    clock = Clock(0.0)
    f = limiter([RateLimitConfig("ip", 10, 60.0), RateLimitConfig("route", 3, 60.0)], clock)
    c = ctx()
    assert f.access(c) is None
    assert hdr(c) == {b"RateLimit-Limit": b"3", b"RateLimit-Remaining": b"2", b"RateLimit-Reset": b"120"}
    f.access(ctx("2.2.2.2"))
    f.access(ctx("3.3.3.3"))
    r = f.access(ctx())                                            # the route policy refuses
    assert isinstance(r, LocalReply) and r.status == 429
    # The refused request's hit on the ip policy was given back: 10.0.0.1 used 1 of 10, not 2.
    ok, remaining, _ = f.policies[0].table.check("ip:10.0.0.1", 0.0, 1.0)
    assert ok and remaining == 8


# ---------------------------------------------------------------- hierarchical quotas

QUOTAS = QuotasConfig(default_user=QuotaLimit(5, 60.0), default_org=QuotaLimit(8, 60.0),
                      orgs={"acme": QuotaLimit(3, 60.0, user_limit=2)},
                      users={"vip": QuotaLimit(100, 60.0)})


def _remaining(policy, key: str) -> int:
    # Peek without counting: a cost above the limit is always refused and changes nothing.
    return policy.table.check(key, 0.0, float(policy.limit + 1))[1]


def test_org_exhausted_while_the_user_has_room_consumes_nothing_of_the_user() -> None:
    clock = Clock(0.0)
    f = limiter([], clock, QUOTAS)
    quotas = f.quotas
    assert all(f.access(ctx(user=f"u{i}", org="beta")) is None for i in range(8))  # default_org 8
    r = f.access(ctx(user="fresh", org="beta"))
    assert isinstance(r, LocalReply) and r.code == "quota_exceeded"
    up, op = quotas.for_request("fresh", "beta")
    assert _remaining(up, "fresh") == 5                 # the user's share is untouched
    assert _remaining(op, "beta") == 0


def test_user_exhausted_while_the_org_has_room_consumes_nothing_of_the_org() -> None:
    clock = Clock(0.0)
    f = limiter([], clock, QUOTAS)
    assert f.access(ctx(user="a", org="acme")) is None
    assert f.access(ctx(user="a", org="acme")) is None
    r = f.access(ctx(user="a", org="acme"))              # acme's user_limit is 2
    assert isinstance(r, LocalReply) and r.status == 429
    up, op = f.quotas.for_request("a", "acme")
    assert _remaining(op, "acme") == 1                  # 2 of the org's 3 used, not 3
    assert f.access(ctx(user="b", org="acme")) is None  # so b still fits the org total
    assert isinstance(f.access(ctx(user="c", org="acme")), LocalReply)  # now the org is full
    assert _remaining(f.quotas.for_request("c", "acme")[0], "c") == 2


def test_quota_inheritance_and_overrides() -> None:
    clock = Clock(0.0)
    f = limiter([], clock, QUOTAS)
    q = f.quotas
    assert q.for_request("vip", "acme")[0].limit == 100   # the user's override wins
    assert q.for_request("x", "acme")[0].limit == 2       # else the org's user_limit
    assert q.for_request("x", "beta")[0].limit == 5       # else default_user
    assert q.for_request("x", "acme")[1].limit == 3       # the org's override
    assert q.for_request("x", "beta")[1].limit == 8       # else default_org
    assert q.for_request("x", None)[1] is None            # no org: no org quota
    # Anonymous requests are not subject to quotas.
    assert all(f.access(ctx()) is None for _ in range(50))


def test_a_route_policy_refusal_refunds_the_quotas() -> None:
    clock = Clock(0.0)
    f = limiter([RateLimitConfig("route", 1, 60.0)], clock, QUOTAS)
    assert f.access(ctx(user="a", org="beta")) is None
    assert isinstance(f.access(ctx(user="a", org="beta")), LocalReply)
    up, op = f.quotas.for_request("a", "beta")
    assert _remaining(up, "a") == 4 and _remaining(op, "beta") == 7


@pytest.mark.parametrize("n", [1, 3])
def test_no_task_or_coroutine_is_created(n: int) -> None:
    clock = Clock(0.0)
    f = limiter([RateLimitConfig("ip", 5, 1.0)] * n, clock, QUOTAS)
    r = f.access(ctx(user="a", org="beta"))
    assert r is None                                      # synchronous: a plain value


def test_decisions_are_counted_in_node_memory_and_scraped_by_label() -> None:
    from gateway.admin.features import METRIC_SOURCES, AdminContext
    from gateway.config import loads_config
    from gateway.config.env import Settings
    from gateway.runtime import build_runtime
    from gateway.state.memory import NodeMemory
    from gateway.state.node import NodeState
    from gateway.state.view import StateView

    config = loads_config('[[services]]\nname = "s"\ntargets = ["http://127.0.0.1:9"]\n'
                          '[[routes]]\nname = "api"\npath = "/"\nservice = "s"\n'
                          '[[routes.rate_limits]]\nkey = "ip"\nlimit = 2\nwindow = 3600.0\n'
                          '[quotas]\ndefault_user = { limit = 1, window = 3600.0 }\n')
    state = NodeState(StateView(), memory=NodeMemory.private(8 << 20))
    settings = Settings(ratelimit_keys=64)
    runtime = build_runtime(config, settings, None, pool_factory=lambda *a: object(), state=state)
    f = runtime.router.routes[0].chain.filters[0]
    results = [f.access(ctx()) for _ in range(3)] + [f.access(ctx("9.9.9.9", user="u")) for _ in range(2)]
    assert [r is None for r in results] == [True, True, False, True, False]
    ctx_admin = AdminContext(settings, lambda: config, state)
    samples = {(s[3]["policy"], s[3]["result"]): s[4] for src in METRIC_SOURCES for s in src(ctx_admin)
               if s[0] == "gateway_ratelimit_decisions_total"}
    assert samples == {("quota:user", "allowed"): 1.0, ("quota:user", "rejected"): 1.0,
                       ("quota:org", "allowed"): 0.0, ("quota:org", "rejected"): 0.0,
                       ("0:ip", "allowed"): 3.0, ("0:ip", "rejected"): 1.0}
    assert all(s[3]["route"] == "api" for src in METRIC_SOURCES for s in src(ctx_admin)
               if s[0] == "gateway_ratelimit_decisions_total")


def test_a_surge_of_rejections_emits_ratelimit_surge() -> None:
    events: list[tuple[str, dict]] = []
    clock = Clock(0.0)
    f = build_filter("r", (RateLimitConfig("ip", 1, 3600.0),), None, 100, None, clock=clock,
                     emit=lambda ev, **kw: events.append((ev, kw)), surge=50)
    assert f is not None
    f.access(ctx())
    for i in range(30):                         # 30/s: below the threshold
        clock.now = 1.0 + i / 30
        f.access(ctx())
    assert events == []
    for i in range(200):                        # 200/s: past it
        clock.now = 2.0 + i / 200
        f.access(ctx())
    clock.now = 3.5
    f.access(ctx())
    assert [e for e, _ in events] == ["ratelimit_surge"]
    details = events[0][1]["details"]
    assert details["route"] == "r" and details["threshold"] == 50 and details["rejections_per_second"] >= 50
