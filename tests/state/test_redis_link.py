"""RedisLink against real redis-servers (no mocks): the call budget holds against a paused server,
up/down fires once per transition, reconnects back off, timed-out connections are never reused."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from gateway.state.redis_link import BACKOFF_CAP, RedisLink, RedisUnavailable, backoff_delay, within
from tests.state.helpers import CountingListener, Transitions, poll
from tests.support.redis_server import RedisProcess

# Scheduling slack allowed on top of a budget: generous for 2 shared, loaded cores, yet far below
# what an unbounded wait would show (a paused server never answers at all).
SLACK = 0.25


def run(coro: Any) -> Any:
    return uvloop.run(coro)


async def _up_link(url: str, t: Transitions | None = None, **kw: Any) -> RedisLink:
    t = t or Transitions()
    link = RedisLink(url, on_up=t.on_up, on_down=t.on_down, **kw)
    await link.start()
    assert await link.wait_up(5), f"link never came up: {link.down_reason}"
    # The probe runs on its own client: open the budgeted pool's first connection here, so a busy
    # CI box's connect time does not land on the first call a test makes (budget tests build
    # their links themselves).
    for _ in range(20):
        try:
            await link.call("warmup", lambda c: c.ping())
            break
        except RedisUnavailable:
            await asyncio.sleep(0.05)
    return link


def test_key_layout_and_basic_call(redis_url: str) -> None:
    async def main() -> None:
        t = Transitions()
        link = await _up_link(redis_url, t, prefix="gwtest:")
        try:
            assert isinstance(link.client, Redis)
            assert link.key("kv") == "gwtest:{state}:kv"
            assert link.key("a", "b") == "gwtest:{state}:a:b"
            await link.call("set", lambda c: c.set(link.key("probe"), b"1"))
            assert await link.call("get", lambda c: c.get(link.key("probe"))) == b"1"
            await link.call("del", lambda c: c.delete(link.key("probe")))
            assert link.errors == {}
            assert t.kinds() == ["up"]      # the first probe reports the state once
        finally:
            await link.close()
        assert not link.up
    run(main())


def test_first_probe_reports_down_when_redis_is_unreachable() -> None:
    async def main() -> None:
        with RedisProcess() as srv:
            url = srv.url
        t = Transitions()   # the server is gone: nothing listens on that port now
        link = RedisLink(url, on_up=t.on_up, on_down=t.on_down)
        t0 = time.monotonic()
        await link.start()
        assert time.monotonic() - t0 < 0.05, "start() must not wait for Redis"
        try:
            assert await poll(lambda: t.count("down") == 1, 2)
            assert not link.up and t.kinds() == ["down"]
            with pytest.raises(RedisUnavailable):
                await link.call("get", lambda c: c.get("x"))
            assert link.errors == {"get": 1}
        finally:
            await link.close()
    run(main())


def test_unix_socket_url() -> None:
    async def main(srv: RedisProcess) -> None:
        link = await _up_link(srv.unix_url)
        try:
            assert link.client.connection_pool.connection_class is UnixDomainSocketConnection
            await link.call("set", lambda c: c.set("over-unix", b"yes"))
            assert await link.call("get", lambda c: c.get("over-unix")) == b"yes"
            clients = await link.call("clients", lambda c: c.client_list())
            assert any(str(cl.get("addr", "")).startswith("/") or cl.get("flags") == "U" for cl in clients)
        finally:
            await link.close()
    with RedisProcess(unixsocket=True) as srv:
        run(main(srv))


def test_tls_url() -> None:
    """rediss:// with the server's certificate verified (a real TLS listener, not a mock)."""
    async def main(srv: RedisProcess) -> None:
        # A TLS handshake (RSA 2048) is not what the budget is for: half a second for this link.
        link = await _up_link(srv.tls_url, timeout=0.5)
        try:
            assert link.client.connection_pool.connection_class is SSLConnection
            await link.call("set", lambda c: c.set("over-tls", b"yes"))
            assert await link.call("get", lambda c: c.get("over-tls")) == b"yes"
        finally:
            await link.close()
        bad = RedisLink(srv.tls_url.split("?")[0])   # no CA given: the self-signed cert is refused
        t = Transitions()
        bad.on_down = t.on_down
        await bad.start()
        try:
            assert await poll(lambda: t.count("down") == 1, 3)
            assert "certificate" in (t.events[0][1] or "").lower(), t.events
        finally:
            await bad.close()
    with RedisProcess(tls=True) as srv:
        run(main(srv))


