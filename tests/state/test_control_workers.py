"""The control plane with real worker processes: the supervisor runs in this test's loop (its
Python API is what the admin endpoints call), the workers are real `gateway _worker` processes."""
from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time

import pytest

from gateway.config import load_settings
from gateway.supervisor import Supervisor
from tests.state.helpers import run_on_uvloop, until
from tests.support.gateway_proc import free_port


@pytest.fixture
def two_worker_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()),
           "GATEWAY_ADMIN_PORT": str(free_port()), "GATEWAY_DRAIN_TIMEOUT": "2", "GATEWAY_LOG_LEVEL": "warning"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


async def started(env: dict[str, str]) -> tuple[Supervisor, asyncio.Task[int]]:
    sup = Supervisor(load_settings(env))
    task = asyncio.get_running_loop().create_task(sup.serve())
    await until(lambda: sup.control is not None and len(sup.control.workers) == 2
                and all(w.acked for w in sup.control.workers.values()), 20)
    return sup, task


async def stopped(sup: Supervisor, task: asyncio.Task[int]) -> None:
    sup.stop()
    assert await asyncio.wait_for(task, 30) == 0


def test_changes_apply_in_every_worker_in_order(two_worker_env: dict[str, str]) -> None:
    async def main() -> None:
        sup, task = await started(two_worker_env)
        cp = sup.control
        assert cp is not None
        latencies = []
        for i in range(100):
            t0 = time.perf_counter()
            seq = await cp.put(f"limits/routes/r{i % 10}", {"limit": i})
            assert await cp.wait_applied(seq, timeout=1.0), f"change {i} not applied by both workers within 1 s"
            latencies.append(time.perf_counter() - t0)
        assert set(cp.applied) == {0, 1} and all(v == cp.seq for v in cp.applied.values())
        print(f"\nadmin change -> applied in both workers: p50 {statistics.median(latencies) * 1e3:.2f} ms, "
              f"max {max(latencies) * 1e3:.2f} ms over {len(latencies)} changes")
        await stopped(sup, task)

    run_on_uvloop(main, 90)


def test_a_killed_worker_is_replaced_while_changes_keep_coming(two_worker_env: dict[str, str]) -> None:
    async def main() -> None:
        sup, task = await started(two_worker_env)
        cp = sup.control
        assert cp is not None
        victim = sup.slots[0].proc
        assert victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        for i in range(200):                     # changes while slot 0 is dead and being replaced
            await cp.put(f"revoked/jti-{i}", {"exp": 2_000_000_000})
            await asyncio.sleep(0.005)
        replacement = await until(lambda: (p := sup.slots[0].proc) is not None and p.pid != victim.pid and p, 20)
        assert await cp.wait_applied(timeout=5)
        assert cp.applied == {0: cp.seq, 1: cp.seq} and len(cp.view) == 200
        assert replacement.poll() is None
        await stopped(sup, task)

    run_on_uvloop(main, 90)


def test_a_stopped_worker_does_not_hold_up_the_others_and_catches_up(two_worker_env: dict[str, str]) -> None:
    """SIGSTOP one worker (it reads nothing) while changes keep coming: the other applies each
    within 1 s; the stopped one, once continued, catches up to the same state."""
    async def main() -> None:
        sup, task = await started(two_worker_env)
        cp = sup.control
        assert cp is not None
        frozen = sup.slots[1].proc
        assert frozen is not None
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            for i in range(50):
                await cp.put(f"k/{i}", "v" * 100_000)     # 5 MB the frozen worker does not read
                assert await until(lambda: cp.workers[0].applied == cp.seq, 1.0)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert await cp.wait_applied(timeout=10)
        assert cp.applied == {0: cp.seq, 1: cp.seq}
        await stopped(sup, task)

    run_on_uvloop(main, 90)
