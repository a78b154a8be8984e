"""Every balancer of SPEC §3 behind Service.pick: distribution against the weights, unhealthy and
refused targets skipped, hash stickiness, key movement, least_conn and p2c fed by record()."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.config import loads_config
from gateway.discovery.balancers import BALANCERS, key_function, make_service, set_targets
from gateway.discovery.service import PASSIVE_DOWN, PASSIVE_FAILURES, Service, Target
from gateway.pipeline.context import RequestContext


def targets(n: int, weights: list[int] | None = None) -> list[Target]:
    ws = weights or [1] * n
    return [Target(f"10.0.0.{i + 1}", 8000 + i, weight=ws[i]) for i in range(n)]


def ctx(ip: str = "", headers: list[tuple[bytes, bytes]] | None = None, start: float = 0.0, **kw: Any) -> RequestContext:
    c = RequestContext()
    c.client_ip = ip
    c.headers = headers or []
    c.start = start
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def share(counts: Counter[Any], ts: list[Target]) -> list[float]:
    total = sum(counts.values())
    return [counts[t] / total for t in ts]


# --- distribution --------------------------------------------------------------------------------

@pytest.mark.parametrize("balancer", ["round_robin", "weighted", "least_conn", "p2c_ewma"])
def test_equal_weights_spread_evenly(balancer: str) -> None:
    ts = targets(4)
    s = make_service("s", ts, balancer)
    counts: Counter[Target] = Counter()
    for i in range(4000):
        c = ctx(start=float(i))
        t = s.pick(c)
        assert t is not None
        counts[t] += 1
        c.upstream_start, c.upstream_end = float(i), float(i) + 0.01
        s.record(c, t, None)
    for frac in share(counts, ts):
        assert abs(frac - 0.25) < 0.05, counts


@pytest.mark.parametrize("balancer", ["weighted", "round_robin", "least_conn"])
def test_weights_are_honoured_exactly_enough(balancer: str) -> None:
    ts = targets(3, [5, 1, 2])
    s = make_service("s", ts, balancer)
    counts: Counter[Target] = Counter()
    inflight = []
    for _ in range(8000):
        t = s.pick(ctx())
        assert t is not None
        counts[t] += 1
        inflight.append(t)
        if len(inflight) > 80:     # least_conn: keep 80 requests in flight, finish the oldest
            done = inflight.pop(0)
            c = ctx()
            c.upstream_start, c.upstream_end = 1.0, 1.01
            s.record(c, done, None)
    for frac, want in zip(share(counts, ts), [5 / 8, 1 / 8, 2 / 8], strict=True):
        assert abs(frac - want) < 0.03, (counts, balancer)


@pytest.mark.parametrize("balancer", ["ip_hash", "consistent_hash"])
def test_hash_balancers_spread_keys_by_weight(balancer: str) -> None:
    ts = targets(3, [2, 1, 1])
    s = make_service("s", ts, balancer, "ip" if balancer == "consistent_hash" else None)
    counts: Counter[Target] = Counter(s.pick(ctx(ip=f"192.168.{i // 250}.{i % 250}")) for i in range(20000))
    for frac, want in zip(share(counts, ts), [0.5, 0.25, 0.25], strict=True):
        assert abs(frac - want) < 0.06, counts


# --- availability and admit ---------------------------------------------------------------------

@pytest.mark.parametrize("balancer", BALANCERS)
def test_unhealthy_targets_are_skipped_by_every_balancer(balancer: str) -> None:
    ts = targets(3)
    s = make_service("s", ts, balancer, "header:x-user" if balancer == "consistent_hash" else None)
    s.set_active(ts[1], False)
    seen = {s.pick(ctx(ip=f"1.2.3.{i}", headers=[(b"x-user", str(i).encode())], start=float(i))) for i in range(300)}
    assert seen == {ts[0], ts[2]}
    s.set_active(ts[0], False)
    s.set_active(ts[2], False)
    assert s.pick(ctx(ip="1.2.3.4")) is None
    s.set_active(ts[1], True)
    assert s.pick(ctx(ip="1.2.3.4")) is ts[1]


@pytest.mark.parametrize("balancer", BALANCERS)
def test_admit_refusal_moves_to_another_target_bounded(balancer: str) -> None:
    ts = targets(4)
    s = make_service("s", ts, balancer)
    asked: list[Target] = []

    def refuse(t: Target) -> Any:
        def admit(c: Any) -> bool:
            asked.append(t)
            return False
        return admit

    ts[0].admit = refuse(ts[0])
    ts[1].admit = refuse(ts[1])
    for i in range(50):
        t = s.pick(ctx(ip=f"9.9.9.{i}", start=float(i)))
        assert t in (ts[2], ts[3])
    # Everyone refuses: None, after asking each target at most once.
    for t in ts:
        t.admit = refuse(t)
    asked.clear()
    assert s.pick(ctx(ip="9.9.9.9")) is None
    assert len(asked) <= 4 and len(set(asked)) == len(asked)
    # The refusal lasted for that pick only: the picker has every target back.
    for t in ts:
        t.admit = None
    assert {s.pick(ctx(ip=f"8.8.8.{i}", start=float(i))) for i in range(200)} == set(ts)


@pytest.mark.parametrize("balancer", BALANCERS)
def test_pick_retry_never_returns_the_failed_or_an_unusable_target(balancer: str) -> None:
    ts = targets(4)
    s = make_service("s", ts, balancer)
    s.set_active(ts[2], False)
    ts[3].admit = lambda c: False
    for i in range(30):
        c = ctx(ip=f"7.7.7.{i}", start=float(i))
        assert s.pick_retry(c, ts[0]) is ts[1]
        assert s.pick_retry(c, ts[1]) is ts[0]
    ts[1].available = False
    s._availability_changed(ts[1])
    assert s.pick_retry(ctx(ip="7.7.7.7"), ts[0]) is None
    # ts[0] is still usable for the next request.
    assert s.pick(ctx(ip="7.7.7.7")) is ts[0]


def test_single_target_round_robin_is_the_plain_service() -> None:
    s = make_service("s", targets(1), "round_robin")
    assert type(s) is Service


# --- hashing: stickiness, keys, movement -------------------------------------------------------------

@pytest.mark.parametrize(("hash_key", "make"), [
    ("ip", lambda k: ctx(ip=k)),
    ("header:X-User-Id", lambda k: ctx(headers=[(b"x-user-id", k.encode())])),
    ("cookie:sid", lambda k: ctx(headers=[(b"cookie", f"a=1; sid={k}; b=2".encode())])),
    ("claim:sub", lambda k: ctx(consumer_id=k)),
    ("claim:tier", lambda k: ctx(vars={"claims": {"tier": k}})),
])
def test_consistent_hash_is_sticky_per_key(hash_key: str, make: Any) -> None:
    ts = targets(5)
    a = make_service("s", ts, "consistent_hash", hash_key)
    b = make_service("s", list(reversed(targets(5))), "consistent_hash", hash_key)   # another worker, another order
    for i in range(200):
        k = f"user-{i}"
        first = a.pick(make(k))
        assert first is not None
        assert all(a.pick(make(k)) is first for _ in range(3))
        assert b.pick(make(k)).url == first.url       # placed by URL, not by position


def test_missing_hash_key_falls_back_to_round_robin() -> None:
    ts = targets(3)
    s = make_service("s", ts, "consistent_hash", "header:x-user")
    assert [s.pick(ctx()) for _ in range(6)] == ts + ts
    assert key_function("cookie:sid")(ctx(headers=[(b"cookie", b"sidx=1")])) is None


@pytest.mark.parametrize("balancer", ["ip_hash", "consistent_hash"])
def test_adding_a_target_moves_about_one_in_n_plus_one_keys(balancer: str) -> None:
    n = 6
    before = make_service("s", targets(n), balancer, "ip" if balancer == "consistent_hash" else None)
    after_ts = targets(n + 1)
    after = make_service("s", after_ts, balancer, "ip" if balancer == "consistent_hash" else None)
    keys = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(20000)]
    moved = to_new = 0
    for k in keys:
        x, y = before.pick(ctx(ip=k)), after.pick(ctx(ip=k))
        if x.url != y.url:
            moved += 1
            to_new += y is after_ts[-1]
    # The ring moves keys only to the new target; Maglev trades a little churn among the others
    # (its paper: a few %) for O(1) lookups.
    assert to_new >= (0.999 if balancer == "consistent_hash" else 0.9) * moved
    assert abs(moved / len(keys) - 1 / (n + 1)) < 0.04


def test_a_down_target_moves_only_its_own_keys() -> None:
    ts = targets(5)
    s = make_service("s", ts, "consistent_hash", "ip")
    keys = [f"172.16.{i // 256}.{i % 256}" for i in range(5000)]
    home = {k: s.pick(ctx(ip=k)) for k in keys}
    s.set_active(ts[2], False)
    for k in keys:
        now = s.pick(ctx(ip=k))
        assert now is not ts[2]
        if home[k] is not ts[2]:
            assert now is home[k]
    s.set_active(ts[2], True)
    assert all(s.pick(ctx(ip=k)) is home[k] for k in keys)


# --- least_conn and p2c_ewma fed by record() -----------------------------------------------------------

def test_least_conn_sends_to_the_least_busy() -> None:
    ts = targets(3)
    s = make_service("s", ts, "least_conn")
    assert s.observed
    held = [s.pick(ctx()) for _ in range(3)]      # one in flight on each
    assert set(held) == set(ts)
    c = ctx()
    c.upstream_start, c.upstream_end = 1.0, 1.1
    s.record(c, ts[1], None)                      # ts[1] finished: it is now the least busy
    assert s.pick(ctx()) is ts[1]
    assert s.pick(ctx()) in (ts[0], ts[2], ts[1])


def test_p2c_ewma_prefers_the_fast_target() -> None:
    ts = targets(2)
    s = make_service("s", ts, "p2c_ewma")
    counts: Counter[Target] = Counter()
    now = 100.0
    for _ in range(3000):
        c = ctx(start=now)
        t = s.pick(c)
        assert t is not None
        counts[t] += 1
        c.upstream_start = now
        c.upstream_end = now + (0.2 if t is ts[0] else 0.01)
        s.record(c, t, None)
        now += 0.01
    assert counts[ts[1]] > 0.8 * sum(counts.values()), counts


# --- passive health --------------------------------------------------------------------------------------

def test_passive_health_takes_a_failing_target_out_then_tries_it_again() -> None:
    ts = targets(2)
    s = make_service("s", ts, "round_robin")
    assert s.observed and s.passive
    c = ctx()
    for i in range(PASSIVE_FAILURES):
        assert ts[0].available
        c.upstream_end = 10.0 + i
        s.record(c, ts[0], "connect")
    assert not ts[0].available
    assert {s.pick(ctx()) for _ in range(4)} == {ts[1]}
    s.expire_passive(10.0 + PASSIVE_FAILURES + PASSIVE_DOWN - 1.5)
    assert not ts[0].available                     # still within its 5 s
    s.expire_passive(10.0 + PASSIVE_FAILURES + PASSIVE_DOWN)
    assert ts[0].available                         # trial
    c.upstream_end = 30.0
    s.record(c, ts[0], "reset")                    # the trial failed: out again at once
    assert not ts[0].available
    s.expire_passive(30.0 + 2 * PASSIVE_DOWN - 0.5)
    assert not ts[0].available                     # a failed trial doubles the time out
    s.expire_passive(30.0 + 2 * PASSIVE_DOWN)
    assert ts[0].available
    s.record(c, ts[0], None)                       # the trial succeeded: the count is cleared
    assert ts[0].available and ts[0].passive_fails == 0 and ts[0].passive_trips == 0
    for _ in range(PASSIVE_FAILURES - 1):
        s.record(c, ts[0], "timeout")
    assert ts[0].available


def test_failed_trials_back_off_to_a_minute_at_most() -> None:
    ts = targets(2)
    s = make_service("s", ts, "round_robin")
    c = ctx()
    now = 100.0
    outs = []
    for _ in range(10):
        while ts[0].available:
            c.upstream_end = now
            s.record(c, ts[0], "connect")
        outs.append(ts[0].passive_until - now)
        now = ts[0].passive_until
        s.expire_passive(now)
    assert outs[:5] == [5.0, 10.0, 20.0, 40.0, 60.0] and max(outs) == 60.0


def test_protocol_errors_and_statuses_do_not_count_for_passive_health() -> None:
    ts = targets(2)
    s = make_service("s", ts, "round_robin")
    c = ctx()
    c.status = 503
    for _ in range(20):
        s.record(c, ts[0], "protocol")
        s.record(c, ts[0], None)
    assert ts[0].available


def test_no_passive_health_when_a_breaker_replaces_it() -> None:
    ts = targets(2)
    s = make_service("s", ts, "round_robin", passive=False)
    for _ in range(20):
        s.record(ctx(), ts[0], "connect")
    assert ts[0].available


def test_set_targets_switches_round_robin_to_weighted_and_back() -> None:
    s = make_service("s", targets(2), "round_robin")
    set_targets(s, targets(3, [1, 3, 1]))
    assert type(s).__name__ == "WeightedService"
    counts = Counter(s.pick(ctx()) for _ in range(500))
    assert max(counts.values()) == 300
    set_targets(s, targets(2))
    assert type(s) is Service


# --- config ------------------------------------------------------------------------------------------------

def svc(extra: str) -> str:
    return ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:1", weight = 3 }, "http://b:2"]\n' + extra +
            '[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n')


@pytest.mark.parametrize("balancer", BALANCERS)
def test_every_balancer_loads(balancer: str) -> None:
    cfg = loads_config(svc(f'balancer = "{balancer}"\n'))
    assert cfg.services[0].balancer == balancer
    assert cfg.services[0].targets[0].weight == 3


@pytest.mark.parametrize(("extra", "problem"), [
    ('balancer = "random"\n', "services[0].balancer: expected one of round_robin, weighted"),
    ('balancer = "consistent_hash"\nhash_key = "body:x"\n', "services[0].hash_key: expected ip, header:NAME"),
    ('balancer = "consistent_hash"\nhash_key = "header:"\n', "services[0].hash_key: expected ip, header:NAME"),
    ('balancer = "consistent_hash"\nhash_key = "header:a b"\n', "services[0].hash_key: expected ip, header:NAME"),
    ('[services.health]\ninterval = 0\n', "services[0].health.interval: expected"),
    ('[services.health]\nhealthy_threshold = 0\n', "services[0].health.healthy_threshold: expected"),
    ('[services.health]\npath = "nope"\n', "services[0].health.path: expected a URL path"),
    ('[services.health]\nbogus = 1\n', "services[0].health.bogus: unknown key"),
    ('[services.health]\ninterval = 10.0\nmax_backoff = 5.0\n', "services[0].health.max_backoff: expected at least interval"),
])
def test_bad_balancer_settings_name_their_path(extra: str, problem: str) -> None:
    from gateway.config import ConfigErrors

    with pytest.raises(ConfigErrors) as info:
        loads_config(svc(extra))
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_health_defaults_and_hash_key_default() -> None:
    cfg = loads_config(svc('balancer = "consistent_hash"\n[services.health]\n'))
    h = cfg.services[0].health
    assert (h.path, h.interval, h.timeout, h.healthy_threshold, h.unhealthy_threshold, h.max_backoff) == \
        ("/health", 5.0, 1.0, 2, 3, 60.0)
    assert cfg.services[0].hash_key == "ip"


@pytest.mark.parametrize(("extra", "problem"), [
    ("fallback = 3\n", "routes[0].fallback: expected a table"),
    ("fallback = { status = 99 }\n", "routes[0].fallback.status: expected"),
    ("fallback = { body = 3 }\n", "routes[0].fallback.body: expected a string"),
    ('fallback = { content_type = "text" }\n', "routes[0].fallback.content_type: expected a media type"),
    ('fallback = { content_type = "text/plain\\r\\nX: y" }\n', "routes[0].fallback.content_type: expected"),
    ("fallback = { colour = 1 }\n", "routes[0].fallback.colour: unknown key"),
])
def test_bad_fallbacks_name_their_path(extra: str, problem: str) -> None:
    from gateway.config import ConfigErrors

    with pytest.raises(ConfigErrors) as info:
        loads_config(svc("") + extra)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_route_fallback_answers_only_when_every_target_is_out() -> None:
    # pick() returns None only when no target can be used; the route's prepared reply then says
    # no-healthy-target (nothing was refused by a breaker: breaker_ticket stays >= 0).
    from gateway.discovery.fallback import Unavailable

    cfg = loads_config(svc("") + 'fallback = { status = 503, body = "down", content_type = "text/plain" }\n')
    unavailable = Unavailable(cfg.routes[0].fallback)
    ts = targets(2)
    s = make_service("s", ts, "round_robin")
    c = ctx(service=s)
    assert s.pick(c) is not None
    s.set_active(ts[0], False)
    assert s.pick(c) is ts[1]
    s.set_active(ts[1], False)
    assert s.pick(c) is None
    reply = unavailable(c)
    assert (reply.status, reply.body, reply.content_type) == (503, b"down", b"text/plain")
    assert (b"X-Gateway-Fallback", b"no-healthy-target") in reply.headers