def test_budget_holds_against_a_paused_server(server: RedisProcess) -> None:
    budget = 0.1

    async def main() -> None:
        t = Transitions()
        link = await _up_link(server.url, t, timeout=budget)
        try:
            server.pause()
            timed_out: list[float] = []
            fast_failed: list[float] = []

            async def one(i: int) -> None:
                was_up, t0 = link.up, time.monotonic()
                with pytest.raises(RedisUnavailable):
                    await link.call("get", lambda c: c.get(f"k{i}"))
                (timed_out if was_up else fast_failed).append(time.monotonic() - t0)

            # 20 at once (they share the pool), then one after another for 1.2 s: before the
            # supervisor has confirmed the outage each waits the budget, afterwards none waits.
            await asyncio.gather(*(one(i) for i in range(20)))
            deadline = time.monotonic() + 1.2
            i = 0
            while time.monotonic() < deadline:
                await one(i)
                i += 1
                await asyncio.sleep(0.002)   # a failing-fast call never yields: let the loop run
            print(f"\npaused server, budget {budget * 1000:.0f} ms: {len(timed_out)} calls timed out, "
                  f"max {max(timed_out) * 1000:.1f} ms; {len(fast_failed)} failed fast once down, "
                  f"max {max(fast_failed, default=0) * 1000:.2f} ms")
            assert timed_out, "the first calls must have waited for (and hit) the budget"
            assert min(timed_out) >= budget * 0.9, "a timed-out call gave up before its budget"
            assert max(timed_out) < budget + SLACK
            assert t.kinds() == ["up", "down"], "a paused server is down within slow_timeout"
            assert fast_failed and max(fast_failed) < 0.02, "once down, calls must not wait"
        finally:
            server.resume()
            await link.close()
    run(main())


async def _check_replies_match(link: RedisLink, n_keys: int, want: int = 500, give_up: float = 60.0) -> int:
    """Many concurrent GETs and ECHOs (more than the pool has sockets); every reply that comes
    back must be the one for its own request. Rounds of 200 GETs go on until `want` replies came
    back (or `give_up` seconds pass): a call that outlives the link's budget (0.1 s here; a busy
    machine starves the loop for longer) is allowed to fail, so a busy run takes more rounds
    instead of checking too few replies. Returns how many did come back."""
    answered = 0
    end = time.monotonic() + give_up
    while answered < want and time.monotonic() < end:
        got = await asyncio.gather(
            *(link.call("get", lambda c, i=i: c.get(f"k{i % n_keys}")) for i in range(200)),
            return_exceptions=True)
        for i, g in enumerate(got):
            if isinstance(g, RedisUnavailable):   # allowed (budget on a busy box), never wrong
                continue
            assert g == f"v{i % n_keys}".encode(), f"reply for k{i % n_keys} was {g!r}"
            answered += 1
        tokens = [f"tok-{i}" for i in range(50)]
        echoes = await asyncio.gather(
            *(link.call("echo", lambda c, s=s: c.echo(s)) for s in tokens), return_exceptions=True)
        for s, e in zip(tokens, echoes, strict=True):
            assert isinstance(e, RedisUnavailable) or e == s.encode(), f"echo {s} got {e!r}"
    return answered


