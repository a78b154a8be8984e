"""gateway/state/memory: NodeMemory placing named objects in the node's shared segment.

Real processes where it matters (a spawned worker attaching by name, a process SIGKILLed holding
the allocator lock or half-way through a change); injected time everywhere (no sleeps); private
(anonymous) and named segments run the same tests; a hypothesis state machine checks random
place / sync_holder / drop_holder / advance-time sequences against a plain Python model.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway._fast.breaker import OPEN, SHM_SIZE, CircuitBreaker
from gateway._fast.counters import CounterArray
from gateway._fast.keyed_table import KeyedLimiterTable, layout_bytes
from gateway._fast.shm import SHM_DIR, SharedSegment, _word_owner
from gateway.state import layout as M
from gateway.state.layout import NAME_INLINE
from gateway.state.memory import (
    SUPERVISOR,
    LayoutMismatch,
    NodeMemory,
    NodeMemoryCorrupt,
    SharedMemoryFull,
    block_size,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20


class Clock:
    """Injected time: tests advance it instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _unique() -> str:
    return f"gw-test-mem-{uuid.uuid4().hex[:12]}"


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


Make = Callable[..., NodeMemory]


@pytest.fixture(params=["private", "named"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """make(size, **kw) -> a NodeMemory on a private (anonymous) or a named segment."""
    made: list[NodeMemory] = []
    names: list[str] = []

    def factory(size: int = 4 * MiB, **kw: object) -> NodeMemory:
        if request.param == "private":
            mem = NodeMemory.private(size, **kw)  # type: ignore[arg-type]
        else:
            names.append(_unique())
            mem = NodeMemory.create(size, names[-1], **kw)  # type: ignore[arg-type]
        made.append(mem)
        return mem

    yield factory
    for name in names:
        _unlink(name)


def _addr(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _offset(mem: NodeMemory, name: str) -> int:
    info = mem.info(name)
    assert info is not None, name
    return info.offset


# ---------------------------------------------------------------- placing


def test_place_gives_zeroed_aligned_bytes_stable_by_name(make: Make) -> None:
    mem = make()
    a = mem.place("breaker/pay/http://10.0.0.1:8080", SHM_SIZE, 0, kind="breaker")
    assert len(a) == SHM_SIZE and not a.readonly and _addr(a) % 64 == 0
    assert bytes(a) == bytes(SHM_SIZE)
    a[:4] = b"abcd"
    again = mem.place("breaker/pay/http://10.0.0.1:8080", SHM_SIZE, 1, kind="breaker")
    assert _addr(again) == _addr(a) and bytes(again[:4]) == b"abcd"
    info = mem.info("breaker/pay/http://10.0.0.1:8080")
    assert info is not None and info.holders == 0b11 and info.block == 768 and not info.quarantined
    odd = mem.place("counter/requests/r/200", 3, 0)
    assert len(odd) == 3 and _addr(odd) % 64 == 0
    assert mem.names() == ["breaker/pay/http://10.0.0.1:8080", "counter/requests/r/200"]
    assert mem.info("nothing") is None
    mem.verify()


def test_reload_adding_names_never_moves_existing_ones(make: Make) -> None:
    mem = make()
    first = {f"counter/requests/r{i}/200": 64 * (1 + i % 5) for i in range(50)}
    for name, size in first.items():
        mem.place(name, size, 0)
    before = {name: _offset(mem, name) for name in first}
    for i in range(50, 120):                      # the reload adds routes
        mem.place(f"counter/requests/r{i}/200", 700, 0)
    for name, size in first.items():              # ... and places the old ones again
        mem.place(name, size, 0)
    assert {name: _offset(mem, name) for name in first} == before
    assert mem.sync_holder(0, list(first) + [f"counter/requests/r{i}/200" for i in range(50, 120)]) == []
    assert {name: _offset(mem, name) for name in first} == before
    mem.verify()


def test_size_or_kind_change_for_an_existing_name_is_refused(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=10.0)
    mem.place("limits/r/0", 4096, 0, kind="table")
    with pytest.raises(ValueError, match="layout change needs a new name"):
        mem.place("limits/r/0", 8192, 0, kind="table")
    with pytest.raises(ValueError, match="kind"):
        mem.place("limits/r/0", 4096, 0, kind="breaker")
    mem.drop_holder(0)
    with pytest.raises(ValueError, match="quarantined"):  # still there for its grace
        mem.place("limits/r/0", 8192, 0, kind="table")
    clock.now += 10.0
    assert len(mem.place("limits/r/0", 8192, 0, kind="table")) == 8192   # gone: a new object
    mem.verify()


@pytest.mark.parametrize("bad", [
    dict(name="", size=64, holder=0), dict(name="x", size=0, holder=0),
    dict(name="x", size=64, holder=-1), dict(name="x", size=64, holder=63),
    dict(name="x" * 1025, size=64, holder=0), dict(name="x", size=64, holder=0, kind="k" * 17),
    dict(name="x", size=10 * MiB, holder=0),
])
def test_bad_arguments_are_value_errors(make: Make, bad: dict) -> None:
    mem = make()
    with pytest.raises(ValueError):
        mem.place(**bad)
    assert mem.place("x", 64, SUPERVISOR) is not None   # the lock was released cleanly
    assert mem.stats()["repairs"] == 0


def test_long_names_are_compared_whole_and_listed_exactly(make: Make) -> None:
    mem = make()
    stem = "breaker/payments/http://payments.internal.svc.cluster.local:"
    a, b = stem + "8080", stem + "8081"             # same length, same stored prefix
    assert len(a.encode()) > NAME_INLINE and len(a) == len(b)
    va, vb = mem.place(a, 100, 0), mem.place(b, 100, 0)
    assert _addr(va) != _addr(vb)
    assert mem.names() == [a, b]
    assert mem.sync_holder(0, [a]) == [b]
    assert mem.names() == [a] and mem.names(quarantined=True) == [a, b]
    long_ = "x" * 1024
    mem.place(long_, 64, 0)
    assert long_ in mem.names()
    mem.verify()


# ---------------------------------------------------------------- holders, quarantine, reuse


def test_sync_holder_frees_only_when_no_holder_remains(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=30.0)
    for holder in (0, 1):
        for name in ("a", "b", "c"):
            mem.place(name, 64, holder)
    mem.place("ctl", 64, SUPERVISOR)
    assert mem.sync_holder(0, ["a"]) == ["b", "c"]
    assert mem.names() == ["a", "b", "c", "ctl"]      # worker 1 still holds b and c
    assert mem.stats()["quarantined_objects"] == 0
    assert mem.sync_holder(1, ["a", "b", "unknown"]) == ["c"]
    info = mem.info("c")
    assert info is not None and info.quarantined and info.holders == 0 and info.freed_at == clock.now
    assert mem.names() == ["a", "b", "ctl"]
    assert mem.sync_holder(1, ["a", "b"]) == []       # idempotent
    s = mem.stats()
    assert s["objects"] == 3 and s["quarantined_objects"] == 1 and s["quarantined"] == 64
    assert s["used"] + s["free"] + s["quarantined"] == s["total"]


def test_quarantined_bytes_are_reused_only_after_the_grace(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=60.0)
    old = mem.place("breaker/s/http://a", SHM_SIZE, 0)
    old[:] = b"\xaa" * SHM_SIZE
    off = _offset(mem, "breaker/s/http://a")
    assert mem.sync_holder(0, []) == ["breaker/s/http://a"]
    clock.now += 59.9
    mem.place("breaker/s/http://b", SHM_SIZE, 0)       # same class, within the grace: elsewhere
    assert _offset(mem, "breaker/s/http://b") != off
    old[0] = 0xab                                       # an in-flight request on the old runtime
    assert bytes(old[1:]) == b"\xaa" * (SHM_SIZE - 1)
    clock.now += 0.1
    new = mem.place("breaker/s/http://c", SHM_SIZE, 0)  # past the grace: reused, zeroed
    assert _offset(mem, "breaker/s/http://c") == off and bytes(new) == bytes(SHM_SIZE)
    assert mem.info("breaker/s/http://a") is None
    assert mem.stats()["quarantined_objects"] == 0
    mem.verify()


def test_revive_within_grace_keeps_the_bytes(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=60.0)
    view = mem.place("breaker/s/http://a", SHM_SIZE, 0, kind="breaker")
    view[:5] = b"state"
    off = _offset(mem, "breaker/s/http://a")
    mem.sync_holder(0, [])
    clock.now += 59.0
    again = mem.place("breaker/s/http://a", SHM_SIZE, 2, kind="breaker")
    assert bytes(again[:5]) == b"state" and _offset(mem, "breaker/s/http://a") == off
    info = mem.info("breaker/s/http://a")
    assert info is not None and not info.quarantined and info.holders == 1 << 2
    clock.now += 120.0                                # revived: the old quarantine is void
    assert mem.names() == ["breaker/s/http://a"] and bytes(again[:5]) == b"state"
    mem.verify()


def test_drop_holder_frees_what_only_the_dead_worker_held(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=5.0)
    mem.place("shared", 64, 0)
    mem.place("shared", 64, 1)
    mem.place("only-1", 4096, 1)
    mem.place("ctl", 64, SUPERVISOR)
    assert mem.drop_holder(1) == ["only-1", "shared"]
    assert mem.names() == ["ctl", "shared"]
    info = mem.info("shared")
    assert info is not None and info.holders == 1
    assert mem.drop_holder(1) == []
    clock.now += 5.0
    assert mem.names(quarantined=True) == ["ctl", "shared"]
    assert mem.stats()["used"] == 128


def test_freed_large_blocks_coalesce_and_class_lists_flush(make: Make) -> None:
    clock = Clock()
    mem = make(2 * MiB, clock=clock, grace=1.0)
    offs = []
    for i in range(3):
        mem.place(f"limits/r/{i}", 300_000, 0)
        offs.append(_offset(mem, f"limits/r/{i}"))
    assert mem.sync_holder(0, ["limits/r/2"]) == ["limits/r/0", "limits/r/1"]
    clock.now += 1.0
    mem.place("limits/big", 600_000, 0)               # fits only in the two merged neighbours
    assert _offset(mem, "limits/big") == offs[0]
    mem.sync_holder(0, [])
    # Fill what is left with small objects, free them all: a large object must still fit, from
    # the class lists flushed back and merged.
    n = 0
    while True:
        try:
            mem.place(f"counter/{n}", 1000, 0)
        except SharedMemoryFull:
            break
        n += 1
    assert n > 500
    mem.sync_holder(0, [])
    clock.now += 1.0
    mem.place("limits/huge", 1_500_000, 0)
    mem.verify()


def test_thousands_of_isolated_holes_never_slow_placing_down() -> None:
    # 8,000 64-byte holes between live breakers, merged into the free lists by a failed large
    # place: allocations of a class none of them fits must not walk past them (they did: 27 s
    # for 1,500 places with 25,000 holes, before remnants became class pieces).
    clock = Clock()
    mem = NodeMemory.private(16 * MiB, grace=1.0, max_objects=20_000, clock=clock)
    for i in range(8000):
        mem.place(f"hole/{i}", 64, 0)
        mem.place(f"breaker/{i}", SHM_SIZE, 0)
    mem.sync_holder(0, [f"breaker/{i}" for i in range(8000)])
    clock.now += 1.0
    with pytest.raises(SharedMemoryFull):
        mem.place("limits/huge", 12 * MiB, 0)
    t0 = time.perf_counter()
    for i in range(1500):
        mem.place(f"counter/{i}", 1500, 0)
    assert time.perf_counter() - t0 < 1.0
    mem.verify()
    mem.close()


# ---------------------------------------------------------------- running out of space


def test_full_segment_names_the_object_and_gateway_shm_size(make: Make) -> None:
    mem = make(1 * MiB)
    mem.place("limits/a/0", 700_000, 0)
    before = mem.stats()
    with pytest.raises(SharedMemoryFull) as exc:
        mem.place("limits/b/0", 500_000, 0)
    msg = str(exc.value)
    assert "'limits/b/0'" in msg and "500000 bytes" in msg and f"{before['free']} bytes free" in msg
    assert "raise GATEWAY_SHM_SIZE (now 1m)" in msg
    assert exc.value.name == "limits/b/0" and exc.value.size == 500_000
    assert mem.stats() == before                        # nothing changed
    mem.place("limits/c/0", 100_000, 0)                 # what does fit still does
    mem.verify()


def test_directory_full_counts_quarantined_entries(make: Make) -> None:
    clock = Clock()
    mem = make(1 * MiB, max_objects=4, clock=clock, grace=10.0)
    for i in range(4):
        mem.place(f"o{i}", 64, 0)
    with pytest.raises(SharedMemoryFull, match=r"directory full.*all 4 entries.*GATEWAY_SHM_SIZE"):
        mem.place("o4", 64, 0)
    mem.sync_holder(0, ["o0", "o1", "o2"])
    with pytest.raises(SharedMemoryFull, match="1 quarantined"):
        mem.place("o4", 64, 0)
    clock.now += 10.0
    mem.place("o4", 64, 0)
    assert mem.stats()["directory_capacity"] == 4
    mem.verify()


def test_directory_capacity_derives_from_the_segment_size() -> None:
    mem = NodeMemory.private(64 * MiB)
    s = mem.stats()
    assert s["directory_capacity"] == 64 * MiB // M.BYTES_PER_ENTRY == 32768
    assert s["total"] > 0.93 * 64 * MiB
    mem.close()


# ---------------------------------------------------------------- layout checks


def test_attach_refuses_other_layouts() -> None:
    name = _unique()
    try:
        mem = NodeMemory.create(MiB, name)
        mem.close()
        seg = SharedSegment.attach(name)
        raw = memoryview(seg)
        raw[8:12] = (99).to_bytes(4, "little")          # layout version
        with pytest.raises(LayoutMismatch, match="version 99.*reads version 1"):
            NodeMemory.attach(name)
        raw[8:12] = (1).to_bytes(4, "little")
        NodeMemory.attach(name).close()
        raw[0:8] = b"SOMEELSE"
        with pytest.raises(LayoutMismatch, match="bad magic"):
            NodeMemory.attach(name)
        raw[0:8] = bytes(8)                            # never laid out: waits, then refuses
        t0 = time.monotonic()
        with pytest.raises(LayoutMismatch, match="uninitialised"):
            NodeMemory.attach(name, timeout=0.05)
        assert time.monotonic() - t0 < 1.0
        raw.release()
        seg.close()
    finally:
        _unlink(name)
    with open(os.path.join(SHM_DIR, name), "wb") as f:
        f.write(b"not a gateway segment" + bytes(4096))
    try:
        with pytest.raises(LayoutMismatch, match="not a gateway shared segment"):
            NodeMemory.attach(name)
    finally:
        _unlink(name)


def test_create_refuses_an_existing_name_and_a_tiny_size() -> None:
    name = _unique()
    try:
        mem = NodeMemory.create(MiB, name)
        with pytest.raises(FileExistsError):
            NodeMemory.create(MiB, name)
        mem.unlink()
        mem.close()
    finally:
        _unlink(name)
    with pytest.raises(ValueError, match="cannot hold a directory"):
        NodeMemory.create(4096, name)
    assert not os.path.exists(os.path.join(SHM_DIR, name))


# ---------------------------------------------------------------- corrupted metadata


def test_a_free_list_cycle_raises_and_the_next_call_rebuilds(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=1.0)
    for i in range(3):
        mem.place(f"c{i}", 64, 0)
    mem.sync_holder(0, [])
    clock.now += 1.0
    mem.place("keep", 128, 0)[:4] = b"keep"
    c = M.class_of(64)
    head = mem._arena.h64[M.W_CLASS_HEAD + c]
    second = mem._arena.p64[(head >> 3) + 2]
    mem._arena.p64[(second >> 3) + 2] = head               # class list: head -> second -> head -> ...
    mem._arena.h32[M.I_CLASS_COUNT + c] = 1 << 30
    t0 = time.monotonic()
    with pytest.raises(NodeMemoryCorrupt, match="cycle"):
        mem.stats()
    assert time.monotonic() - t0 < 2.0
    s = mem.stats()                                   # dirty: rebuilt from the directory
    assert s["repairs"] == 1 and s["objects"] == 1
    assert bytes(mem.place("keep", 128, 0)[:4]) == b"keep"
    mem.verify()


def test_an_address_list_cycle_raises(make: Make) -> None:
    mem = make()
    mem.place("a", 100_000, 0)
    head = mem._arena.h64[M.W_HEAP_HEAD]
    mem._arena.p64[(head >> 3) + 2] = head
    with pytest.raises(NodeMemoryCorrupt, match="address-ordered"):
        mem.place("b", 200_000, 0)
    mem.verify()                                      # rebuilt on the next call
    assert mem.stats()["repairs"] == 1


def test_overlapping_entries_are_refused(make: Make) -> None:
    mem = make()
    mem.place("a", 64, 0)
    mem.place("b", 64, 0)
    mem._arena.e64[16 + M.E_OFF] = mem._arena.e64[M.E_OFF]        # entry 1 now claims entry 0's block
    with pytest.raises(NodeMemoryCorrupt, match="overlap"):
        mem.verify()
    with pytest.raises(NodeMemoryCorrupt, match="overlap"):
        mem.place("c", 64, 0)                         # the rebuild refuses too: no silent reuse


# ---------------------------------------------------------------- other processes


def _child(*args: str, timeout: float = 30.0) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.support.memory_child", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def named() -> Iterator[NodeMemory]:
    name = _unique()
    mem = NodeMemory.create(4 * MiB, name)
    yield mem
    _unlink(name)


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
        assert got[name] == [_offset(named, name), f"parent{i}.".encode().hex()]
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


# ---------------------------------------------------------------- cost


def test_placing_ten_thousand_objects_is_fast() -> None:
    mem = NodeMemory.private(64 * MiB)
    names = [f"breaker/svc{i % 100}/http://10.0.{i // 256}.{i % 256}:8080" for i in range(10_000)]
    t0 = time.perf_counter()
    for name in names:
        mem.place(name, SHM_SIZE, 0, kind="breaker")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in names:                                # a second worker finds them all
        mem.place(name, SHM_SIZE, 1, kind="breaker")
    again = time.perf_counter() - t0
    t0 = time.perf_counter()
    released = mem.sync_holder(0, names[:5000])
    sync = time.perf_counter() - t0
    print(f"\n10,000 places: {first * 1e3:.0f} ms new, {again * 1e3:.0f} ms existing; "
          f"sync_holder releasing 5,000: {sync * 1e3:.0f} ms")
    assert len(released) == 5000 and mem.stats()["objects"] == 10_000
    assert first < 1.0 and again < 1.0 and sync < 0.5
    mem.close()


# ---------------------------------------------------------------- the model


NAMES = ["a", "breaker/s/http://x:1", "counter/requests/r/200", "limits/r/0",
         LONG, LONG[:-1] + "1", "z" * 200]
SIZES = [1, 64, 700, 768, 5000, 70_000, 150_000]
KINDS = ["", "breaker"]
HOLDERS = [0, 1, 2, SUPERVISOR]
GRACE = 10.0
CAP = 6


@dataclass
class Obj:
    size: int
    kind: str
    fill: int
    view: memoryview
    holders: set[int] = field(default_factory=set)
    freed_at: float | None = None


def _blocks(name: str, size: int) -> int:
    n = len(name.encode())
    return block_size(size) + (block_size(n) if n > NAME_INLINE else 0)


class MemoryModel(RuleBasedStateMachine):
    named = False
    report = True       # hypothesis events (--hypothesis-show-statistics)

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.seg_name = _unique() if self.named else None
        if self.seg_name:
            self.mem = NodeMemory.create(250_000, self.seg_name, grace=GRACE, max_objects=CAP,
                                         clock=self.clock)
        else:
            self.mem = NodeMemory.private(250_000, grace=GRACE, max_objects=CAP, clock=self.clock)
        self.objs: dict[str, Obj] = {}
        self.fills = 0
        self.events: dict[str, int] = {}

    def seen(self, what: str) -> None:
        self.events[what] = self.events.get(what, 0) + 1
        if self.report:
            event(what)

    def _expire(self) -> None:
        for name in [n for n, o in self.objs.items()
                     if o.freed_at is not None and o.freed_at + GRACE <= self.clock.now]:
            self.objs.pop(name).view.release()
            self.seen("reclaimed after the grace")

    def _release(self, holder: int, keep: set[str]) -> list[str]:
        out = []
        for name, o in self.objs.items():
            if holder in o.holders and name not in keep:
                out.append(name)
                o.holders.discard(holder)
                if not o.holders:
                    o.freed_at = self.clock.now
        return sorted(out)

    @rule(data=st.data(), holder=st.sampled_from(HOLDERS))
    def place(self, data: st.DataObject, holder: int) -> None:
        # Mostly a name's usual layout (so objects are held, released and revived), sometimes
        # another one (refused while the name exists).
        name = data.draw(st.sampled_from(NAMES))
        usual = NAMES.index(name)
        size = data.draw(st.sampled_from([SIZES[usual]] * 6 + SIZES))
        kind = data.draw(st.sampled_from([KINDS[usual % 2]] * 6 + KINDS))
        self.do_place(name, size, kind, holder)

    def do_place(self, name: str, size: int, kind: str, holder: int) -> None:
        self._expire()
        o = self.objs.get(name)
        if o is not None and (o.size, o.kind) != (size, kind):
            with pytest.raises(ValueError, match="layout change"):
                self.mem.place(name, size, holder, kind=kind)
            self.seen("place: layout mismatch")
            return
        if o is None and len(self.objs) >= CAP:
            with pytest.raises(SharedMemoryFull, match="directory full"):
                self.mem.place(name, size, holder, kind=kind)
            self.seen("place: directory full")
            return
        try:
            view = self.mem.place(name, size, holder, kind=kind)
        except SharedMemoryFull as exc:
            assert o is None and "GATEWAY_SHM_SIZE" in str(exc)
            if len(name.encode()) <= NAME_INLINE:
                assert self.mem.stats()["largest_free"] < block_size(size)
            self.seen("place: segment full")
            return
        self.seen("place: new" if o is None else "place: revived" if o.freed_at is not None else "place: held")
        if o is None:
            assert bytes(view) == bytes(size), "a new object must be zeroed"
            self.fills += 1
            o = self.objs[name] = Obj(size, kind, self.fills % 255 + 1, view)
            view[:] = bytes([o.fill]) * size
        else:
            assert _addr(view) == _addr(o.view)
            view.release()
        o.holders.add(holder)
        o.freed_at = None

    @rule(holder=st.sampled_from(HOLDERS), keep=st.sets(st.sampled_from(NAMES)))
    def sync_holder(self, holder: int, keep: set[str]) -> None:
        self._expire()
        assert self.mem.sync_holder(holder, keep) == self._release(holder, keep)

    @rule(holder=st.sampled_from(HOLDERS))
    def drop_holder(self, holder: int) -> None:
        self._expire()
        assert self.mem.drop_holder(holder) == self._release(holder, set())

    @rule(dt=st.sampled_from([0.5, 3.0, 9.99, 10.0, 25.0]))
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        # Workers keep writing, also into quarantined objects (in-flight requests of an old runtime).
        if not self.objs:
            return
        name = data.draw(st.sampled_from(sorted(self.objs)))
        o = self.objs[name]
        self.fills += 1
        o.fill = self.fills % 255 + 1
        o.view[:] = bytes([o.fill]) * o.size

    @invariant()
    def consistent(self) -> None:
        self._expire()
        self.mem.verify()
        s = self.mem.stats()
        live = {n: o for n, o in self.objs.items() if o.freed_at is None}
        assert s["used"] + s["free"] + s["quarantined"] == s["total"]
        assert s["used"] == sum(_blocks(n, o.size) for n, o in live.items())
        assert s["quarantined"] == sum(_blocks(n, o.size) for n, o in self.objs.items() if n not in live)
        assert self.mem.names() == sorted(live)
        assert self.mem.names(quarantined=True) == sorted(self.objs)
        spans = []
        for name, o in self.objs.items():
            assert bytes(o.view) == bytes([o.fill]) * o.size, f"{name}'s bytes changed"
            info = self.mem.info(name)
            assert info is not None and info.holders == sum(1 << h for h in o.holders)
            spans.append((info.offset, info.offset + info.block))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in pairwise(spans)), "live objects overlap"

    def teardown(self) -> None:
        for o in self.objs.values():
            o.view.release()
        self.mem.close()
        if self.seg_name:
            _unlink(self.seg_name)


class NamedMemoryModel(MemoryModel):
    named = True


TestMemoryModelPrivate = MemoryModel.TestCase
TestMemoryModelPrivate.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestMemoryModelNamed = NamedMemoryModel.TestCase
TestMemoryModelNamed.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_random_walks_agree_with_the_model(seed: int) -> None:
    # The state machine's examples are short; these walks are long enough to fill the segment and
    # the directory, reclaim, reuse and revive many times, and prove they did.
    import random

    rnd = random.Random(seed)
    MemoryModel.report = False
    m = MemoryModel()
    try:
        for _ in range(1500):
            op = rnd.random()
            if op < 0.5:
                name = rnd.choice(NAMES)
                usual = NAMES.index(name)
                size = SIZES[usual] if rnd.random() < 0.7 else rnd.choice(SIZES)
                kind = KINDS[usual % 2] if rnd.random() < 0.9 else rnd.choice(KINDS)
                m.do_place(name, size, kind, rnd.choice(HOLDERS))
            elif op < 0.65:
                m._expire()
                keep = {n for n in NAMES if rnd.random() < 0.6}
                assert m.mem.sync_holder(h := rnd.choice(HOLDERS), keep) == m._release(h, keep)
            elif op < 0.7:
                m._expire()
                assert m.mem.drop_holder(h := rnd.choice(HOLDERS)) == m._release(h, set())
            elif op < 0.85:
                m.clock.now += rnd.choice([0.5, 3.0, 9.99, 10.0, 25.0])
            elif m.objs:
                o = m.objs[rnd.choice(sorted(m.objs))]
                o.fill = rnd.randrange(1, 256)
                o.view[:] = bytes([o.fill]) * o.size
            m.consistent()
    finally:
        MemoryModel.report = True
        m.teardown()
    for what in ("place: new", "place: held", "place: revived", "place: layout mismatch",
                 "place: segment full", "place: directory full", "reclaimed after the grace"):
        assert m.events.get(what, 0) >= 3, (what, m.events)
