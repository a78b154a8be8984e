"""Round-robin pick, Target identity, and the runtime: chains, pool sharing and reuse across reloads."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.config import load_settings, loads_config
from gateway.discovery import Service, Target
from gateway.pipeline import EMPTY_CHAIN, LocalReply
from gateway.routing import Route
from gateway.runtime import Runtime, build_chain, build_runtime


class FakePool:
    created: list[FakePool] = []

    def __init__(self, loop: Any, host: str, port: int, settings: Any) -> None:
        self.loop, self.host, self.port, self.settings = loop, host, port, settings
        self.closed = 0
        FakePool.created.append(self)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    FakePool.created = []


def test_round_robin_rotates() -> None:
    ts = [Target("10.0.0.1", 80), Target("10.0.0.2", 80), Target("10.0.0.3", 80)]
    s = Service("s", ts)
    assert [s.pick(None) for _ in range(7)] == [ts[0], ts[1], ts[2], ts[0], ts[1], ts[2], ts[0]]


def test_round_robin_skips_unavailable_and_returns_none_when_all_down() -> None:
    ts = [Target("a", 1), Target("b", 1), Target("c", 1)]
    s = Service("s", ts)
    ts[1].available = False
    assert [s.pick(None) for _ in range(4)] == [ts[0], ts[2], ts[0], ts[2]]
    for t in ts:
        t.available = False
    assert s.pick(None) is None
    assert Service("empty", []).pick(None) is None


def test_round_robin_survives_a_shrinking_target_list() -> None:
    ts = [Target("a", 1), Target("b", 1), Target("c", 1)]
    s = Service("s", ts)
    s.pick(None), s.pick(None)
    del ts[1:]
    assert s.pick(None) is ts[0]


@pytest.mark.parametrize(("host", "port", "tid", "host_header"), [
    ("127.0.0.1", 9001, "127.0.0.1:9001", b"127.0.0.1:9001"),
    ("backend", 80, "backend:80", b"backend"),
    ("::1", 8080, "[::1]:8080", b"[::1]:8080"),
])
def test_target_identity(host: str, port: int, tid: str, host_header: bytes) -> None:
    t = Target(host, port)
    assert (t.id, t.host_header, t.url) == (tid, host_header, f"http://{tid}")


CONFIG = '''
[[services]]
name = "users"
targets = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
[[services]]
name = "orders"
targets = ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]
[[routes]]
name = "users"
path = "/users"
service = "users"
[[routes]]
name = "orders"
path = "/orders"
methods = ["GET"]
service = "orders"
timeout = 3
'''


def test_build_runtime_compiles_everything() -> None:
    settings = load_settings({})
    loop = object()
    rt = build_runtime(loads_config(CONFIG), settings, loop, pool_factory=FakePool)
    assert isinstance(rt, Runtime) and rt.settings is settings
    assert set(rt.services) == {"users", "orders"}
    # one pool per distinct (host, port): 9002 is shared by both services
    assert sorted(rt.pools) == [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)]
    assert len(FakePool.created) == 3
    assert all(p.loop is loop and p.settings is settings for p in FakePool.created)
    u9002 = rt.services["users"].targets[1]
    o9002 = rt.services["orders"].targets[0]
    assert u9002.pool is o9002.pool is rt.pools[("127.0.0.1", 9002)]
    route = rt.router.match(b"GET", b"h", b"/orders/7")
    assert isinstance(route, Route)
    assert route.service is rt.services["orders"] and route.timeout == 3.0 and route.chain is EMPTY_CHAIN
    assert route.service.pick(None).id == "127.0.0.1:9002"
    reply = rt.router.match(b"POST", b"h", b"/orders")
    assert isinstance(reply, LocalReply) and reply.status == 405


def test_reload_reuses_pools_and_closes_the_dropped_ones() -> None:
    settings = load_settings({})
    old = build_runtime(loads_config(CONFIG), settings, None, pool_factory=FakePool)
    old_pools = dict(old.pools)
    new_text = CONFIG.replace('"http://127.0.0.1:9003"', '"http://127.0.0.1:9004"')
    new = build_runtime(loads_config(new_text), settings, None, previous=old, pool_factory=FakePool)
    # the same upstreams keep the same (warm) pool objects; only 9004 is new
    assert new.pools[("127.0.0.1", 9001)] is old_pools[("127.0.0.1", 9001)]
    assert new.pools[("127.0.0.1", 9002)] is old_pools[("127.0.0.1", 9002)]
    assert len(FakePool.created) == 4 and FakePool.created[-1].port == 9004
    assert all(p.closed == 0 for p in FakePool.created)
    new.close_unused(old)
    assert [p.port for p in FakePool.created if p.closed] == [9003]
    new.close_unused(old)  # twice is harmless: the dropped pool is closed once
    assert old_pools[("127.0.0.1", 9003)].closed == 1
    new.close_unused(None)
    new.close_unused(new)
    assert sum(p.closed for p in FakePool.created) == 1
    # closing the old runtime later (worker shutdown) must not close the pools the new one took over
    old.close()
    assert sum(p.closed for p in FakePool.created) == 1
    new.close()
    assert all(p.closed == 1 for p in FakePool.created)


def test_reload_to_empty_config_closes_all_and_close_is_idempotent() -> None:
    from gateway.config import load_config

    settings = load_settings({})
    old = build_runtime(loads_config(CONFIG), settings, None, pool_factory=FakePool)
    empty = build_runtime(load_config(None), settings, None, previous=old, pool_factory=FakePool)
    reply = empty.router.match(b"GET", b"h", b"/users")
    assert isinstance(reply, LocalReply) and reply.status == 404
    empty.close_unused(old)
    assert all(p.closed == 1 for p in FakePool.created)
    rt = build_runtime(loads_config(CONFIG), settings, None, pool_factory=FakePool)
    rt.close()
    rt.close()
    assert all(p.closed == 1 for p in FakePool.created)


def test_in_flight_route_keeps_its_old_pool_after_reload() -> None:
    settings = load_settings({})
    old = build_runtime(loads_config(CONFIG), settings, None, pool_factory=FakePool)
    held = old.router.match(b"GET", b"h", b"/users")
    assert isinstance(held, Route)
    new = build_runtime(loads_config(CONFIG), settings, None, previous=old, pool_factory=FakePool)
    assert held.service is not new.services["users"]          # a fresh compiled object graph...
    assert held.service.targets[0].pool is new.services["users"].targets[0].pool  # ...on the same pools


def test_build_chain_is_empty_until_policies_exist() -> None:
    cfg = loads_config(CONFIG)
    assert build_chain(cfg.routes[0], load_settings({})) is EMPTY_CHAIN


def test_default_pool_factory_uses_gateway_http_pool() -> None:
    pool_mod = pytest.importorskip("gateway.http.pool", reason="gateway.http.pool is written by the data-plane helper")
    created: list[Any] = []

    class Spy(pool_mod.UpstreamPool):  # type: ignore[name-defined,misc]
        def __init__(self, *a: Any) -> None:
            created.append(a)
            super().__init__(*a)

    orig = pool_mod.UpstreamPool
    pool_mod.UpstreamPool = Spy
    try:
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            rt = build_runtime(loads_config(CONFIG), load_settings({}), loop)
            assert len(created) == 3 and {a[1:3] for a in created} == {("127.0.0.1", p) for p in (9001, 9002, 9003)}
            rt.close()
        finally:
            loop.close()
    finally:
        pool_mod.UpstreamPool = orig