def test_timed_out_connections_are_never_reused(server: RedisProcess) -> None:
    """Requests whose replies arrive after their call gave up must not leave those replies in
    the pool for later calls to read. The server is paused only briefly, so the link stays up
    and its pool is never reset: this checks redis-py's own discarding of timed-out sockets.

    The first timed-out call wakes the health PING, which waits out the pause: with the default
    500 ms budget a loaded CI box (slow to resume Redis, slow to run the loop) let it time out now
    and then, the link went down, and the check below never ran. The pause is now held 600 ms on
    purpose, past that default, and the link's PING budget is 5 s."""
    async def main() -> None:
        t = Transitions()
        link = await _up_link(server.url, t, timeout=0.1, max_connections=16, slow_timeout=5.0)
        try:
            for i in range(64):
                await link.call("set", lambda c, i=i: c.set(f"k{i}", f"v{i}".encode()))
            server.pause()
            results = await asyncio.gather(
                *(link.call("get", lambda c, i=i: c.get(f"k{i}")) for i in range(16)),
                return_exceptions=True)
            await asyncio.sleep(0.6)   # past the default PING budget (see above)
            server.resume()   # Redis now answers the 16 abandoned GETs on their old sockets
            assert all(isinstance(r, RedisUnavailable) for r in results), results
            assert await _check_replies_match(link, 64) >= 500
            assert t.kinds() == ["up"], "the pause was shorter than the health PING's budget"
        finally:
            if server.paused:
                server.resume()
            await link.close()
    run(main())


def test_calls_abandoned_mid_reply_leave_no_bytes_behind(server: RedisProcess) -> None:
    """A 64 MiB reply takes 80 ms or more to read here: with a 20 ms budget the calls give up
    partway through it. Every socket of the pool (4) was abandoned that way; the calls after
    must still read their own replies, never the rest of the big one. (With 16 MiB, an idle
    machine read the whole reply within the budget 8 times in 30: the precondition, not the
    property, failed a CI run.)"""
    async def main() -> None:
        link = await _up_link(server.url, timeout=0.02, max_connections=4)
        try:
            sync = server.client()
            sync.set("big", b"x" * (64 << 20))
            sync.mset({f"k{i}": f"v{i}".encode() for i in range(64)})
            results = await asyncio.gather(*(link.call("big", lambda c: c.get("big")) for _ in range(4)),
                                           return_exceptions=True)
            assert all(isinstance(r, RedisUnavailable) for r in results)
            answered = 0
            for batch in range(100):   # 4 at a time: every pool socket serves every batch
                got = await asyncio.gather(
                    *(link.call("get", lambda c, i=i: c.get(f"k{i}")) for i in range(batch % 60, batch % 60 + 4)),
                    return_exceptions=True)
                for i, g in zip(range(batch % 60, batch % 60 + 4), got, strict=True):
                    assert isinstance(g, RedisUnavailable) or g == f"v{i}".encode(), f"k{i} -> {g!r:.60}"
                    answered += not isinstance(g, RedisUnavailable)
            assert answered > 100, answered
        finally:
            await link.close()
    run(main())


def test_down_and_up_once_each_when_killed_and_restarted(server: RedisProcess) -> None:
    async def main() -> None:
        t = Transitions()
        link = await _up_link(server.url, t)
        try:
            server.kill()
            assert await poll(lambda: not link.up, 3), "a killed server is noticed by the next PING"
            t0 = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await link.call("get", lambda c: c.get("x"))
            assert time.monotonic() - t0 < 0.02
            server.start()   # same port
            assert await poll(lambda: link.up, BACKOFF_CAP + 3), "never reconnected"
            assert await link.call("set", lambda c: c.set("after", b"1"))
            await asyncio.sleep(1.2)   # a full health cycle more: no flapping
            assert t.kinds() == ["up", "down", "up"], t.events
            assert "ConnectionError" in (t.events[1][1] or "") or "Error" in (t.events[1][1] or "")
        finally:
            await link.close()
    run(main())


