"""The checker's arithmetic: thresholds, jitter, backoff bounded by max_backoff, records placed by
name and read by the worker side; a probe against hostile peers ends within its timeout."""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from gateway.config.model import HealthConfig
from gateway.discovery import health
from gateway.discovery.balancers import make_service
from gateway.discovery.service import Target
from gateway.state.memory import SUPERVISOR, NodeMemory


@pytest.fixture
def memory() -> Any:
    m = NodeMemory.private(4 << 20)
    yield m
    try:
        m.close()
    except BufferError:
        pass


def checker(memory: Any, cfg: HealthConfig, targets: list[tuple[str, str, str, int, HealthConfig]],
            events: list[tuple[str, str]]) -> health.NodeHealth:
    loop = asyncio.new_event_loop()
    return health.NodeHealth(loop, memory, SUPERVISOR, lambda: targets,
                             lambda ev, service, target, details: events.append((ev, target)), seed=1)


def test_thresholds_and_generation(memory: Any) -> None:
    cfg = HealthConfig(interval=1.0, healthy_threshold=2, unhealthy_threshold=3, max_backoff=8.0)
    events: list[tuple[str, str]] = []
    nh = checker(memory, cfg, [], events)
    rec = health.place_record(memory, SUPERVISOR, "s", "http://a:1")
    p = health._Probe("s", "http://a:1", "a", 1, cfg, rec)
    gen = health.read_generation(memory.place(health.GEN_NAME, 8, 0, kind="gen"))
    nh.result(p, False, 0)
    nh.result(p, False, 503)
    assert not rec.down
    nh.result(p, True, 200)            # a success resets the failure run
    for _ in range(3):
        nh.result(p, False, 0)
    assert rec.down and events == [("target_down", "http://a:1")]
    assert health.read_generation(memory.place(health.GEN_NAME, 8, 0, kind="gen")) == gen + 1
    nh.result(p, True, 200)
    assert rec.down
    nh.result(p, True, 200)
    assert not rec.down and events[-1] == ("target_up", "http://a:1")
    assert rec.snapshot()["checks"] == 8
    nh.loop.close()


def test_delay_is_jittered_and_backs_off_to_max_backoff(memory: Any) -> None:
    cfg = HealthConfig(interval=1.0, max_backoff=8.0, unhealthy_threshold=1)
    nh = checker(memory, cfg, [], [])
    rec = health.place_record(memory, SUPERVISOR, "s", "http://a:1")
    p = health._Probe("s", "http://a:1", "a", 1, cfg, rec)
    rng = random.Random(3)
    ds = [p.delay(rng) for _ in range(1000)]
    assert 0.8 <= min(ds) < 0.85 and 1.15 < max(ds) <= 1.2
    nh.result(p, False, 0)             # down
    seen = []
    for _ in range(10):
        nh.result(p, False, 0)
        seen.append(p.delay(rng))
    assert seen[0] < 2.5 and all(d <= 8.0 for d in seen) and seen[-1] > 6.0
    nh.result(p, True, 200)
    nh.result(p, True, 200)            # back up: the interval again
    assert not rec.down and p.delay(rng) <= 1.2
    nh.loop.close()


def test_worker_side_reads_verdicts(memory: Any) -> None:
    ts = [Target("10.0.0.1", 1), Target("10.0.0.2", 2)]
    s = make_service("s", ts, "least_conn")
    for t in ts:
        t.health = health.place_record(memory, 0, "s", t.url)

    class State:
        holder = 0

    st = State()
    st.memory = memory  # type: ignore[attr-defined]
    wh = health.WorkerHealth(None, st)
    wh.use([s])
    assert all(t.available for t in ts)
    writer = health.place_record(memory, SUPERVISOR, "s", ts[0].url)
    writer.words[health.W_DOWN] = 1
    wh.apply()
    assert ts[0].available              # the generation did not move: nothing re-read
    memory.place(health.GEN_NAME, 8, SUPERVISOR, kind="gen").cast("q")[0] += 1
    wh.apply()
    assert not ts[0].available and {s.pick(None) for _ in range(5)} == {ts[1]}


@pytest.mark.parametrize("peer", ["silent", "drip", "garbage", "refused"])
def test_probe_against_hostile_peers_ends_unhealthy_within_its_timeout(memory: Any, peer: str) -> None:
    async def run() -> tuple[bool, float]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if peer == "drip":
                for _ in range(100):
                    writer.write(b"H")
                    await asyncio.sleep(0.05)
            elif peer == "garbage":
                writer.write(b"\x00\x01nonsense\r\n")
            await asyncio.sleep(5)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if peer == "refused":
            server.close()
            await server.wait_closed()
        cfg = HealthConfig(timeout=0.5)
        nh = health.NodeHealth(asyncio.get_running_loop(), memory, SUPERVISOR, lambda: [])
        p = health._Probe("s", f"http://127.0.0.1:{port}", "127.0.0.1", port, cfg,
                          health.place_record(memory, SUPERVISOR, "s", f"u{port}"))
        t0 = time.monotonic()
        ok, _ = await nh._probe(p)
        took = time.monotonic() - t0
        server.close()
        return ok, took

    ok, took = asyncio.run(run())
    assert not ok and took < 2.0
