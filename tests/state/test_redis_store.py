"""RedisStore against real redis-servers (no mocks): two instances on one server, changes in
version order, resync after lost messages, state that outlives the instances, membership."""
from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import uvloop

from gateway.state.redis_link import RedisLink, RedisUnavailable
from gateway.state.redis_store import MAX_VALUE_BYTES, RedisStore
from tests.state.helpers import poll
from tests.support.redis_server import RedisProcess


def run(coro: Any) -> Any:
    return uvloop.run(coro)


class Mirror:
    """What the lead's control plane keeps: a local copy fed by on_change / on_resync."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.changes: list[tuple[int, str, Any]] = []
        self.resyncs: list[int] = []
        self.applied_at: dict[int, float] = {}

    def on_change(self, version: int, key: str, value: Any | None) -> None:
        assert not self.changes or version > self.changes[-1][0], "on_change out of order"
        self.changes.append((version, key, value))
        self.applied_at[version] = time.monotonic()
        if value is None:
            self.state.pop(key, None)
        else:
            self.state[key] = value

    def on_resync(self, version: int, state: dict[str, Any]) -> None:
        self.resyncs.append(version)
        self.state = dict(state)


class Instance:
    def __init__(self, link: RedisLink, store: RedisStore, mirror: Mirror) -> None:
        self.link, self.store, self.mirror = link, store, mirror


# The call budget of the tests that are about ordering, formats and recovery, not about the budget.
# With the product's 200 ms, a put on a live, unpaused server failed with RedisUnavailable on a loaded
# machine (2 cores, load ~10) in test_message_format_on_the_wire: the budget doing its job, which made
# a format test fail by chance. The budget itself is tested on purpose, by pausing redis-server, with
# REQUEST_BUDGET (here and in test_redis_link).
WORK_BUDGET = 1.0
REQUEST_BUDGET = 0.2


@asynccontextmanager
async def instance(url: str, prefix: str, name: str, *, cluster: bool = False, heartbeat: float = 1.0,
                   member_ttl: float = 5.0, timeout: float = WORK_BUDGET) -> AsyncIterator[Instance]:
    """One gateway instance's state layer: its own link, store and mirror; started and synced.
    The call budget is WORK_BUDGET unless a test is about the budget (see there)."""
    link = RedisLink(url, cluster=cluster, prefix=prefix, timeout=timeout, client_name=name)
    mirror = Mirror()
    store = RedisStore(link, name, on_change=mirror.on_change, on_resync=mirror.on_resync,
                       heartbeat=heartbeat, member_ttl=member_ttl)
    await link.start()
    await store.start()
    try:
        assert await store.wait_synced(5), f"{name} never synced: {link.down_reason}"
        yield Instance(link, store, mirror)
    finally:
        await store.close()
        await link.close()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


async def _converged(*insts: Instance, timeout: float = 3.0) -> dict[str, Any]:
    """Wait until every mirror equals the state in Redis; return that state."""
    version, truth = await insts[0].store.load()
    ok = await poll(lambda: all(i.store.version == version and i.mirror.state == truth for i in insts), timeout)
    assert ok, [(i.store.instance_id, i.store.version, version, i.mirror.state == truth) for i in insts]
    return truth


def test_hundred_puts_on_a_reach_b_in_order_and_latency(redis_url: str) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(redis_url, p, "a") as a, instance(redis_url, p, "b") as b:
            versions: list[int] = []
            latency: list[float] = []
            for i in range(100):
                t0 = time.monotonic()
                v = await a.store.put(f"targets/users/{i % 10}", {"url": f"http://10.0.0.{i}:80", "i": i})
                versions.append(v)
                assert await poll(lambda v=v: v in b.mirror.applied_at, 1.0), f"v{v} not on B within 1 s"
                latency.append(b.mirror.applied_at[v] - t0)
            assert versions == sorted(set(versions)) and versions[-1] - versions[0] == 99, "strictly +1"
            # B saw every one of them, in order, with the value A wrote
            seen = [(v, k, val) for v, k, val in b.mirror.changes if v >= versions[0]]
            assert [v for v, _, _ in seen] == versions
            assert seen[-1][2] == {"url": "http://10.0.0.99:80", "i": 99}
            # A applied its own writes through on_change too (nothing for the caller to apply)
            assert [v for v, _, _ in a.mirror.changes if v >= versions[0]] == versions
            truth = await _converged(a, b)
            assert len(truth) == 10
            lat_ms = sorted(x * 1000 for x in latency)
            print(f"\nput() on A -> on_change on B, 100 changes: p50 {statistics.median(lat_ms):.2f} ms, "
                  f"p90 {lat_ms[89]:.2f} ms, max {lat_ms[-1]:.2f} ms")
    run(main())


def test_deletes_and_absent_keys(redis_url: str) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(redis_url, p, "a") as a, instance(redis_url, p, "b") as b:
            v1 = await a.store.put("keys/k1", {"scopes": ["x"]})
            v2 = await a.store.delete("keys/k1")
            v3 = await a.store.delete("keys/never-there")   # still one version, still published
            assert v1 < v2 < v3
            assert await poll(lambda: b.store.version == v3, 1)
            assert (v2, "keys/k1", None) in b.mirror.changes and "keys/k1" not in b.mirror.state
            assert (await a.store.load()) == (v3, {})
    run(main())


def test_bad_puts_are_refused_before_touching_redis(redis_url: str) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(redis_url, p, "a") as a:
            before = await a.store.load()
            with pytest.raises(ValueError, match="limit"):
                await a.store.put("big", "x" * MAX_VALUE_BYTES)   # its JSON has 2 more bytes
            with pytest.raises(ValueError):
                await a.store.put("none", None)
            with pytest.raises(ValueError):
                await a.store.put("", 1)
            with pytest.raises(ValueError):
                await a.store.put("k" * 2000, 1)
            with pytest.raises(TypeError):
                await a.store.put("obj", object())
            assert await a.store.load() == before
            v = await a.store.put("just-fits", "x" * (MAX_VALUE_BYTES - 2))
            assert (await a.store.load())[0] == v
    run(main())


async def _write_concurrently(a: Instance, b: Instance, rounds: int) -> list[BaseException]:
    """A and B write the same three keys at once, `rounds` times; the writes that failed.

    A write may fail: the state layer's call budget is a product property, so a slow Redis (a
    loaded machine, a paused server) turns a put into RedisUnavailable rather than a late success.
    Such a write may still have landed in Redis; its message then applies it everywhere. What must
    hold either way is that every mirror ends with what Redis holds. Anything other than
    RedisUnavailable is a bug and is raised."""
    failed: list[BaseException] = []
    for i in range(rounds):
        results = await asyncio.gather(a.store.put(f"k{i % 3}", f"a{i}"), b.store.put(f"k{i % 3}", f"b{i}"),
                                       a.store.delete(f"k{(i + 1) % 3}"), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                if not isinstance(r, RedisUnavailable):
                    raise r
                failed.append(r)
    return failed


async def _converged_after_outage(a: Instance, b: Instance) -> dict[str, Any]:
    """_converged, once both links are up again (a long stall may have marked one down)."""
    deadline = time.monotonic() + 10
    while True:
        assert await poll(lambda: a.link.up and b.link.up, 10), "the links never came back up"
        try:
            return await _converged(a, b, timeout=10)
        except RedisUnavailable:         # the full read itself met a stall: read again
            if time.monotonic() > deadline:
                raise


def _check_end_state(truth: dict[str, Any], a: Instance, b: Instance) -> None:
    assert a.mirror.state == b.mirror.state == truth
    # Only what was written: k0..k2, each holding one of the values A or B put there.
    for key, value in truth.items():
        assert key in ("k0", "k1", "k2") and isinstance(value, str) and value[0] in "ab"
        assert int(value[1:]) % 3 == int(key[1]), (key, value)


def test_concurrent_writes_to_one_key_end_the_same_everywhere(redis_url: str) -> None:
    """A and B write the same keys at once: every mirror must end with what Redis holds (the
    reason own writes go through on_change in version order, not applied by the caller).
    On a loaded machine a write may exceed the budget and fail: that is the product keeping its
    budget (tested on purpose below and in test_redis_link), not a broken consistency."""
    async def main() -> None:
        p = _prefix()
        async with instance(redis_url, p, "a") as a, instance(redis_url, p, "b") as b:
            failed = await _write_concurrently(a, b, 60)
            truth = await _converged_after_outage(a, b)
            _check_end_state(truth, a, b)
            assert len(failed) < 3 * 60, "not one write got through: this test checked nothing"
    run(main())


def test_concurrent_writes_that_time_out_still_end_the_same_everywhere(server: RedisProcess) -> None:
    """The same writes while Redis stalls longer than the budget: the puts in flight fail with
    RedisUnavailable while it is still paused, they may land in Redis all the same when it resumes,
    and every mirror still ends with what Redis holds. (What the loaded machine did by chance to
    the test above, done on purpose.)"""
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a", timeout=REQUEST_BUDGET) as a, \
                instance(server.url, p, "b", timeout=REQUEST_BUDGET) as b:
            await _write_concurrently(a, b, 10)
            server.pause()
            try:
                # Paused for as long as it takes: the writes can only end by giving up (the bound
                # turns a write that waited for Redis into a failure here instead of a hang).
                failed = await asyncio.wait_for(_write_concurrently(a, b, 1), 5)
            finally:
                server.resume()
            assert failed and all(isinstance(e, RedisUnavailable) for e in failed)
            failed += await _write_concurrently(a, b, 20)
            truth = await _converged_after_outage(a, b)
            _check_end_state(truth, a, b)
    run(main())


def _kill_pubsub_of(server: RedisProcess, name: str) -> int:
    r = server.client()
    killed = 0
    for c in r.client_list(_type="pubsub"):
        if c.get("name") == name:
            r.client_kill_filter(_id=c["id"])
            killed += 1
    return killed


def test_listener_resyncs_after_losing_its_connection(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a") as a, instance(server.url, p, "b") as b:
            await a.store.put("before", 1)
            assert await poll(lambda: "before" in b.mirror.state, 1)
            resyncs = len(b.mirror.resyncs)
            assert _kill_pubsub_of(server, "b") == 1
            for i in range(30):   # B's listener is reconnecting meanwhile: it misses some of these
                await a.store.put(f"during/{i}", i)
                if i % 10 == 0:
                    await a.store.delete("before")
            truth = await _converged(a, b)
            assert len(b.mirror.resyncs) > resyncs and len(truth) == 30
            assert b.link.up, "a lost pub/sub connection is not an outage"
    run(main())


def test_a_version_gap_triggers_a_full_resync(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a") as a, instance(server.url, p, "b") as b:
            await a.store.put("x", 1)
            assert await poll(lambda: b.mirror.state.get("x") == 1, 1)
            resyncs = len(b.mirror.resyncs)
            # Five versions whose messages nobody will ever see (as if lost), and a changed value.
            r = server.client()
            r.incrby(a.link.key("version"), 5)
            r.hset(a.link.key("kv"), "x", b"2")
            v = await a.store.put("y", 3)
            assert await poll(lambda: b.store.version == v, 2)
            assert len(b.mirror.resyncs) == resyncs + 1 and b.mirror.resyncs[-1] == v
            assert b.mirror.state == {"x": 2, "y": 3}
    run(main())


def test_a_listener_that_falls_behind_is_cut_by_redis_and_resyncs(server: RedisProcess) -> None:
    """The listener buffers nothing of its own while busy: unread messages wait in the socket and
    in Redis' output buffer for that client, which `client-output-buffer-limit pubsub` bounds.
    B's loop is blocked (a stuck on_change) while A, in another thread, publishes 16 MB:
    Redis drops B's connection, and B reconnects and resyncs to exactly A's state."""
    server.client().config_set("client-output-buffer-limit", "pubsub 128kb 64kb 1")
    p = _prefix()
    stalled, written = threading.Event(), threading.Event()

    def writer() -> None:
        async def main() -> None:
            async with instance(server.url, p, "a") as a:
                assert stalled.wait(5)
                for i in range(512):
                    await a.store.put(f"big/{i % 64}", {"i": i, "pad": "x" * 32768})
                written.set()
        uvloop.run(main())

    async def main() -> None:
        async with instance(server.url, p, "b") as b:
            resyncs = len(b.mirror.resyncs)
            first = b.mirror.on_change

            def slow_once(v: int, k: str, val: Any) -> None:
                b.store._on_change = first
                stalled.set()
                written.wait(10)   # blocks B's whole loop, as a stuck callback would
                first(v, k, val)

            b.store._on_change = slow_once
            t = threading.Thread(target=writer)
            t.start()
            await b.store.put("trigger", 1)   # on_change of this write stalls B
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
            version, truth = await b.store.load()
            assert await poll(lambda: b.store.version == version and b.mirror.state == truth, 3)
            assert len(b.mirror.resyncs) > resyncs, "B should have been cut off and resynced"
            assert len(truth) == 65
    run(main())


def test_scripts_survive_a_script_cache_flush(server: RedisProcess) -> None:
    """EVALSHA first; on NOSCRIPT (a restarted or flushed Redis) the script is loaded again."""
    async def main() -> None:
        # A second round trip (NOSCRIPT, then EVAL) must not meet the budget on a busy box: the
        # test is about the reload, so its link gets a second.
        async with instance(server.url, _prefix(), "a") as a:
            await a.store.put("k", 1)
            server.client().script_flush()
            v = await a.store.put("k", 2)
            assert await a.store.load() == (v, {"k": 2})
            assert a.link.errors == {}
    run(main())


def test_malformed_message_triggers_a_resync(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "b") as b:
            resyncs = len(b.mirror.resyncs)
            server.client().publish(b.store.channel, b"{not json")
            assert await poll(lambda: len(b.mirror.resyncs) == resyncs + 1, 2)
            assert b.store.synced
    run(main())


def test_state_survives_instance_restarts(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a") as a, instance(server.url, p, "b") as b:
            for i in range(20):
                await (a if i % 2 else b).store.put(f"limits/routes/r{i}", {"limit": i, "window": 1.0})
            await a.store.delete("limits/routes/r0")
            truth = await _converged(a, b)
        # both gone; two new instances (new links, new stores) load what was persisted
        async with instance(server.url, p, "a2") as a2, instance(server.url, p, "b2") as b2:
            assert a2.mirror.state == b2.mirror.state == truth and len(truth) == 19
            assert a2.mirror.resyncs and a2.mirror.changes == []
    run(main())


def test_writes_fail_fast_and_apply_nothing_while_redis_is_down(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a") as a:
            await a.store.put("k", 1)
            server.kill()
            assert await poll(lambda: not a.link.up, 3)
            before = dict(a.mirror.state)
            t0 = time.monotonic()
            for call in (a.store.put("k", 2), a.store.delete("k"), a.store.load()):
                with pytest.raises(RedisUnavailable):
                    await call
            assert time.monotonic() - t0 < 0.05
            assert a.mirror.state == before
            assert a.link.errors.get("put") == 1 and a.link.errors.get("delete") == 1
    run(main())


def test_listener_notices_a_paused_redis_and_resyncs_after(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a", timeout=REQUEST_BUDGET) as a, \
                instance(server.url, p, "b", timeout=REQUEST_BUDGET) as b:
            await a.store.put("k", 1)
            assert await poll(lambda: b.mirror.state.get("k") == 1, 1)
            resyncs = len(b.mirror.resyncs)
            server.pause()
            # B's listener must give up on its silent connection (no PONG) rather than wait forever
            assert await poll(lambda: not b.store.synced, 4), "listener never noticed the pause"
            server.resume()
            assert await poll(lambda: b.store.synced and a.link.up, 6)
            assert len(b.mirror.resyncs) > resyncs
            v = await a.store.put("k", 2)
            assert await poll(lambda: b.store.version >= v and b.mirror.state.get("k") == 2, 1)
    run(main())


def test_membership_counts_live_instances(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        hb = {"heartbeat": 0.1, "member_ttl": 0.6}
        async with instance(server.url, p, "a", **hb) as a:
            assert a.store.live_instances == 1
            async with instance(server.url, p, "b", **hb) as b:
                assert await poll(lambda: a.store.live_instances == 2 and b.store.live_instances == 2, 2)
                members = a.link.key("members")
                assert 0 < server.client().pttl(members) <= 600
            # b closed: it left the set at once; a sees 1 at its next heartbeat
            assert await poll(lambda: a.store.live_instances == 1, 1)
            # c stops heartbeating without closing (its link dies): gone after member_ttl
            async with instance(server.url, p, "c", **hb) as c:
                assert await poll(lambda: a.store.live_instances == 2, 2)
                for t in c.store._tasks:
                    t.cancel()
                t0 = time.monotonic()
                assert await poll(lambda: a.store.live_instances == 1, 2)
                assert time.monotonic() - t0 >= 0.3, "expired only after member_ttl"
            # Redis unreachable: the last count stays (the limiter sizes its fallback from it)
            async with instance(server.url, p, "d", **hb) as d:
                assert await poll(lambda: a.store.live_instances == 2 and d.store.live_instances == 2, 2)
                server.kill()
                await asyncio.sleep(0.5)
                assert a.store.live_instances == 2 and d.store.live_instances == 2
    run(main())


def test_membership_uses_redis_time_and_the_set_expires(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a", heartbeat=0.1, member_ttl=0.5) as a:
            assert await poll(lambda: server.client().zscore(a.link.key("members"), "a") is not None, 1)
            score = server.client().zscore(a.link.key("members"), "a")
            now_ms = (lambda t: t[0] * 1000 + t[1] // 1000)(server.client().time())
            assert 0 < score - now_ms <= 500, (score, now_ms)
        # closed: removed; and with nobody heartbeating, the key itself is gone
        assert server.client().exists(a.link.key("members")) == 0
    run(main())


def test_message_format_on_the_wire(server: RedisProcess) -> None:
    async def main() -> None:
        p = _prefix()
        async with instance(server.url, p, "a") as a:
            sub = server.client().pubsub()
            sub.subscribe(a.store.channel)
            assert sub.get_message(timeout=1)["type"] == "subscribe"
            v = await a.store.put("k/é", {"n": 1, "s": "x\"y"})
            d = await a.store.delete("k/é")
            msgs = []
            for _ in range(2):
                m = sub.get_message(timeout=1)
                assert m is not None
                msgs.append(orjson.loads(m["data"]))
            assert msgs == [{"v": v, "k": "k/é", "val": {"n": 1, "s": "x\"y"}, "o": "a"},
                            {"v": d, "k": "k/é", "val": None, "o": "a"}]
            assert server.client().hget(a.link.key("kv"), "k/é") is None
            sub.close()
    run(main())


def test_store_on_a_real_one_node_cluster() -> None:
    async def main(url: str) -> None:
        p = _prefix()
        hb = {"heartbeat": 0.1, "member_ttl": 0.6}
        async with instance(url, p, "a", cluster=True, **hb) as a, \
                instance(url, p, "b", cluster=True, **hb) as b:
            for i in range(20):
                await a.store.put(f"k{i}", i)
            await b.store.delete("k0")
            truth = await _converged(a, b)
            assert len(truth) == 19
            assert await poll(lambda: a.store.live_instances == 2, 2)
    with RedisProcess(cluster=True) as srv:
        run(main(srv.url))