def test_down_and_up_once_each_when_paused_two_seconds(server: RedisProcess) -> None:
    async def main() -> None:
        t = Transitions()
        link = await _up_link(server.url, t)
        try:
            server.pause()
            paused_at = time.monotonic()
            while time.monotonic() - paused_at < 2.0:   # callers keep calling through the outage
                try:
                    await link.call("get", lambda c: c.get("x"))
                except RedisUnavailable:
                    pass
                await asyncio.sleep(0.02)
            assert t.kinds() == ["up", "down"], t.events
            down_after = t.events[1][2] - paused_at
            assert down_after < link.slow_timeout + 1.0 + SLACK, f"down noticed after {down_after:.2f} s"
            server.resume()
            assert await poll(lambda: link.up, BACKOFF_CAP + link.slow_timeout + 2), "never came back"
            assert await link.call("get", lambda c: c.get("x")) is None
            await asyncio.sleep(1.2)
            assert t.kinds() == ["up", "down", "up"], t.events
        finally:
            if server.paused:
                server.resume()
            await link.close()
    run(main())


def test_reconnect_backoff_is_capped_no_tight_loop(server: RedisProcess) -> None:
    """During a 2 s outage the link makes a handful of connection attempts (backoff from 50 ms
    doubling to 2 s, full jitter: about 7 expected), and callers make none at all."""
    async def main() -> None:
        t = Transitions()
        link = await _up_link(server.url, t)
        listener: CountingListener | None = None
        try:
            server.kill()
            listener = CountingListener(server.port)   # every attempt now connects and is dropped
            assert await poll(lambda: not link.up, 3)
            start_count = listener.accepted
            t0 = time.monotonic()
            calls = 0
            while time.monotonic() - t0 < 2.0:
                with pytest.raises(RedisUnavailable):
                    await link.call("get", lambda c: c.get("x"))
                calls += 1
                await asyncio.sleep(0.005)
            attempts = listener.accepted - start_count
            print(f"\n2 s outage: {attempts} connection attempts, {calls} calls refused without one")
            assert 2 <= attempts <= 20, attempts
            listener.close()
            listener = None
            server.start()
            assert await poll(lambda: link.up, BACKOFF_CAP + 3)
            assert t.kinds() == ["up", "down", "up"]
        finally:
            if listener is not None:
                listener.close()
            await link.close()
    run(main())


def test_backoff_delays_are_capped_full_jitter() -> None:
    import random
    rng = random.Random(1)
    for attempt in range(40):
        ceiling = min(BACKOFF_CAP, 0.05 * 2 ** attempt)
        ds = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in ds)
        assert max(ds) > ceiling * 0.8   # full jitter spans the range


def test_slow_budget_defaults_to_the_floor_and_is_never_below_the_call_budget() -> None:
    async def main() -> None:
        assert RedisLink("redis://127.0.0.1:1", timeout=0.05).slow_timeout == 0.5
        assert RedisLink("redis://127.0.0.1:1", timeout=0.8).slow_timeout == 0.8
        assert RedisLink("redis://127.0.0.1:1", timeout=0.05, slow_timeout=3.0).slow_timeout == 3.0
        with pytest.raises(ValueError, match="slow_timeout must be >= timeout"):
            RedisLink("redis://127.0.0.1:1", timeout=0.2, slow_timeout=0.1)
    run(main())


def test_error_counters_per_op(server: RedisProcess) -> None:
    async def main() -> None:
        link = await _up_link(server.url, timeout=0.1)
        try:
            await link.call("ok", lambda c: c.ping())
            with pytest.raises(RedisUnavailable, match="unknown command"):
                await link.call("bad", lambda c: c.execute_command("NOSUCHCOMMAND"))
            assert link.up, "an error reply is a failed call, not an outage"
            with pytest.raises(ZeroDivisionError):   # a bug in fn is not a Redis error
                await link.call("bug", lambda c: 1 / 0)
            assert link.errors == {"bad": 1}
            server.pause()
            with pytest.raises(RedisUnavailable, match="no answer"):
                await link.call("slow", lambda c: c.get("x"))
            assert await poll(lambda: not link.up, 3)
            for _ in range(3):
                with pytest.raises(RedisUnavailable, match="link down"):
                    await link.call("down", lambda c: c.get("x"))
            assert link.errors == {"bad": 1, "slow": 1, "down": 3}
        finally:
            if server.paused:
                server.resume()
            await link.close()
    run(main())


