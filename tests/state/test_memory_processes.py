"""gateway/state/memory across real processes: a spawned worker attaching by name finds the same
places and bytes (a breaker placed in two processes is one breaker), two workers placing at once
agree, and a process SIGKILLed holding the allocator lock, or half-way through a change, neither
wedges nor corrupts the others.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from gateway._fast.breaker import OPEN, SHM_SIZE, CircuitBreaker
from gateway._fast.counters import CounterArray
from gateway._fast.keyed_table import KeyedLimiterTable, layout_bytes
from gateway._fast.shm import _word_owner
from gateway.state import layout as M
from gateway.state.memory import SUPERVISOR, NodeMemory
from tests.support.node_memory import Clock, Make, MiB, offset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- other processes


def _child(*args: str, timeout: float = 30.0) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.support.memory_child", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_spawned_worker_finds_the_same_places_and_bytes(named: NodeMemory) -> None:
    stem = "breaker/payments/http://payments.internal.svc.cluster.local:80"
    names = ["counter/requests/r/200", "limits/r/0", stem + "80", stem + "81"]
    views = {}
    for i, name in enumerate(names):
        views[name] = named.place(name, 1000, 0)
        views[name][:8] = f"parent{i}.".encode()
    assert named.name is not None
    got = _child("place", named.name, "1", "1000", *names, "counter/requests/r/503")
    for i, name in enumerate(names):
        assert got[name] == [offset(named, name), f"parent{i}.".encode().hex()]
        assert bytes(views[name][8:16]) == b"child..."
        info = named.info(name)
        assert info is not None and info.holders == 0b11
    assert got["counter/requests/r/503"][1] == bytes(8).hex()
    assert named.names() == sorted(names + ["counter/requests/r/503"])
    named.verify()


def test_a_breaker_placed_by_name_in_two_processes_is_one_breaker(named: NodeMemory) -> None:
    name = "breaker/payments/http://10.0.0.7:8080"
    view = named.place(name, SHM_SIZE, 0, kind="breaker")
    b = CircuitBreaker(failure_threshold=5, buffer=view)
    assert b.allow(100.0)
    assert named.name is not None
    assert _child("breaker", named.name, name, "5", "100.0") == {"state": OPEN}
    assert b.state == OPEN and b.allow(100.5) == 0
    del b, view
    named.close()


def test_two_workers_placing_the_same_names_at_once_agree(named: NodeMemory) -> None:
    assert named.name is not None
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.memory_child", "race", named.name,
                               str(h), "1500", str(h)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for h in (0, 1)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n", p.stderr
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("g")
        p.stdin.close()
    results = []
    for p in procs:
        assert p.stdout is not None and p.stderr is not None
        out = p.stdout.read()
        assert p.wait(timeout=60) == 0, p.stderr.read()
        p.stdout.close()
        p.stderr.close()
        results.append(json.loads(out))
    assert results[0] == results[1] and len(results[0]) == 1500
    assert all(i.holders == 0b11 for i in named.objects())
    named.verify()


def test_limiter_tables_and_counters_live_in_placed_bytes(named: NodeMemory) -> None:
    assert named.name is not None
    other = NodeMemory.attach(named.name)             # a second mapping, as a second worker has
    tables, counters = [], []
    for mem, holder in ((named, 0), (other, 1)):
        view = mem.place("limits/login/0", layout_bytes(5000), holder, kind="keyed_table")
        tables.append(KeyedLimiterTable(5000, "sliding_window", limit=3.0, window=60.0, buffer=view))
        cview = mem.place("counter/requests/login", CounterArray.nbytes(4), holder, kind="counters")
        counters.append(CounterArray(4, buffer=cview))
    allowed = [tables[i % 2].check("user:1", 10.0)[0] for i in range(6)]
    assert allowed == [True, True, True, False, False, False]
    counters[0].inc(2, 5)
    counters[1].inc(2)
    assert counters[0].values() == [0, 0, 6, 0]
    del tables, counters, view, cview
    other.close()


# ---------------------------------------------------------------- dead lock holders


def _wait(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {timeout} s")


def test_a_worker_killed_holding_the_lock_does_not_wedge_placing(make: Make) -> None:
    mem = make()
    mem.place("before", 64, 0)[:2] = b"ok"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # the child takes the lock and hangs there
        code = 1
        try:
            mem._acquire(time.monotonic())
            os.write(w, b"L")
            time.sleep(60)
        finally:
            os._exit(code)
    assert os.read(r, 1) == b"L"
    os.close(r)
    os.close(w)
    assert _word_owner(mem._seg, M.I_LOCK_BYTE) == pid
    os.kill(pid, signal.SIGKILL)
    assert os.WIFSIGNALED(_wait(pid))
    t0 = time.monotonic()
    mem.place("after", 64, 1)
    assert time.monotonic() - t0 < 5.0
    assert mem.stats()["repairs"] == 1                # it died mid-change: rebuilt, not trusted
    assert bytes(mem.place("before", 64, 0)[:2]) == b"ok"
    mem.verify()


def test_a_spawned_worker_killed_holding_the_lock_does_not_wedge_placing(named: NodeMemory) -> None:
    assert named.name is not None
    p = subprocess.Popen([sys.executable, "-m", "tests.support.memory_child", "hold-lock", named.name],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "locked\n"
        assert _word_owner(named._seg, M.I_LOCK_BYTE) == p.pid
    finally:
        p.kill()
        p.wait()
    t0 = time.monotonic()
    named.place("x", 64, 0)
    assert time.monotonic() - t0 < 5.0
    assert named.stats()["repairs"] == 1
    named.verify()


def _crash_in(mem: NodeMemory, step: str, op: Callable[[], object]) -> None:
    """Run op in a fork()ed child that SIGKILLs itself at `step`, half-way through a change."""
    pid = os.fork()
    if pid == 0:
        try:
            def die(at: str) -> None:
                if at == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            mem._arena.fault = die
            op()
        finally:
            os._exit(3)                               # reached only if the step never came
    status = _wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{step} never ran"


SHORT = "counter/requests/r/200"
LONG = "breaker/payments/http://payments.internal.svc.cluster.local:8080"


@pytest.mark.parametrize("step, op, present", [
    ("alloc", lambda mem, clock: mem.place(LONG, 700, 3), False),
    ("zero", lambda mem, clock: mem.place(SHORT, 700, 3), False),
    ("entry", lambda mem, clock: mem.place(SHORT, 700, 3), True),
    ("release", lambda mem, clock: mem.drop_holder(0), None),
    ("reclaim", lambda mem, clock: (setattr(clock, "now", clock.now + 100), mem.stats()), None),
    ("shift", lambda mem, clock: (setattr(clock, "now", clock.now + 100), mem.stats()), None),
])
def test_a_worker_killed_half_way_through_a_change_leaves_a_consistent_directory(
        make: Make, step: str, op: Callable[[NodeMemory, Clock], object], present: bool | None) -> None:
    clock = Clock()
    mem = make(MiB, max_objects=12, clock=clock, grace=10.0)
    keep = mem.place("keep", 3000, SUPERVISOR)
    keep[:] = b"k" * 3000
    for i in range(10):                               # a crowded index: removals shift entries
        mem.place(f"w0/{i}", 64 * (i + 1), 0)
    if step in ("reclaim", "shift"):
        mem.drop_holder(0)
    _crash_in(mem, step, lambda: op(mem, clock))
    s = mem.stats()                                    # the next holder repairs
    assert s["repairs"] == 1
    mem.verify()
    assert bytes(keep) == b"k" * 3000
    if present is not None:
        assert (mem.info(SHORT if step != "alloc" else LONG) is not None) == present
    mem.place(SHORT, 700, 1)
    mem.drop_holder(3)
    mem.drop_holder(0)
    clock.now += 100
    mem.verify()
    assert mem.names() == sorted(["keep", SHORT])
