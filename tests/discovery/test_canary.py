"""Canary routing: the cohort is sticky per user and sized by weight, the header overrides, a side
without a healthy target hands over to the other, run-time settings apply."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.config import ConfigErrors, loads_config
from gateway.discovery.balancers import make_service
from gateway.discovery.canary import CanaryService, validate
from gateway.discovery.service import Target
from gateway.pipeline.context import RequestContext


def ctx(ip: str = "", user: str | None = None, headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
    c = RequestContext()
    c.client_ip = ip
    c.consumer_id = user
    c.headers = headers or []
    return c


def svc(balancer: str = "round_robin") -> tuple[Any, list[Target]]:
    ts = [Target("10.0.0.1", 1, version="v1"), Target("10.0.0.2", 2, version="v1"), Target("10.0.0.3", 3, version="v2")]
    return make_service("s", ts, balancer), ts


@pytest.mark.parametrize("balancer", ["round_robin", "least_conn", "consistent_hash"])
def test_weight_sizes_the_cohort_and_users_stay(balancer: str) -> None:
    base, ts = svc(balancer)
    cs = CanaryService(base, "v2", 10, "x-canary")
    users = [f"user-{i}" for i in range(5000)]
    side = {u: cs.pick(ctx(user=u)).version for u in users}
    share = Counter(side.values())["v2"] / len(users)
    assert abs(share - 0.10) < 0.02
    for u in users[:500]:                              # sticky
        assert cs.pick(ctx(user=u)).version == side[u]
    # Raising the weight only moves users from stable to canary.
    cs.configure("v2", 30, "x-canary")
    after = {u: cs.pick(ctx(user=u)).version for u in users}
    assert all(after[u] == "v2" for u in users if side[u] == "v2")
    assert abs(Counter(after.values())["v2"] / len(users) - 0.30) < 0.03


def test_identity_falls_back_to_the_client_ip() -> None:
    base, ts = svc()
    cs = CanaryService(base, "v2", 50, None)
    sides = {cs.pick(ctx(ip=f"10.1.{i // 256}.{i % 256}")).version for i in range(200)}
    assert sides == {"v1", "v2"}
    assert len({cs.pick(ctx(ip="10.9.9.9")).version for _ in range(20)}) == 1


def test_header_always_and_never_override() -> None:
    base, ts = svc()
    cs = CanaryService(base, "v2", 0, "X-Canary")
    assert cs.pick(ctx(user="u", headers=[(b"x-canary", b"always")])) is ts[2]
    cs.configure("v2", 100, "X-Canary")
    assert cs.pick(ctx(user="u", headers=[(b"x-canary", b"Never")])).version == "v1"
    assert cs.pick(ctx(user="u")) is ts[2]


def test_a_side_without_healthy_targets_hands_over() -> None:
    base, ts = svc()
    cs = CanaryService(base, "v2", 100, None)
    base.set_active(ts[2], False)
    assert cs.pick(ctx(user="u")).version == "v1"
    assert cs.pick_retry(ctx(user="u"), ts[0]) is ts[1]
    base.set_active(ts[2], True)
    assert cs.pick(ctx(user="u")) is ts[2]
    assert cs.pick_retry(ctx(user="u"), ts[2]).version == "v1"


def test_new_targets_join_their_side() -> None:
    from gateway.discovery.balancers import set_targets

    base, ts = svc()
    cs = CanaryService(base, "v2", 100, None)
    extra = Target("10.0.0.4", 4, version="v2")
    set_targets(base, [*ts, extra])
    assert {cs.pick(ctx(user="u")) for _ in range(4)} == {ts[2], extra}


@pytest.mark.parametrize(("value", "field"), [
    ({"version": "v2", "weight": 101}, "weight"),
    ({"version": "v2", "weight": -1}, "weight"),
    ({"version": "v2", "weight": True}, "weight"),
    ({"weight": 5}, "version"),
    ({"version": "v 2", "weight": 5}, "version"),
    ({"version": "v2", "weight": 5, "header": "a b"}, "header"),
    ({"version": "v2", "weight": 5, "colour": 1}, "colour"),
])
def test_bad_runtime_settings_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(ValueError) as info:
        validate(value)
    assert str(info.value).startswith(f"{field}:")


def test_config_canary() -> None:
    base = '[[services]]\nname = "s"\ntargets = ["http://a:1"]\n[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n'
    cfg = loads_config(base + 'canary = { version = "v2", weight = 10, header = "x-canary" }\n')
    cc = cfg.routes[0].canary
    assert (cc.version, cc.weight, cc.header) == ("v2", 10, "x-canary")
    for bad, problem in (('canary = { version = "v2", weight = 101 }\n', "routes[0].canary.weight"),
                         ('canary = { weight = 1 }\n', "routes[0].canary.version: required"),
                         ('canary = { version = "v2", header = "a:b" }\n', "routes[0].canary.header")):
        with pytest.raises(ConfigErrors) as info:
            loads_config(base + bad)
        assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
