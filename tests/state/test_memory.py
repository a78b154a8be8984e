"""gateway/state/memory: NodeMemory placing named objects in the node's shared segment, in one
process: stable places by name, holders, quarantine and reuse, running out of space, layout and
corruption checks, cost. Injected time (no sleeps); private and named segments run the same tests.
Other processes: test_memory_processes.py; the model: test_memory_model.py.
"""
from __future__ import annotations

import os
import time

import pytest

from gateway._fast.breaker import SHM_SIZE
from gateway._fast.shm import SHM_DIR, SharedSegment
from gateway.state import layout as M
from gateway.state.layout import NAME_INLINE
from gateway.state.memory import SUPERVISOR, LayoutMismatch, NodeMemory, NodeMemoryCorrupt, SharedMemoryFull
from tests.support.node_memory import Clock, Make, MiB, addr, offset, unique_name, unlink_shm

# ---------------------------------------------------------------- placing


def test_place_gives_zeroed_aligned_bytes_stable_by_name(make: Make) -> None:
    mem = make()
    a = mem.place("breaker/pay/http://10.0.0.1:8080", SHM_SIZE, 0, kind="breaker")
    assert len(a) == SHM_SIZE and not a.readonly and addr(a) % 64 == 0
    assert bytes(a) == bytes(SHM_SIZE)
    a[:4] = b"abcd"
    again = mem.place("breaker/pay/http://10.0.0.1:8080", SHM_SIZE, 1, kind="breaker")
    assert addr(again) == addr(a) and bytes(again[:4]) == b"abcd"
    info = mem.info("breaker/pay/http://10.0.0.1:8080")
    assert info is not None and info.holders == 0b11 and info.block == 768 and not info.quarantined
    odd = mem.place("counter/requests/r/200", 3, 0)
    assert len(odd) == 3 and addr(odd) % 64 == 0
    assert mem.names() == ["breaker/pay/http://10.0.0.1:8080", "counter/requests/r/200"]
    assert mem.info("nothing") is None
    mem.verify()


def test_reload_adding_names_never_moves_existing_ones(make: Make) -> None:
    mem = make()
    first = {f"counter/requests/r{i}/200": 64 * (1 + i % 5) for i in range(50)}
    for name, size in first.items():
        mem.place(name, size, 0)
    before = {name: offset(mem, name) for name in first}
    for i in range(50, 120):                      # the reload adds routes
        mem.place(f"counter/requests/r{i}/200", 700, 0)
    for name, size in first.items():              # ... and places the old ones again
        mem.place(name, size, 0)
    assert {name: offset(mem, name) for name in first} == before
    assert mem.sync_holder(0, list(first) + [f"counter/requests/r{i}/200" for i in range(50, 120)]) == []
    assert {name: offset(mem, name) for name in first} == before
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
    assert addr(va) != addr(vb)
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
    off = offset(mem, "breaker/s/http://a")
    assert mem.sync_holder(0, []) == ["breaker/s/http://a"]
    clock.now += 59.9
    mem.place("breaker/s/http://b", SHM_SIZE, 0)       # same class, within the grace: elsewhere
    assert offset(mem, "breaker/s/http://b") != off
    old[0] = 0xab                                       # an in-flight request on the old runtime
    assert bytes(old[1:]) == b"\xaa" * (SHM_SIZE - 1)
    clock.now += 0.1
    new = mem.place("breaker/s/http://c", SHM_SIZE, 0)  # past the grace: reused, zeroed
    assert offset(mem, "breaker/s/http://c") == off and bytes(new) == bytes(SHM_SIZE)
    assert mem.info("breaker/s/http://a") is None
    assert mem.stats()["quarantined_objects"] == 0
    mem.verify()


def test_revive_within_grace_keeps_the_bytes(make: Make) -> None:
    clock = Clock()
    mem = make(clock=clock, grace=60.0)
    view = mem.place("breaker/s/http://a", SHM_SIZE, 0, kind="breaker")
    view[:5] = b"state"
    off = offset(mem, "breaker/s/http://a")
    mem.sync_holder(0, [])
    clock.now += 59.0
    again = mem.place("breaker/s/http://a", SHM_SIZE, 2, kind="breaker")
    assert bytes(again[:5]) == b"state" and offset(mem, "breaker/s/http://a") == off
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
        offs.append(offset(mem, f"limits/r/{i}"))
    assert mem.sync_holder(0, ["limits/r/2"]) == ["limits/r/0", "limits/r/1"]
    clock.now += 1.0
    mem.place("limits/big", 600_000, 0)               # fits only in the two merged neighbours
    assert offset(mem, "limits/big") == offs[0]
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
    name = unique_name()
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
        unlink_shm(name)
    with open(os.path.join(SHM_DIR, name), "wb") as f:
        f.write(b"not a gateway segment" + bytes(4096))
    try:
        with pytest.raises(LayoutMismatch, match="not a gateway shared segment"):
            NodeMemory.attach(name)
    finally:
        unlink_shm(name)


def test_create_refuses_an_existing_name_and_a_tiny_size() -> None:
    name = unique_name()
    try:
        mem = NodeMemory.create(MiB, name)
        with pytest.raises(FileExistsError):
            NodeMemory.create(MiB, name)
        mem.unlink()
        mem.close()
    finally:
        unlink_shm(name)
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