def test_pool_is_bounded_and_waiting_for_it_is_within_budget(server: RedisProcess) -> None:
    """max_connections caps the sockets; a call waiting for a free one waits within its budget.

    Rounds of 10 calls on 2 sockets: a waiting call is handed a socket freed at the deadline,
    the case where a bare asyncio.timeout let calls run 2x the budget (see the next test).
    """
    budget = 0.3

    async def main() -> None:
        link = await _up_link(server.url, timeout=budget, max_connections=2)
        worst = 0.0
        try:
            for _ in range(8):
                assert await link.wait_up(5)
                server.pause()

                async def one() -> float:
                    t0 = time.monotonic()
                    with pytest.raises(RedisUnavailable):
                        await link.call("get", lambda c: c.get("x"))
                    return time.monotonic() - t0
                took = await asyncio.gather(*(one() for _ in range(10)))
                server.resume()
                worst = max(worst, *took)
            print(f"\n10 calls on a 2-socket pool, paused server, budget {budget * 1000:.0f} ms, 8 rounds: "
                  f"slowest {worst * 1000:.1f} ms")
            assert worst < budget + SLACK
            listed = [c for c in server.client().client_list() if c.get("name") != "probe"]
            assert len(listed) <= 2 + 1 + 1, listed   # 2 pool sockets, the health PING's, this one
        finally:
            if server.paused:
                server.resume()
            await link.close()
    run(main())


def test_within_leaves_at_the_deadline_even_if_the_work_swallows_its_cancellation() -> None:
    """On Python 3.11, asyncio.wait_for (used by redis-py for socket writes) swallows a cancel
    that arrives as its inner future completes; the work then goes on, bounded only by socket
    timeouts. With redis-py over a paused server we measured calls at 2x the budget under a bare
    asyncio.timeout. `within` waits on a separate task, so the caller leaves on time anyway."""
    async def stubborn(done: list[str]) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass   # swallowed, as wait_for does in that race
        await asyncio.sleep(0.3)
        done.append("finished")
        return "late"

    async def main() -> None:
        done: list[str] = []
        t0 = time.monotonic()
        async with asyncio.timeout(0.05):
            await stubborn(done)   # a bare timeout: the caller waits for the whole work
        assert time.monotonic() - t0 >= 0.3 and done == ["finished"]

        done.clear()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await within(0.05, stubborn(done))
        assert time.monotonic() - t0 < 0.05 + SLACK and done == []
        assert await poll(lambda: done == ["finished"], 2)   # the abandoned work ends on its own
        assert await within(1.0, asyncio.sleep(0, "ok")) == "ok"
        with pytest.raises(KeyError):
            await within(1.0, _raise(KeyError("x")))
    run(main())


async def _raise(e: Exception) -> None:
    raise e


def test_cluster_flag_builds_a_cluster_client() -> None:
    link = RedisLink("redis://127.0.0.1:7000", cluster=True)
    assert isinstance(link.client, RedisCluster) and isinstance(link.slow_client, RedisCluster)
    link2 = RedisLink("redis://127.0.0.1:7000")
    assert isinstance(link2.client, Redis) and not isinstance(link2.client, RedisCluster)


def test_on_real_one_node_cluster() -> None:
    async def main(srv: RedisProcess) -> None:
        link = await _up_link(srv.url, cluster=True)
        try:
            k1, k2 = link.key("a"), link.key("b")
            # one hash tag: a multi-key command on two of our keys is allowed (same slot)
            await link.call("mset", lambda c: c.mset({k1: b"1", k2: b"2"}))
            assert await link.call("mget", lambda c: c.mget(k1, k2)) == [b"1", b"2"]
            assert link.errors == {}
        finally:
            await link.close()
    with RedisProcess(cluster=True) as srv:
        run(main(srv))
